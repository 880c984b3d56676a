{#- The served-feature log (docs/flywheel.md) as a relation a model can select from: one row per request x
    entity x feature, typed, each record once.

    Arguments:
      location  DuckDB: the directory featuremart writes the Parquet logs under (default: the env var
                FEATUREMART_SERVED_LOG_DIR, else data/served_log, relative to where dbt runs), or a relation.
                Other warehouses: the relation the logs were loaded into (source() or ref()), required.

    A record written twice (the same request id, request time, entity and feature: a file copied by hand, a
    load run twice) comes out once. An empty or absent directory gives no rows, with the documented columns.

    Usage (a model):  select * from ({{ featuremart.served_log() }}) as served -#}
{% macro served_log(location=none) -%}
    {{ return(adapter.dispatch('served_log', 'featuremart')(location)) }}
{%- endmacro %}


{% macro default__served_log(location=none) -%}
    {%- if location is none or location is string -%}
        {{ exceptions.raise_compiler_error("served_log: on " ~ target.type ~ " pass the relation the served-feature logs were loaded into, e.g. served_log(source('featuremart', 'served_log')) (see docs/flywheel.md, \"Other warehouses\"); got " ~ location | string) }}
    {%- endif -%}
    {{ return(featuremart._served_log_once(location | string)) }}
{%- endmacro %}


{#- DuckDB reads the Parquet files in place: read_parquet over a glob
    (https://duckdb.org/docs/stable/data/parquet/overview#parameters); union_by_name lets files of older and
    newer featuremart versions mix. The glob is counted first (glob(): https://duckdb.org/docs/stable/sql/functions/utility#globsearch_path)
    because read_parquet fails on a glob that matches nothing. -#}
{% macro duckdb__served_log(location=none) -%}
    {%- if location is not none and location is not string -%}
        {{ return(featuremart._served_log_once(location | string)) }}
    {%- endif -%}
    {%- set directory = location or env_var('FEATUREMART_SERVED_LOG_DIR', 'data/served_log') -%}
    {%- set files = featuremart._sql_string(directory ~ '/*/*.parquet') -%}
    {%- set found = 0 -%}
    {%- if execute -%}
        {%- set found = run_query('select count(*) from glob(' ~ files ~ ')').columns[0].values()[0] -%}
    {%- endif -%}
    {%- if found == 0 -%}
        {{ return(featuremart._served_log_empty()) }}
    {%- endif -%}
    {{ return(featuremart._served_log_once('read_parquet(' ~ files ~ ', union_by_name = true, hive_partitioning = false)')) }}
{%- endmacro %}


{#- The log's columns (featuremart.servedlog.writer.LOG_COLUMNS: a parity test keeps them equal) and their
    SQL types. -#}
{% macro _served_log_columns() -%}
    {{ return([
        ('request_id', dbt.type_string()), ('request_ts', dbt.type_timestamp()), ('service', dbt.type_string()),
        ('requested', dbt.type_string()), ('registry_id', dbt.type_string()), ('entity_index', dbt.type_int()),
        ('entity_keys', dbt.type_string()), ('feature', dbt.type_string()), ('output_name', dbt.type_string()),
        ('dtype', dbt.type_string()), ('view_version', dbt.type_string()), ('value', dbt.type_string()),
        ('event_ts', dbt.type_timestamp()), ('status', dbt.type_string()),
    ]) }}
{%- endmacro %}


{% macro _served_log_empty() -%}
select
    {% for name, type in featuremart._served_log_columns() -%}
    cast(null as {{ type }}) as {{ name }}{{ ',' if not loop.last }}
    {% endfor -%}
where 1 = 0
{%- endmacro %}


{#- Each record once: row_number() over the record's identity (portable; no `qualify` on PostgreSQL). -#}
{% macro _served_log_once(relation_sql) -%}
select
    {% for name, type in featuremart._served_log_columns() -%}
    cast({{ name }} as {{ type }}) as {{ name }}{{ ',' if not loop.last }}
    {% endfor -%}
from (
    select
        *,
        row_number() over (
            partition by request_id, request_ts, entity_index, feature
            order by registry_id, status, value
        ) as _fm_copy
    from {{ relation_sql }} as _fm_log
) as _fm_numbered
where _fm_copy = 1
{%- endmacro %}


{#- `value` as a SQL string literal (quotes doubled). -#}
{% macro _sql_string(value) -%}
    {{ return("'" ~ (value | string).replace("'", "''") ~ "'") }}
{%- endmacro %}


{#- The text of a JSON value: the member `key` of a JSON object (key given), or a JSON scalar itself
    (`"abc"` -> abc, 452.5 -> 452.5); null stays null. The log keeps entity keys and values as JSON text. -#}
{% macro _json_text(expression, key=none) -%}
    {{ return(adapter.dispatch('_json_text', 'featuremart')(expression, key)) }}
{%- endmacro %}

{#- PostgreSQL's json operators: https://www.postgresql.org/docs/current/functions-json.html -#}
{% macro default___json_text(expression, key=none) -%}
    {%- if key is none -%}
        (cast({{ expression }} as json) #>> '{}')
    {%- else -%}
        (cast({{ expression }} as json) ->> {{ featuremart._sql_string(key) }})
    {%- endif -%}
{%- endmacro %}

{#- DuckDB's json extension, bundled: https://duckdb.org/docs/stable/data/json/json_functions -#}
{% macro duckdb___json_text(expression, key=none) -%}
    {%- if key is none -%}
        json_extract_string({{ expression }}, '$')
    {%- else -%}
        json_extract_string({{ expression }}, {{ featuremart._sql_string('$."' ~ key ~ '"') }})
    {%- endif -%}
{%- endmacro %}

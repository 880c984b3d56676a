{#- The served-feature log (docs/flywheel.md) as a relation a model can select from: one row per request x
    entity x feature, typed, each record once. The files hold one row per request x entity x feature view
    with the view's value as Redis stored it (a JSON array [event time in µs, value, ...]) and the requested
    features' positions in it (`features`: [[feature, output name, position, type], ...]); this expands them.

    Arguments:
      location  DuckDB and Spark: the directory featuremart writes the Parquet logs under (default: the env var
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
    {{ return(featuremart._served_log_once(featuremart._served_log_expand(location | string))) }}
{%- endmacro %}


{#- DuckDB reads the Parquet files in place: read_parquet over a glob
    (https://duckdb.org/docs/stable/data/parquet/overview#parameters); union_by_name lets files of older and
    newer featuremart versions mix. The glob is counted first (glob(): https://duckdb.org/docs/stable/sql/functions/utility#globsearch_path)
    because read_parquet fails on a glob that matches nothing. -#}
{% macro duckdb__served_log(location=none) -%}
    {%- if location is not none and location is not string -%}
        {{ return(featuremart._served_log_once(featuremart._served_log_expand(location | string))) }}
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
    {{ return(featuremart._served_log_once(featuremart._served_log_expand('read_parquet(' ~ files ~ ', union_by_name = true, hive_partitioning = false)'))) }}
{%- endmacro %}


{#- Spark reads the Parquet files in place too, through an external table over the log directory, (re)created at
    each build (https://spark.apache.org/docs/latest/sql-ref-syntax-ddl-create-table-datasource.html): its
    schema is the files' (FILE_COLUMNS: a column an older file lacks reads as null, as union_by_name does), and
    `recursiveFileLookup` reads the date=... folders' files without taking their names for a column. A directory
    with no files, or none yet, gives no rows (Spark's `parquet.`dir`` would fail: "path does not exist"). A
    relative directory is taken from where dbt runs, as on DuckDB (Spark would take it from the warehouse's
    directory). -#}
{% macro spark__served_log(location=none) -%}
    {%- if location is not none and location is not string -%}
        {{ return(featuremart._served_log_once(featuremart._served_log_expand(location | string))) }}
    {%- endif -%}
    {%- set directory = location or env_var('FEATUREMART_SERVED_LOG_DIR', 'data/served_log') -%}
    {%- set files = api.Relation.create(schema=target.schema, identifier='featuremart_served_log_files') -%}
    {%- if execute -%}
        {%- if not modules.re.match('^(/|[A-Za-z][A-Za-z0-9+.-]*:)', directory) -%}
            {%- set here = run_query("select reflect('java.lang.System', 'getProperty', 'user.dir')") -%}
            {%- set directory = here.columns[0].values()[0] ~ '/' ~ directory -%}
        {%- endif -%}
        {%- call statement('featuremart_served_log_drop') -%}drop table if exists {{ files }}{%- endcall -%}
        {%- call statement('featuremart_served_log_files') -%}
            create table {{ files }} (
                {%- for name, type in featuremart._served_log_file_columns() %}
                {{ name }} {{ type }}{{ ',' if not loop.last }}
                {%- endfor %}
            ) using parquet
            options (recursiveFileLookup 'true', pathGlobFilter '*.parquet')
            location {{ featuremart._sql_string(directory) }}
        {%- endcall -%}
    {%- endif -%}
    {{ return(featuremart._served_log_once(featuremart._served_log_expand(files | string))) }}
{%- endmacro %}


{#- The files' columns (featuremart.servedlog.writer.FILE_COLUMNS: a parity test keeps them equal) and their SQL
    types. -#}
{% macro _served_log_file_columns() -%}
    {{ return([
        ('request_id', dbt.type_string()), ('request_ts', featuremart._served_log_timestamp_type()),
        ('service', dbt.type_string()), ('requested', dbt.type_string()), ('registry_id', dbt.type_string()),
        ('entity_index', dbt.type_int()), ('entity_keys', dbt.type_string()), ('view', dbt.type_string()), ('view_version', dbt.type_string()),
        ('features', dbt.type_string()), ('status', dbt.type_string()), ('stored', dbt.type_string()),
    ]) }}
{%- endmacro %}


{#- The log's columns (featuremart.servedlog.writer.LOG_COLUMNS: a parity test keeps them equal) and their
    SQL types. -#}
{% macro _served_log_columns() -%}
    {%- set timestamp = featuremart._served_log_timestamp_type() -%}
    {{ return([
        ('request_id', dbt.type_string()), ('request_ts', timestamp), ('service', dbt.type_string()),
        ('requested', dbt.type_string()), ('registry_id', dbt.type_string()), ('entity_index', dbt.type_int()),
        ('entity_keys', dbt.type_string()), ('feature', dbt.type_string()), ('output_name', dbt.type_string()),
        ('dtype', dbt.type_string()), ('view_version', dbt.type_string()), ('value', dbt.type_string()),
        ('event_ts', timestamp), ('status', dbt.type_string()),
    ]) }}
{%- endmacro %}


{#- The log's times are UTC wall-clock times: a timestamp without time zone. Spark's `timestamp` is an instant
    shown in the session's zone; its `timestamp_ntz` is the one without (and what the files hold). -#}
{% macro _served_log_timestamp_type() -%}
    {{ return(adapter.dispatch('_served_log_timestamp_type', 'featuremart')()) }}
{%- endmacro %}

{% macro default___served_log_timestamp_type() -%}
    {{ return(dbt.type_timestamp()) }}
{%- endmacro %}

{% macro spark___served_log_timestamp_type() -%}
    {{ return('timestamp_ntz') }}
{%- endmacro %}


{% macro _served_log_empty() -%}
select
    {% for name, type in featuremart._served_log_columns() -%}
    cast(null as {{ type }}) as {{ name }}{{ ',' if not loop.last }}
    {% endfor -%}
where 1 = 0
{%- endmacro %}


{#- The file rows of `relation_sql` (featuremart.servedlog.writer.FILE_COLUMNS) as one row per feature: the
    value as text that casts back to the feature's type (a timestamp feature, stored as µs, as UTC text), null
    unless served (status present); the event time from the stored array's first element. -#}
{% macro _served_log_expand(relation_sql) -%}
    {{ return(adapter.dispatch('_served_log_expand', 'featuremart')(relation_sql)) }}
{%- endmacro %}

{#- PostgreSQL: jsonb_array_elements over the feature list, the value by position
    (https://www.postgresql.org/docs/current/functions-json.html). -#}
{% macro default___served_log_expand(relation_sql) -%}
(
    select
        request_id, request_ts, service, requested, registry_id, entity_index, entity_keys,
        view || '.' || (spec ->> 0) as feature,
        spec ->> 1 as output_name,
        spec ->> 3 as dtype,
        view_version,
        case when status = 'present' then
            case when spec ->> 3 = 'timestamp'
                then to_char(to_timestamp(cast(cast(stored as jsonb) ->> cast(spec ->> 2 as integer) as bigint) / 1000000.0) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')
                else cast(stored as jsonb) ->> cast(spec ->> 2 as integer) end
        end as value,
        case when stored is not null
            then cast(to_timestamp(cast(cast(stored as jsonb) ->> 0 as bigint) / 1000000.0) at time zone 'UTC' as timestamp) end as event_ts,
        status
    from {{ relation_sql }} as _fm_file
    cross join lateral jsonb_array_elements(cast(features as jsonb)) as _fm_spec(spec)
)
{%- endmacro %}

{#- DuckDB: unnest over the feature list parsed by from_json, the value by a JSON path
    (https://duckdb.org/docs/stable/data/json/json_functions), make_timestamp(µs) for times. -#}
{% macro duckdb___served_log_expand(relation_sql) -%}
(
    select
        request_id, request_ts, service, requested, registry_id, entity_index, entity_keys,
        view || '.' || spec[1] as feature,
        spec[2] as output_name,
        spec[4] as dtype,
        view_version,
        case when status = 'present' then
            case when spec[4] = 'timestamp'
                then strftime(make_timestamp(cast(json_extract_string(stored, '$[' || spec[3] || ']') as bigint)), '%Y-%m-%d %H:%M:%S.%f')
                else json_extract_string(stored, '$[' || spec[3] || ']') end
        end as value,
        make_timestamp(cast(json_extract_string(stored, '$[0]') as bigint)) as event_ts,
        status
    from (
        select *, unnest(from_json(features, '[["VARCHAR"]]')) as spec
        from {{ relation_sql }} as _fm_file
    ) as _fm_specs
)
{%- endmacro %}


{#- Spark: explode over the feature list parsed by from_json, the value by get_json_object's JSON path, and the
    stored µs as a UTC wall-clock timestamp_ntz (convert_timezone of timestamp_micros' instant), whatever the
    session's zone (https://spark.apache.org/docs/latest/api/sql/index.html). -#}
{% macro spark___served_log_expand(relation_sql) -%}
(
    select
        request_id, request_ts, service, requested, registry_id, entity_index, entity_keys,
        concat(`view`, '.', spec[0]) as feature,
        spec[1] as output_name,
        spec[3] as dtype,
        view_version,
        case when status = 'present' then
            case when spec[3] = 'timestamp'
                then date_format({{ featuremart._served_log_spark_time("get_json_object(stored, concat('$[', spec[2], ']'))") }}, 'yyyy-MM-dd HH:mm:ss.SSSSSS')
                else get_json_object(stored, concat('$[', spec[2], ']')) end
        end as value,
        {{ featuremart._served_log_spark_time("get_json_object(stored, '$[0]')") }} as event_ts,
        status
    from {{ relation_sql }} as _fm_file
    lateral view explode(from_json(features, 'array<array<string>>')) _fm_specs as spec
)
{%- endmacro %}

{% macro _served_log_spark_time(micros_text) -%}
    convert_timezone('UTC', timestamp_micros(cast({{ micros_text }} as bigint)))
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


{#- The text of the member `key` of a JSON object (null stays null): the log keeps entity keys as JSON text. -#}
{% macro _json_text(expression, key) -%}
    {{ return(adapter.dispatch('_json_text', 'featuremart')(expression, key)) }}
{%- endmacro %}

{#- PostgreSQL's json operators: https://www.postgresql.org/docs/current/functions-json.html -#}
{% macro default___json_text(expression, key) -%}
    (cast({{ expression }} as json) ->> {{ featuremart._sql_string(key) }})
{%- endmacro %}

{#- DuckDB's json extension, bundled: https://duckdb.org/docs/stable/data/json/json_functions -#}
{% macro duckdb___json_text(expression, key) -%}
    json_extract_string({{ expression }}, {{ featuremart._sql_string('$."' ~ key ~ '"') }})
{%- endmacro %}

{#- Spark: get_json_object with a bracketed JSON path (https://spark.apache.org/docs/latest/api/sql/index.html#get_json_object). -#}
{% macro spark___json_text(expression, key) -%}
    get_json_object({{ expression }}, {{ featuremart._sql_string("$['" ~ key ~ "']") }})
{%- endmacro %}

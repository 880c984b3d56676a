{#- A timestamp (the spine's, or a view's event time) as UTC wall-clock time without time zone, so that both
    sides of a point-in-time join compare as UTC instants whatever the session's TimeZone. Comparing a
    `timestamp` with a `timestamptz` directly would cast the former by the session's TimeZone (a laptop in
    New York would shift every spine time by 5 hours and serve values from the future):
      timestamp (without time zone)  taken as UTC, used as is
      timestamptz / with time zone   converted: `x at time zone 'UTC'` gives the UTC wall-clock `timestamp`
      date                           cast to `timestamp` (midnight UTC)
    `data_type` is the warehouse's name for the type, or none when unknown (then used as is).

    default: `at time zone` on PostgreSQL
    (https://www.postgresql.org/docs/current/functions-datetime.html#FUNCTIONS-DATETIME-ZONECONVERT) and on
    DuckDB with its ICU extension, bundled in the Python package
    (https://duckdb.org/docs/stable/sql/functions/timestamptz#at-time-zone). -#}
{% macro _pit_utc_timestamp(expression, data_type) -%}
    {{ return(adapter.dispatch('_pit_utc_timestamp', 'featuremart')(expression, data_type)) }}
{%- endmacro %}

{% macro default___pit_utc_timestamp(expression, data_type) -%}
    {%- set type_name = (data_type or '') | lower -%}
    {%- if 'with time zone' in type_name or 'tz' in type_name -%}
        ({{ expression }} at time zone 'UTC')
    {%- elif type_name == 'date' -%}
        cast({{ expression }} as {{ dbt.type_timestamp() }})
    {%- else -%}
        {{ expression }}
    {%- endif -%}
{%- endmacro %}

{#- Spark names its types `timestamp` (an instant, with the session's local time zone), `timestamp_ntz` (wall-clock,
    without zone: featuremart's event times) and `date` (https://spark.apache.org/docs/latest/sql-ref-datatypes.html).
    Spark has no `at time zone`: `convert_timezone('UTC', x)` turns an instant into its UTC wall-clock
    `timestamp_ntz` whatever the session's time zone (a plain cast would give the session zone's wall clock);
    a date is cast (midnight, as on the other warehouses). -#}
{% macro spark___pit_utc_timestamp(expression, data_type) -%}
    {%- set type_name = (data_type or '') | lower -%}
    {%- if type_name == 'timestamp' -%}
        convert_timezone('UTC', {{ expression }})
    {%- elif type_name == 'date' -%}
        cast({{ expression }} as timestamp_ntz)
    {%- else -%}
        {{ expression }}
    {%- endif -%}
{%- endmacro %}

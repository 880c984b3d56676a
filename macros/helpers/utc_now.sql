{#- The current time as a UTC `timestamp` without time zone: the type featuremart's event timestamps have.

    default: `current_timestamp at time zone 'utc'` turns the session's timestamptz into UTC wall-clock time
    without zone, on PostgreSQL (https://www.postgresql.org/docs/current/functions-datetime.html#FUNCTIONS-DATETIME-ZONECONVERT)
    and on DuckDB with its ICU extension, bundled in the Python package
    (https://duckdb.org/docs/stable/sql/functions/timestamptz#at-time-zone); it does not depend on the
    session's TimeZone setting. -#}
{% macro utc_now() -%}
    {{ return(adapter.dispatch('utc_now', 'featuremart')()) }}
{%- endmacro %}

{% macro default__utc_now() -%}
    cast({{ dbt.current_timestamp() }} at time zone 'utc' as timestamp)
{%- endmacro %}

{#- Spark: `current_timestamp()` is a `timestamp` (an instant, shown in the session's time zone);
    `convert_timezone('UTC', ...)` gives its UTC wall-clock time as `timestamp_ntz` whatever the session's
    time zone (a plain cast to `timestamp_ntz` would give the session zone's wall clock)
    (https://spark.apache.org/docs/latest/api/sql/index.html#convert_timezone). -#}
{% macro spark__utc_now() -%}
    convert_timezone('UTC', current_timestamp())
{%- endmacro %}

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

{#- Spark: `current_timestamp()` is a `timestamp` (with local time zone); cast to `timestamp_ntz` it is the
    wall-clock time in the session's time zone, which the `spark` target pins to UTC
    (`spark.sql.session.timeZone`, docs/warehouses.md; https://spark.apache.org/docs/latest/sql-ref-datatypes.html). -#}
{% macro spark__utc_now() -%}
    cast(current_timestamp() as timestamp_ntz)
{%- endmacro %}

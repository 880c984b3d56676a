{#- An array of double-precision floats built from SQL expressions, typed `double[]` on DuckDB and
    `double precision[]` on PostgreSQL, so that both store one type (dbt's own `array_construct` leaves
    the element type to inference, e.g. `decimal` when given decimal expressions).

    default: the standard `array[...]` constructor with a cast, which PostgreSQL
    (https://www.postgresql.org/docs/current/sql-expressions.html#SQL-SYNTAX-ARRAY-CONSTRUCTORS) and DuckDB
    (https://duckdb.org/docs/stable/sql/data_types/list#creating-lists) both accept.
    Other warehouses (BigQuery: `array<float64>`, Snowflake: untyped `array_construct`) add their own. -#}
{% macro double_array(expressions) -%}
    {{ return(adapter.dispatch('double_array', 'featuremart')(expressions)) }}
{%- endmacro %}

{% macro default__double_array(expressions) -%}
    {%- if expressions is string or expressions | length == 0 -%}
        {{ exceptions.raise_compiler_error(
            "double_array: `expressions` must be a non-empty list of SQL expressions, got " ~ expressions | tojson) }}
    {%- endif -%}
    cast(array[{{ expressions | join(', ') }}] as double precision[])
{%- endmacro %}

{#- Spark: `array(...)` of doubles, `array<double>` (https://spark.apache.org/docs/latest/api/sql/index.html#array). -#}
{% macro spark__double_array(expressions) -%}
    {%- if expressions is string or expressions | length == 0 -%}
        {{ exceptions.raise_compiler_error(
            "double_array: `expressions` must be a non-empty list of SQL expressions, got " ~ expressions | tojson) }}
    {%- endif -%}
    array({% for e in expressions %}cast({{ e }} as double){{ ", " if not loop.last }}{% endfor %})
{%- endmacro %}

{#- The name of the 8-byte floating-point type: featuremart's float features are doubles on every warehouse.
    dbt's `type_float()` will not do: it is the 4-byte `float` on DuckDB and Spark.

    default: the standard `double precision`, which PostgreSQL
    (https://www.postgresql.org/docs/current/datatype-numeric.html#DATATYPE-FLOAT) and DuckDB
    (https://duckdb.org/docs/stable/sql/data_types/numeric#floating-point-types) accept.
    Spark: `double` (https://spark.apache.org/docs/latest/sql-ref-datatypes.html). -#}
{% macro type_double() -%}
    {{ return(adapter.dispatch('type_double', 'featuremart')()) }}
{%- endmacro %}

{% macro default__type_double() -%}
    double precision
{%- endmacro %}

{% macro spark__type_double() -%}
    double
{%- endmacro %}

{#- Argument checks shared by the generic tests. Each raises a compiler error that names the test, the
    argument and the value it got, so a typo in YAML fails `dbt parse`/`dbt build` with a clear message. -#}

{% macro _check_column_list(test_name, argument, value) -%}
    {{ featuremart._check_given(test_name, argument, value, '[customer_id]') }}
    {%- if value is string or value is mapping or value is not iterable -%}
        {{ exceptions.raise_compiler_error(
            test_name ~ ": `" ~ argument ~ "` must be a list of column names, e.g. [customer_id], got "
            ~ value | tojson) }}
    {%- endif -%}
    {%- if value | length == 0 -%}
        {{ exceptions.raise_compiler_error(
            test_name ~ ": `" ~ argument ~ "` must name at least one column, got an empty list") }}
    {%- endif -%}
    {%- for column in value -%}
        {{ featuremart._check_column_name(test_name, argument, column) }}
    {%- endfor -%}
{%- endmacro %}

{% macro _check_column_name(test_name, argument, value) -%}
    {{ featuremart._check_given(test_name, argument, value, 'event_ts') }}
    {%- if value is not string or value | trim | length == 0 -%}
        {{ exceptions.raise_compiler_error(
            test_name ~ ": `" ~ argument ~ "` must be a column name, got " ~ value | tojson) }}
    {%- endif -%}
{%- endmacro %}

{#- A required argument left out reaches the macro undefined; say which, instead of a JSON error. -#}
{% macro _check_given(test_name, argument, value, example) -%}
    {%- if value is not defined -%}
        {{ exceptions.raise_compiler_error(
            test_name ~ ": the argument `" ~ argument ~ "` is required, e.g. arguments: {" ~ argument ~ ": "
            ~ example ~ "}") }}
    {%- endif -%}
{%- endmacro %}

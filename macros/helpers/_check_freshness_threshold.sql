{#- A freshness threshold has dbt's source-freshness shape: {count: <positive int>, period: minute|hour|day}.
    none means "not set". Raises a compiler error naming the test, the argument and the value. -#}
{% macro _check_freshness_threshold(test_name, argument, value) -%}
    {%- if value is none -%}
        {{ return('') }}
    {%- endif -%}
    {%- set periods = ['minute', 'hour', 'day'] -%}
    {%- if value is not mapping
            or value.get('count') is not number or value.get('count') is boolean or value.get('count') <= 0
            or value.get('count') != value.get('count') | int
            or value.get('period') not in periods -%}
        {{ exceptions.raise_compiler_error(
            test_name ~ ": `" ~ argument ~ "` must look like {count: 2, period: day} with a positive whole count"
            ~ " and a period in " ~ periods | join(', ') ~ ", got " ~ value | tojson) }}
    {%- endif -%}
{%- endmacro %}

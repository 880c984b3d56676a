{#- What a point-in-time join renders at parse time, before the spine's columns can be read: dbt only
    records the refs then and discards the SQL. -#}
{% macro _pit_parse_placeholder() -%}
select 1 as _fm_parse_placeholder
{%- endmacro %}

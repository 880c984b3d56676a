{#- A node's `featuremart` meta block: dbt >= 1.10 keeps it under config.meta, older versions under meta. -#}
{% macro _featuremart_meta(node) -%}
    {%- set config_meta = (node.get('config') or {}).get('meta') or {} -%}
    {{ return(config_meta.get('featuremart') or (node.get('meta') or {}).get('featuremart') or {}) }}
{%- endmacro %}

{#- Every feature of a view: its relation's columns (the YAML need not list them all) minus the excluded. -#}
{% macro _training_set_all_features(view) -%}
    {%- set names = [] -%}
    {%- for column in adapter.get_columns_in_relation(view.relation) if column.name | lower not in view._excluded -%}
        {%- do names.append(column.name) -%}
    {%- endfor -%}
    {%- if names | length == 0 -%}
        {{ exceptions.raise_compiler_error("training_set: " ~ view.name ~ ".* found no feature columns in " ~ view.relation ~ " (was it built?)") }}
    {%- endif -%}
    {{ return(names) }}
{%- endmacro %}

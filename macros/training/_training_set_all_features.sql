{#- Every feature of a view: its relation's columns (the YAML need not list them all) minus the excluded. -#}
{% macro _training_set_all_features(view) -%}
    {%- set names = featuremart._feature_columns(view._columns, view._excluded) -%}
    {%- if names | length == 0 -%}
        {{ exceptions.raise_compiler_error("training_set: " ~ view.name ~ ".* found no feature columns in " ~ view.relation ~ " (was it built?)") }}
    {%- endif -%}
    {{ return(names) }}
{%- endmacro %}


{#- The feature columns among `column_names` (in their order): those not in `excluded` (lower case). -#}
{% macro _feature_columns(column_names, excluded) -%}
    {%- set names = [] -%}
    {%- for name in column_names if name | lower not in excluded -%}
        {%- do names.append(name) -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}

{#- The output column names of the features of `views` ([{name, key_columns, features}]), per view:
    {names: [[name, ...], ...], error: none or a message}. A feature keeps its name unless another requested
    feature has it too or it is a join key of a view in the join (case-insensitively); then it is
    <view>__<feature>. The rule of featuremart.registry.output_names, which names online reads: one rule for
    training and serving (tests/test_parity.py runs the same cases through both). -#}
{% macro _pit_output_names(views) -%}
    {%- set counts = {} -%}
    {%- set join_keys = [] -%}
    {%- for view in views -%}
        {%- do join_keys.extend(view.key_columns | map('lower')) -%}
        {%- for feature in view.features -%}
            {%- do counts.update({feature | lower: counts.get(feature | lower, 0) + 1}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- set names = [] -%}
    {%- set taken = {} -%}
    {%- for view in views -%}
        {%- set outputs = [] -%}
        {%- for feature in view.features -%}
            {%- set output = view.name ~ '__' ~ feature if counts[feature | lower] > 1 or feature | lower in join_keys else feature -%}
            {%- if output | lower in taken -%}
                {{ return({'names': none, 'error': "the output column " ~ output ~ " of feature " ~ view.name ~ "." ~ feature ~ " collides with the output column of feature " ~ taken[output | lower] ~ ": rename one of the features"}) }}
            {%- endif -%}
            {%- do taken.update({output | lower: view.name ~ '.' ~ feature}) -%}
            {%- do outputs.append(output) -%}
        {%- endfor -%}
        {%- do names.append(outputs) -%}
    {%- endfor -%}
    {{ return({'names': names, 'error': none}) }}
{%- endmacro %}

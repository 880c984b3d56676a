{#- True when the model `node` carries the featuremart.feature_keys_unique test on exactly `keys` and
    `timestamp`: then no two of its rows share them once `dbt build` has run the test (it runs a model's
    tests before the models downstream, and skips those when a test fails). -#}
{% macro _has_unique_keys_test(node, keys, timestamp) -%}
    {%- for test in graph.nodes.values() if test.resource_type == 'test' and test.get('attached_node') == node.unique_id -%}
        {%- set metadata = test.get('test_metadata') or {} -%}
        {%- set kwargs = metadata.get('kwargs') or {} -%}
        {%- if metadata.get('name') == 'feature_keys_unique' and metadata.get('namespace') == 'featuremart'
              and (kwargs.get('keys') or []) | map('lower') | sort | list == keys | map('lower') | sort | list
              and (kwargs.get('timestamp') or '') | lower == timestamp | lower -%}
            {{ return(true) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(false) }}
{%- endmacro %}

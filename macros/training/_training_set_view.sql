{#- One view's join spec from its model's metadata, features still empty. -#}
{% macro _training_set_view(where, name, entities) -%}
    {%- set nodes = [] -%}
    {%- for node in graph.nodes.values() if node.resource_type == 'model' and node.name == name -%}
        {%- do nodes.append(node) -%}
    {%- endfor -%}
    {%- set meta = featuremart._featuremart_meta(nodes[0]) if nodes else {} -%}
    {%- if not meta -%}
        {{ exceptions.raise_compiler_error(where ~ ": " ~ name ~ " is not a feature view (no model of that name with config.meta.featuremart)") }}
    {%- endif -%}
    {%- set node = nodes[0] -%}
    {%- set file = node.original_file_path -%}
    {%- set entity = meta.get('entity') -%}
    {%- set keys = [] -%}
    {%- for one in ([entity] if entity is string else entity or []) -%}
        {%- if one not in entities -%}
            {{ exceptions.raise_compiler_error(where ~ ": model " ~ name ~ " (" ~ file ~ ") has entity " ~ one | string ~ ", which var featuremart_entities does not declare (entities: " ~ entities.keys() | sort | join(', ') ~ ")") }}
        {%- endif -%}
        {%- do keys.extend(entities[one].join_keys.keys() if entities[one] is mapping else entities[one]) -%}
    {%- endfor -%}
    {%- if keys | length == 0 or not meta.get('timestamp') -%}
        {{ exceptions.raise_compiler_error(where ~ ": model " ~ name ~ " (" ~ file ~ ") needs featuremart `entity` and `timestamp`, got entity=" ~ entity | string ~ ", timestamp=" ~ meta.get('timestamp') | string) }}
    {%- endif -%}
    {%- set ttl = meta.get('ttl', var('featuremart_default_ttl', '30d')) -%}
    {%- set ttl_seconds = featuremart._ttl_seconds(where ~ ": model " ~ name ~ " (" ~ file ~ ")", ttl) -%}
    {%- if node.unique_id not in model.depends_on.nodes -%}
        {{ exceptions.raise_compiler_error(where ~ ": this model reads feature view " ~ name ~ " but dbt does not know it depends on it (refs of a service cannot be seen while parsing); add the line   -- depends_on: {{ ref('" ~ name ~ "') }}   to " ~ model.original_file_path) }}
    {%- endif -%}
    {%- set excluded = keys | map('lower') | list + [meta.timestamp | lower] -%}
    {%- for column_name, column in node.columns.items() -%}
        {%- if featuremart._featuremart_meta(column).get('feature', true) is sameas false -%}
            {%- do excluded.append(column_name | lower) -%}
        {%- endif -%}
    {%- endfor -%}
    {#- `unique`: the model carries featuremart.feature_keys_unique on these keys and timestamp, so `dbt build`
        has checked that no two rows share them (and skips this model when they do): the join may skip its
        tie-breaking pass. -#}
    {{ return({'relation': ref(name), 'name': name, 'keys': keys, 'timestamp': meta.timestamp,
               'ttl_seconds': ttl_seconds, 'features': [],
               'unique': featuremart._has_unique_keys_test(node, keys, meta.timestamp),
               '_excluded': excluded, '_node': node}) }}
{%- endmacro %}

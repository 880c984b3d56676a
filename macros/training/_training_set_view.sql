{#- One view's join spec from its model's metadata, features still empty. `entities` is
    _featuremart_entities(): entity -> its join key columns, in order. -#}
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
    {%- set ttl = meta.get('ttl') if 'ttl' in meta else featuremart._featuremart_default_ttl(where) -%}
    {%- set ttl_seconds = featuremart._ttl_seconds(where ~ ": model " ~ name ~ " (" ~ file ~ ")", ttl) -%}
    {%- if node.unique_id not in model.depends_on.nodes -%}
        {{ exceptions.raise_compiler_error(where ~ ": this model reads feature view " ~ name ~ " but dbt does not know it depends on it (refs of a service cannot be seen while parsing); add the line   -- depends_on: {{ ref('" ~ name ~ "') }}   to " ~ model.original_file_path) }}
    {%- endif -%}
    {#- The relation's columns: what `view.*` expands to, and the timestamp's type (see _pit_utc_timestamp). -#}
    {%- set relation = ref(name) -%}
    {%- set columns = adapter.get_columns_in_relation(relation) -%}
    {%- set timestamp_type = [] -%}
    {%- for column in columns if column.name | lower == meta.timestamp | lower -%}
        {%- do timestamp_type.append(column.dtype) -%}
    {%- endfor -%}
    {%- if timestamp_type | length == 0 -%}
        {{ exceptions.raise_compiler_error(where ~ ": model " ~ name ~ " (" ~ file ~ "): its timestamp " ~ meta.timestamp ~ " is not a column of " ~ relation ~ " (columns: " ~ (columns | map(attribute='name') | join(', ') or 'none: was it built?') ~ ")") }}
    {%- endif -%}
    {#- `unique`: the model carries featuremart.feature_keys_unique on these keys and timestamp, so `dbt build`
        has checked that no two rows share them (and skips this model when they do): the join may skip its
        tie-breaking pass. -#}
    {{ return({'relation': relation, 'name': name, 'keys': keys, 'timestamp': meta.timestamp,
               'timestamp_type': timestamp_type[0], 'ttl_seconds': ttl_seconds, 'features': [],
               'unique': featuremart._has_unique_keys_test(node, keys, meta.timestamp),
               '_excluded': featuremart._non_feature_columns(keys, meta, node.columns),
               '_columns': columns | map(attribute='name') | list}) }}
{%- endmacro %}


{#- The columns of a feature view that are not features, in lower case: its join keys, its timestamp, its
    `changed_at` column and the columns opted out with `feature: false`. The rule of featuremart.registry (a
    view's features are the same online and in training sets; tests/test_parity.py checks both). -#}
{% macro _non_feature_columns(keys, meta, node_columns) -%}
    {%- set excluded = keys | map('lower') | list + [meta.get('timestamp') | string | lower] -%}
    {%- if meta.get('changed_at') -%}
        {%- do excluded.append(meta.get('changed_at') | string | lower) -%}
    {%- endif -%}
    {%- for column_name, column in (node_columns or {}).items() -%}
        {%- if featuremart._featuremart_meta(column).get('feature', true) is sameas false -%}
            {%- do excluded.append(column_name | lower) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(excluded) }}
{%- endmacro %}

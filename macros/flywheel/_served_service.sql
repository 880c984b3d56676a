{#- What the flywheel macros need to know about a feature service, resolved from the graph as training_set does:
      {views (point_in_time_join's `views`), keys: [{name, type}], features: [{ref, output, dtype, numeric}]}
    `dtype` is the warehouse type of the feature's column (the logged JSON text is cast to it), `numeric`
    whether differences can be measured. Returns none at parse time. -#}
{% macro _served_service(macro_name, service) -%}
    {%- if service is none or service is not string -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": `service` must be the name of a feature service (a dbt exposure of type ml), got " ~ service | string) }}
    {%- endif -%}
    {%- set views = featuremart._training_set_views(macro_name, service, none) -%}
    {%- if views is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set key_types = {} -%}
    {%- for name, spec in var('featuremart_entities').items() -%}
        {%- for column, key_type in spec['join_keys'].items() -%}
            {%- do key_types.update({column | lower: key_type}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- set keys = [] -%}
    {%- set seen = [] -%}
    {%- for view in views -%}
        {%- for key in view['keys'] if key | lower not in seen -%}
            {%- do seen.append(key | lower) -%}
            {%- do keys.append({'name': key, 'type': dbt.type_bigint() if key_types.get(key | lower) == 'int' else dbt.type_string()}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- set named = featuremart._pit_output_names(featuremart._served_names_input(views)) -%}
    {%- if named.error is not none -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": " ~ named.error) }}
    {%- endif -%}
    {%- set features = [] -%}
    {%- for view in views -%}
        {%- set outputs = named.names[loop.index0] -%}
        {%- set columns = {} -%}
        {%- for column in adapter.get_columns_in_relation(view['relation']) -%}
            {%- do columns.update({column.name | lower: column}) -%}
        {%- endfor -%}
        {%- for feature in view['features'] -%}
            {%- set column = columns[feature | lower] -%}
            {%- do features.append({'ref': view['name'] ~ '.' ~ feature, 'output': outputs[loop.index0],
                                    'dtype': column.data_type,
                                    'numeric': column.is_numeric() or column.is_float() or column.is_integer()}) -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return({'views': views, 'keys': keys, 'features': features}) }}
{%- endmacro %}


{% macro _served_names_input(views) -%}
    {%- set out = [] -%}
    {%- for view in views -%}
        {%- do out.append({'name': view['name'], 'key_columns': view['keys'], 'features': view['features']}) -%}
    {%- endfor -%}
    {{ return(out) }}
{%- endmacro %}


{#- The distinct requests of `service` in the log `log_sql` (a relation or a query in parentheses): request id,
    time, entity position and the entity's join keys as typed columns. -#}
{% macro _served_requests(log_sql, service, keys) -%}
select distinct
    request_id,
    request_ts,
    entity_index
    {%- for key in keys %},
    cast({{ featuremart._json_text('entity_keys', key.name) }} as {{ key.type }}) as {{ key.name }}
    {%- endfor %}
from {{ log_sql }} as _fm_log
where service = {{ featuremart._sql_string(service) }}
{%- endmacro %}

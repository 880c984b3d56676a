{#- The warehouse type of `column` in `relation` (a relation, or a table name or query as a string). -#}
{% macro _pit_column_type(where, relation, column) -%}
    {%- if relation is string -%}
        {%- set columns = get_column_schema_from_query('select * from ' ~ relation) -%}
    {%- else -%}
        {%- set columns = adapter.get_columns_in_relation(relation) -%}
    {%- endif -%}
    {%- for found in columns if found.name | lower == column | lower -%}
        {{ return(found.dtype) }}
    {%- endfor -%}
    {{ exceptions.raise_compiler_error(where ~ ": the timestamp " ~ column ~ " is not a column of " ~ relation | string ~ " (columns: " ~ (columns | map(attribute='name') | join(', ') or 'none: was it built?') ~ ")") }}
{%- endmacro %}

{#- The select list of a point-in-time join: the spine's columns as they came in, then each view's features
    under their output names, nulled when the matched row is older than the ttl. View i's matched row is
    joined as `_fm_<i>`, with columns _fm_view_ts and _fm_f<j>. With ordered='row_number', the spine's row
    number counted from 0 comes last, as _fm_row. -#}
{% macro _pit_output_columns(pit, ordered=true) -%}
    {%- set items = [] -%}
    {%- for column in pit.spine_columns -%}
        {%- do items.append('spine.' ~ column.quoted) -%}
    {%- endfor -%}
    {%- for view in pit.views -%}
        {%- set alias = '_fm_' ~ view.index -%}
        {%- for feature in view.features -%}
            {%- set value = alias ~ '._fm_f' ~ loop.index0 -%}
            {%- if view.ttl_seconds is none -%}
                {%- do items.append(value ~ ' as ' ~ feature.output) -%}
            {%- else -%}
                {%- do items.append('case when ' ~ alias ~ '._fm_view_ts >= spine._fm_since_' ~ view.index
                    ~ ' then ' ~ value ~ ' end as ' ~ feature.output) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- if ordered == 'row_number' -%}
        {%- do items.append('spine._fm_row - 1 as _fm_row') -%}
    {%- endif -%}
{{ items | join(',\n') }}
{%- endmacro %}

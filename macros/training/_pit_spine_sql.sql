{#- The spine, read once: its own columns, then the join's own (prefixed _fm_, never output):
      _fm_ts        the spine's timestamp as UTC `timestamp` (see _pit_utc_timestamp)
      _fm_row       its row number: the result is ordered by it, one row out per row in
      _fm_since_<i> the oldest event time view i may have (spine time - ttl), for views with a ttl
    dateadd: https://docs.getdbt.com/reference/dbt-jinja-functions/cross-database-macros#dateadd -#}
{% macro _pit_spine_sql(pit) -%}
select
    _fm_source.*,
    {{ pit.timestamp_sql }} as _fm_ts,
    row_number() over () as _fm_row
    {%- for view in pit.views if view.ttl_seconds is not none %},
    {{ dbt.dateadd('second', -view.ttl_seconds, pit.timestamp_sql) }} as _fm_since_{{ view.index }}
    {%- endfor %}
from {{ pit.spine_from }} as _fm_source
{%- endmacro %}

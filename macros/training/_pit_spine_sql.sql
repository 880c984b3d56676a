{#- The spine, read once: its own columns, then the join's own (prefixed _fm_, not output):
      _fm_ts        the spine's timestamp as UTC `timestamp` (see _pit_utc_timestamp)
      _fm_row       its row number: the result is ordered by it (or ends with it: ordered='row_number'), one
                    row out per row in
      _fm_since_<i> the oldest event time view i may have (spine time - ttl), for views with a ttl
    dateadd: https://docs.getdbt.com/reference/dbt-jinja-functions/cross-database-macros#dateadd -#}
{% macro _pit_spine_sql(pit) -%}
select
    _fm_source.*,
    {{ pit.timestamp_sql }} as _fm_ts,
    {{ featuremart._pit_row_number(pit) }} as _fm_row
    {%- for view in pit.views if view.ttl_seconds is not none %},
    {{ featuremart._pit_seconds_before(pit.timestamp_sql, view.ttl_seconds) }} as _fm_since_{{ view.index }}
    {%- endfor %}
from {{ pit.spine_from }} as _fm_source
{%- endmacro %}


{#- `timestamp` minus `seconds`, of the same type (the spine's time as UTC wall-clock time). default: dbt's dateadd. -#}
{% macro _pit_seconds_before(timestamp, seconds) -%}
    {{ return(adapter.dispatch('_pit_seconds_before', 'featuremart')(timestamp, seconds)) }}
{%- endmacro %}

{% macro default___pit_seconds_before(timestamp, seconds) -%}
    {{ dbt.dateadd('second', -seconds, timestamp) }}
{%- endmacro %}

{#- dbt-spark's dateadd goes through to_unix_timestamp and back to a `timestamp` (an instant): compared with a
    `timestamp_ntz` event time, Spark reads the latter in the session's zone, so the ttl edge moved with the zone
    (found by the oracle test; in Asia/Kolkata a row exactly at the edge was dropped). timestampadd keeps the type.
    https://spark.apache.org/docs/latest/api/sql/index.html#timestampadd -#}
{% macro spark___pit_seconds_before(timestamp, seconds) -%}
    timestampadd(second, {{ -seconds }}, {{ timestamp }})
{%- endmacro %}


{#- The spine's row numbers. default: `row_number() over ()`, the order the spine is read in. -#}
{% macro _pit_row_number(pit) -%}
    {{ return(adapter.dispatch('_pit_row_number', 'featuremart')(pit)) }}
{%- endmacro %}

{% macro default___pit_row_number(pit) -%}
    row_number() over ()
{%- endmacro %}

{#- Spark requires an ordered window for row_number (WINDOW_FUNCTION_FRAME_NOT_ORDERED), and a Spark table has no
    order of its own; a common table expression is also evaluated once per reference, so the numbering must be
    the same at each: order by every spine column. Rows equal in all of them get the same features, so which of
    them takes which number does not matter. The result is in that order, not the spine's read order. -#}
{% macro spark___pit_row_number(pit) -%}
    row_number() over (order by {% for column in pit.spine_columns %}_fm_source.{{ column.quoted }}{{ ", " if not loop.last }}{% endfor %})
{%- endmacro %}

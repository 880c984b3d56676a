-- Feature rows whose newest event_ts is `age_hours` old: 60h is past warn_after (2 days) only, 100h is
-- past error_after (3 days) too. Tagged expect_failure: the package tests expect WARN and FAIL.
{%- set ages = {'aging': 60, 'stale': 100} %}
{%- for name, age_hours in ages.items() %}
select
    '{{ name }}' as freshness_case,
    'C0000001' as customer_id,
    {{ dbt.dateadd('hour', -age_hours, featuremart.utc_now()) }} as event_ts
{{ 'union all' if not loop.last }}
{%- endfor %}

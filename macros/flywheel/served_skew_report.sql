{#- The skew report of a feature service, computed in the warehouse (featuremart skew prints it): one row per
    feature and example, ordered by feature then example rank:

      feature, output_name, rows_compared, mismatches, missing_online, missing_offline, max_abs_diff,
      stale_rows (served under a view version other than `versions[view]`), example_rank, and the example's
      request_id, request_ts, entity_keys, online_status, online_value, offline_value, abs_diff, outcome

    then one row per logged feature the service no longer has (rows_compared = its rows, outcome
    'unknown_feature'). Examples are the `examples` largest disagreements of each feature (by abs_diff, then
    time), none for a feature that agrees everywhere. -#}
{% macro served_skew_report(log, service, examples=3, versions=none) -%}
    {{ return(adapter.dispatch('served_skew_report', 'featuremart')(log, service, examples, versions)) }}
{%- endmacro %}


{% macro default__served_skew_report(log, service, examples=3, versions=none) -%}
    {%- set spec = featuremart._served_service('served_skew_report', service) -%}
    {%- if spec is none -%}
        {{ return(featuremart._pit_parse_placeholder()) }}
    {%- endif -%}
    {%- set versions = versions or {} -%}
with skew as (

    {{ featuremart.served_skew(log, service) | indent(4) }}

),

versions as (

    select feature, cast(sum(case
        {%- for feature in spec['features'] if versions.get(feature.ref.split('.')[0]) is not none %}
        when feature = {{ featuremart._sql_string(feature.ref) }} and view_version <> {{ featuremart._sql_string(versions[feature.ref.split('.')[0]]) }} then 1
        {%- endfor %}
        else 0 end) as {{ dbt.type_bigint() }}) as stale_rows
    from {{ log }} as _fm_log
    where service = {{ featuremart._sql_string(service) }}
    group by feature

),

summary as (

    select
        feature,
        output_name,
        cast(count(*) as {{ dbt.type_bigint() }}) as rows_compared,
        cast(sum(case when outcome = 'mismatch' then 1 else 0 end) as {{ dbt.type_bigint() }}) as mismatches,
        cast(sum(case when outcome = 'missing_online' then 1 else 0 end) as {{ dbt.type_bigint() }}) as missing_online,
        cast(sum(case when outcome = 'missing_offline' then 1 else 0 end) as {{ dbt.type_bigint() }}) as missing_offline,
        max(abs_diff) as max_abs_diff
    from skew
    group by feature, output_name

),

ranked as (

    select
        *,
        row_number() over (
            partition by feature
            order by case when abs_diff is null then 1 else 0 end, abs_diff desc, request_ts, request_id
        ) as example_rank
    from skew
    where outcome <> 'match'

)

select
    summary.feature,
    summary.output_name,
    summary.rows_compared,
    summary.mismatches,
    summary.missing_online,
    summary.missing_offline,
    summary.max_abs_diff,
    coalesce(versions.stale_rows, 0) as stale_rows,
    ranked.example_rank,
    ranked.request_id,
    ranked.request_ts,
    ranked.entity_keys,
    ranked.online_status,
    ranked.online_value,
    ranked.offline_value,
    ranked.abs_diff,
    ranked.outcome
from summary
left join versions on versions.feature = summary.feature
left join ranked
    on ranked.feature = summary.feature
    and ranked.example_rank <= {{ examples | int }}

union all

select
    feature,
    min(output_name),
    cast(count(*) as {{ dbt.type_bigint() }}),
    0, 0, 0,
    cast(null as {{ dbt.type_float() }}),
    0,
    cast(null as {{ dbt.type_bigint() }}),
    cast(null as {{ dbt.type_string() }}),
    cast(null as {{ dbt.type_timestamp() }}),
    cast(null as {{ dbt.type_string() }}),
    cast(null as {{ dbt.type_string() }}),
    cast(null as {{ dbt.type_string() }}),
    cast(null as {{ dbt.type_string() }}),
    cast(null as {{ dbt.type_float() }}),
    'unknown_feature'
from {{ log }} as _fm_log
where service = {{ featuremart._sql_string(service) }}
    and feature not in ({% for feature in spec['features'] %}{{ featuremart._sql_string(feature.ref) }}{{ ', ' if not loop.last }}{% endfor %})
group by feature
{%- endmacro %}

{#- Online/offline skew of a feature service: every logged value of `service` in `log` beside the value the
    point-in-time join recomputes at its request's time from the warehouse as it is now. One row per logged
    request x entity x feature of the service (features the service no longer has are left out: the skew
    report counts them apart):

      feature, output_name, request_id, request_ts, entity_keys, online_status, online_value (as logged),
      offline_value (text), abs_diff (numeric features), outcome

    outcome: 'match' (equal, or both null), 'mismatch' (both present, different), 'missing_online' (not
    served, or served null, while the warehouse has a value), 'missing_offline' (served a value the warehouse
    does not have at that time). Values compare after casting the logged JSON to the feature's warehouse
    type (the log writes numbers in shortest round-trip form), so a float compares exactly.

    Usage: select outcome, count(*) from ({{ featuremart.served_skew(ref('served_features'), 'fraud_model') }}) s group by 1 -#}
{% macro served_skew(log, service) -%}
    {{ return(adapter.dispatch('served_skew', 'featuremart')(log, service)) }}
{%- endmacro %}


{% macro default__served_skew(log, service) -%}
    {%- set spec = featuremart._served_service('served_skew', service) -%}
    {%- if spec is none -%}
        {{ return(featuremart._pit_parse_placeholder()) }}
    {%- endif -%}
    {%- set log_sql = log | string -%}
    {%- set spine = featuremart._served_requests(log_sql, service, spec['keys']) -%}
with pit as (

    {{ featuremart.point_in_time_join(spine, 'request_ts', spec['views'], none, false) | indent(4) }}

),

logged as (

    select * from {{ log_sql }} as _fm_log
    where service = {{ featuremart._sql_string(service) }}

)
{%- for feature in spec['features'] %}
{{ 'union all' if not loop.first }}
select
    feature,
    output_name,
    request_id,
    request_ts,
    entity_keys,
    online_status,
    online_value,
    offline_value,
    abs_diff,
    case
        when online is null and offline is null then 'match'
        when online is null then 'missing_online'
        when offline is null then 'missing_offline'
        when online = offline then 'match'
        else 'mismatch'
    end as outcome
from (
    select
        logged.feature,
        logged.output_name,
        logged.request_id,
        logged.request_ts,
        logged.entity_keys,
        logged.status as online_status,
        logged.value as online_value,
        cast(pit.{{ feature.output }} as {{ dbt.type_string() }}) as offline_value,
        case when logged.status = 'present'
            then cast(logged.value as {{ feature.dtype }}) end as online,
        pit.{{ feature.output }} as offline,
        {% if feature.numeric -%}
        abs(cast(case when logged.status = 'present' then cast(logged.value as {{ feature.dtype }}) end as {{ dbt.type_float() }})
            - cast(pit.{{ feature.output }} as {{ dbt.type_float() }}))
        {%- else -%}
        cast(null as {{ dbt.type_float() }})
        {%- endif %} as abs_diff
    from logged
    inner join pit
        on pit.request_id = logged.request_id
        and pit.request_ts = logged.request_ts
        and pit.entity_index = logged.entity_index
    where logged.feature = {{ featuremart._sql_string(feature.ref) }}
) as _fm_{{ loop.index0 }}
{%- endfor %}
{%- endmacro %}

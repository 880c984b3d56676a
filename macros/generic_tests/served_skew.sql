{#- Fails when a feature of `service` disagrees between the served-feature log (`model`) and the point-in-time
    recomputation on more than `max_mismatch_rate` of its logged values (mismatches, missing online and missing
    offline together): one failing row per such feature (featuremart.served_skew; `featuremart skew` gives the
    full report with examples). `feature_views` names the service's feature views: dbt records a test's
    dependencies while parsing, before a service's views can be read from the graph.

    Usage (in the log model's YAML):
      data_tests:
        - featuremart.served_skew:
            arguments: {service: fraud_model, feature_views: [customer_spend, merchant_risk], max_mismatch_rate: 0} -#}
{% test served_skew(model, service, feature_views=[], max_mismatch_rate=0) -%}
    {%- for view in feature_views -%}
        {%- do ref(view) -%}
    {%- endfor -%}
    {{ return(adapter.dispatch('test_served_skew', 'featuremart')(model, service, max_mismatch_rate)) }}
{%- endtest %}

{% macro default__test_served_skew(model, service, max_mismatch_rate=0) -%}
select
    feature,
    count(*) as rows_compared,
    sum(case when outcome = 'match' then 0 else 1 end) as disagreeing
from (
    {{ featuremart.served_skew(model, service) | indent(4) }}
) as skew
group by feature
having sum(case when outcome = 'match' then 0 else 1 end) > {{ max_mismatch_rate | float }} * count(*)
{%- endmacro %}

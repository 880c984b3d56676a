{{ config(materialized='table') }}

{#- The fraud model's training set: every labelled transaction with the fraud_model service's features as
    they were at label_ts (point-in-time correct; see docs/training-sets.md). dbt cannot see a service's
    feature views while parsing, so they are declared here (training_set checks that none is missing). -#}

-- depends_on: {{ ref('customer_spend') }}
-- depends_on: {{ ref('merchant_risk') }}
-- depends_on: {{ ref('customer_merchant_pair') }}

{# ordered=false: a table keeps no row order, so the join skips its final sort. #}
{{ featuremart.training_set(spine=ref('fraud_labels'), timestamp='label_ts', service='fraud_model', ordered=false) }}

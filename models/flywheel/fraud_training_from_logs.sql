{{ config(materialized='table') }}

{#- The fraud model's next training set, from what it was served: each label that has arrived (labelled_at
    has passed: a chargeback about 14 days after the transaction, "not fraud" when the 60-day window closes)
    with the feature values of the logged request it belongs to (the fraud service logs each scoring under the
    transaction id), recomputed point in time where nothing was logged. See docs/flywheel.md. -#}

-- depends_on: {{ ref('customer_spend') }}
-- depends_on: {{ ref('merchant_risk') }}
-- depends_on: {{ ref('customer_merchant_pair') }}

with from_logs as (

    {{ featuremart.training_set_from_logs(ref('fraud_labels'), 'label_ts', 'fraud_model', ref('served_features'),
                                          request_id='txn_id') | indent(4) }}

)

select * from from_logs
where labelled_at <= {{ featuremart.utc_now() }}

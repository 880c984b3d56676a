{{ config(materialized='table') }}

{#- One row per approved card transaction, labelled: was it charged back (fraud)? A label is known only
    later: a chargeback arrives about two weeks after the transaction, and "not fraud" is final when the
    60-day chargeback window closes. Features are taken as of label_ts (the transaction time), never
    labelled_at: the model must score with what was known when the card was swiped. -#}

with transactions as (

    select * from {{ ref('stg_transactions') }}
    where is_approved

),

labelled as (

    select
        txn_id,
        customer_id,
        merchant_id,
        txn_ts as label_ts,
        amount,
        is_chargeback as is_fraud,
        case
            when is_chargeback then {{ dbt.dateadd('day', 14, 'txn_ts') }}
            else {{ dbt.dateadd('day', 60, 'txn_ts') }}
        end as labelled_at

    from transactions

)

select * from labelled

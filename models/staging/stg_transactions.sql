with source as (

    select * from {{ source('raw', 'transactions') }}

),

renamed as (

    select
        txn_id,
        customer_id,
        merchant_id,
        amount,
        currency,
        txn_ts,
        ingested_at,
        lower(status) as status,
        lower(status) = 'approved' as is_approved,
        coalesce(is_chargeback, false) as is_chargeback

    from source

)

select * from renamed

{#- Rolling activity per (customer, merchant) pair. A row's event_ts is the end of a day on which the
    customer paid the merchant (00:00 UTC of the next day); windows are ranges over those days. -#}

with transactions as (

    select
        *,
        {{ dbt.dateadd('day', 1, dbt.date_trunc('day', 'txn_ts')) }} as event_ts
    from {{ ref('stg_transactions') }}

),

ranked_transactions as (

    select
        *,
        row_number() over (
            partition by customer_id, merchant_id, event_ts
            order by txn_ts desc, txn_id desc
        ) as recency_rank
    from transactions

),

daily_activity as (

    select
        customer_id,
        merchant_id,
        event_ts,
        count(*) as txn_count,
        sum(case when is_approved then amount else 0 end) as spend,
        max(case when recency_rank = 1 then amount end) as last_amount,
        min(txn_ts) as first_txn_ts
    from ranked_transactions
    group by customer_id, merchant_id, event_ts

),

final as (

    select
        customer_id,
        merchant_id,
        event_ts,
        cast(sum(txn_count) over last_30_days as bigint) as pair_txn_count_30d,
        cast(sum(spend) over last_30_days as double precision) as pair_spend_30d,
        cast(last_amount as double precision) as last_pair_amount,
        min(first_txn_ts) over (
            partition by customer_id, merchant_id order by event_ts
            rows between unbounded preceding and current row
        ) as first_pair_txn_ts,
        {{ dbt.current_timestamp() }} as computed_at
    from daily_activity
    window
        last_30_days as (
            partition by customer_id, merchant_id order by event_ts
            range between interval '29 days' preceding and current row
        )

)

select * from final

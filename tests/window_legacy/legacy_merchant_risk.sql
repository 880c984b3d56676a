{#- Rolling risk figures per merchant. As in customer_spend, a row's event_ts is the end of a day with
    activity (00:00 UTC of the next day), and windows are ranges over those days. -#}

with transactions as (

    select
        *,
        {{ dbt.dateadd('day', 1, dbt.date_trunc('day', 'txn_ts')) }} as event_ts
    from {{ ref('stg_transactions') }}

),

daily_activity as (

    select
        merchant_id,
        event_ts,
        count(*) as txn_count,
        sum(case when is_approved then 1 else 0 end) as approved_count,
        sum(case when is_approved then amount else 0 end) as spend,
        sum(case when is_approved and is_chargeback then 1 else 0 end) as chargeback_count
    from transactions
    group by merchant_id, event_ts

),

rolling_activity as (

    select
        merchant_id,
        event_ts,
        sum(chargeback_count) over last_90_days as chargeback_count_90d,
        sum(approved_count) over last_90_days as approved_count_90d,
        sum(txn_count) over last_30_days as txn_count_30d,
        sum(approved_count) over last_30_days as approved_count_30d,
        sum(spend) over last_30_days as spend_30d
    from daily_activity
    window
        last_30_days as (
            partition by merchant_id order by event_ts
            range between interval '29 days' preceding and current row
        ),
        last_90_days as (
            partition by merchant_id order by event_ts
            range between interval '89 days' preceding and current row
        )

),

customer_visits as (

    select distinct merchant_id, customer_id, event_ts
    from transactions

),

distinct_customers as (

    {{ legacy_rolling_distinct_count(
        'customer_visits', partition_by='merchant_id', counted='customer_id', timestamp='event_ts', days=30
    ) | indent(4) }}

),

final as (

    select
        rolling_activity.merchant_id,
        rolling_activity.event_ts,
        cast(rolling_activity.chargeback_count_90d as double precision)
            / nullif(rolling_activity.approved_count_90d, 0) as chargeback_rate_90d,
        cast(distinct_customers.distinct_count as bigint) as distinct_customers_30d,
        cast(rolling_activity.txn_count_30d as bigint) as txn_count_30d,
        cast(
            rolling_activity.spend_30d / nullif(rolling_activity.approved_count_30d, 0) as double precision
        ) as avg_amount_30d,
        {{ dbt.current_timestamp() }} as computed_at
    from rolling_activity
    inner join distinct_customers
        on distinct_customers.merchant_id = rolling_activity.merchant_id
        and distinct_customers.event_ts = rolling_activity.event_ts

)

select * from final

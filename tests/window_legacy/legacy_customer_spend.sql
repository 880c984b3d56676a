{#- Rolling card activity per customer. A row's event_ts is the end of a day with activity (00:00 UTC of
    the next day): the first moment that day's totals are known, so a window "up to event_ts" never sees
    the future. Windows are ranges over those days: 1d is the day itself, 7d the 7 days ending with it. -#}

with transactions as (

    select
        *,
        {{ dbt.dateadd('day', 1, dbt.date_trunc('day', 'txn_ts')) }} as event_ts
    from {{ ref('stg_transactions') }}

),

daily_activity as (

    select
        customer_id,
        event_ts,
        sum(case when is_approved then amount else 0 end) as spend,
        count(*) as txn_count,
        sum(case when is_approved then 1 else 0 end) as approved_count,
        sum(case when is_approved then 0 else 1 end) as declined_count,
        max(case when is_approved then amount end) as max_amount
    from transactions
    group by customer_id, event_ts

),

rolling_activity as (

    select
        customer_id,
        event_ts,
        spend as spend_1d,
        sum(spend) over last_7_days as spend_7d,
        sum(spend) over last_30_days as spend_30d,
        txn_count as txn_count_1d,
        sum(txn_count) over last_7_days as txn_count_7d,
        sum(txn_count) over last_30_days as txn_count_30d,
        sum(approved_count) over last_30_days as approved_count_30d,
        max(max_amount) over last_7_days as max_amount_7d,
        sum(declined_count) over last_7_days as declined_count_7d
    from daily_activity
    window
        last_7_days as (
            partition by customer_id order by event_ts
            range between interval '6 days' preceding and current row
        ),
        last_30_days as (
            partition by customer_id order by event_ts
            range between interval '29 days' preceding and current row
        )

),

merchant_visits as (

    select distinct customer_id, merchant_id, event_ts
    from transactions

),

distinct_merchants as (

    {{ legacy_rolling_distinct_count(
        'merchant_visits', partition_by='customer_id', counted='merchant_id', timestamp='event_ts', days=30
    ) | indent(4) }}

),

final as (

    select
        rolling_activity.customer_id,
        rolling_activity.event_ts,
        cast(rolling_activity.spend_1d as double precision) as spend_1d,
        cast(rolling_activity.spend_7d as double precision) as spend_7d,
        cast(rolling_activity.spend_30d as double precision) as spend_30d,
        cast(rolling_activity.txn_count_1d as bigint) as txn_count_1d,
        cast(rolling_activity.txn_count_7d as bigint) as txn_count_7d,
        cast(rolling_activity.txn_count_30d as bigint) as txn_count_30d,
        cast(
            rolling_activity.spend_30d / nullif(rolling_activity.approved_count_30d, 0) as double precision
        ) as avg_amount_30d,
        cast(rolling_activity.max_amount_7d as double precision) as max_amount_7d,
        cast(rolling_activity.declined_count_7d as bigint) as declined_count_7d,
        cast(distinct_merchants.distinct_count as bigint) as distinct_merchants_30d,
        {{ dbt.current_timestamp() }} as computed_at
    from rolling_activity
    inner join distinct_merchants
        on distinct_merchants.customer_id = rolling_activity.customer_id
        and distinct_merchants.event_ts = rolling_activity.event_ts

)

select * from final

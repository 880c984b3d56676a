with card_events as (

    select * from {{ ref('card_events') }}

),

daily_spend as (

    select
        customer_id,
        {{ dbt.dateadd('day', '1 - days_ago', dbt.date_trunc('day', featuremart.utc_now())) }} as event_ts,
        sum(amount) as spend_1d,
        count(*) as txn_count_1d
    from card_events
    group by customer_id, days_ago

)

select * from daily_spend

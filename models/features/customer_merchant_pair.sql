{#- Rolling activity per (customer, merchant) pair, declared with featuremart.window_features
    (docs/window-features.md). A row's event_ts is the end of a UTC day on which the customer tried to pay the
    merchant (00:00 UTC of the next day); a window w covers the events timestamped in [event_ts - w,
    event_ts). A table, not incremental (see customer_spend). -#}

with rolling_activity as (

    {{ featuremart.window_features(
        source=ref('stg_transactions'),
        keys=['customer_id', 'merchant_id'],
        timestamp='txn_ts',
        grain='1d',
        incremental=false,
        aggregations=[
            {'name': 'pair_txn_count', 'function': 'count', 'column': '*', 'windows': ['30d']},
            {'name': 'pair_spend', 'function': 'sum', 'column': 'amount', 'where': 'is_approved',
             'windows': ['30d']},
            {'name': 'last_pair_amount', 'function': 'last', 'column': 'amount', 'windows': ['1d']},
        ]) | indent(4) }}

),

-- The pair's first attempt ever: every row of the pair is at or after it, so no window is needed.
first_attempts as (

    select customer_id, merchant_id, min(txn_ts) as first_pair_txn_ts
    from {{ ref('stg_transactions') }}
    group by customer_id, merchant_id

),

final as (

    select
        rolling_activity.customer_id,
        rolling_activity.merchant_id,
        rolling_activity.event_ts,
        cast(rolling_activity.pair_txn_count_30d as bigint) as pair_txn_count_30d,
        cast(coalesce(rolling_activity.pair_spend_30d, 0) as {{ featuremart.type_double() }}) as pair_spend_30d,
        cast(rolling_activity.last_pair_amount_1d as {{ featuremart.type_double() }}) as last_pair_amount,
        first_attempts.first_pair_txn_ts,
        {{ dbt.current_timestamp() }} as computed_at
    from rolling_activity
    inner join first_attempts
        on first_attempts.customer_id = rolling_activity.customer_id
        and first_attempts.merchant_id = rolling_activity.merchant_id

)

select * from final

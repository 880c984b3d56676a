{#- Rolling card activity per customer, declared with featuremart.window_features (docs/window-features.md).
    A row's event_ts is the end of a UTC day with activity (00:00 UTC of the next day): the first moment that
    day's totals are known, so no window ever sees the future. A window w at event_ts covers the events
    timestamped in [event_ts - w, event_ts): 1d is the day itself, 7d the 7 days ending with it.
    A table, not incremental: the demo regenerates its raw data wholesale (see docs/window-features.md for
    the incremental default). -#}

with windowed as (

    {{ featuremart.window_features(
        source=ref('stg_transactions'),
        keys=['customer_id'],
        timestamp='txn_ts',
        grain='1d',
        incremental=false,
        aggregations=[
            {'name': 'spend', 'function': 'sum', 'column': 'amount', 'where': 'is_approved',
             'windows': ['1d', '7d', '30d']},
            {'name': 'txn_count', 'function': 'count', 'column': '*', 'windows': ['1d', '7d', '30d']},
            {'name': 'approved_count', 'function': 'count', 'column': '*', 'where': 'is_approved',
             'windows': ['30d']},
            {'name': 'max_amount', 'function': 'max', 'column': 'amount', 'where': 'is_approved',
             'windows': ['7d']},
            {'name': 'declined_count', 'function': 'count', 'column': '*',
             'where': 'not coalesce(is_approved, false)', 'windows': ['7d']},
            {'name': 'distinct_merchants', 'function': 'count_distinct', 'column': 'merchant_id',
             'windows': ['30d']},
        ]) | indent(4) }}

),

rolling_activity as (

    -- Spend is a sum of approved amounts: 0, not null, when the window holds only declined attempts.
    select
        customer_id,
        event_ts,
        coalesce(spend_1d, 0) as spend_1d,
        coalesce(spend_7d, 0) as spend_7d,
        coalesce(spend_30d, 0) as spend_30d,
        txn_count_1d,
        txn_count_7d,
        txn_count_30d,
        approved_count_30d,
        max_amount_7d,
        declined_count_7d,
        distinct_merchants_30d
    from windowed

),

final as (

    select
        rolling_activity.customer_id,
        rolling_activity.event_ts,
        cast(rolling_activity.spend_1d as {{ featuremart.type_double() }}) as spend_1d,
        cast(rolling_activity.spend_7d as {{ featuremart.type_double() }}) as spend_7d,
        cast(rolling_activity.spend_30d as {{ featuremart.type_double() }}) as spend_30d,
        cast(rolling_activity.txn_count_1d as bigint) as txn_count_1d,
        cast(rolling_activity.txn_count_7d as bigint) as txn_count_7d,
        cast(rolling_activity.txn_count_30d as bigint) as txn_count_30d,
        -- divided as doubles: Spark divides decimals as decimals, rounded to 8 places
        cast(rolling_activity.spend_30d as {{ featuremart.type_double() }})
            / nullif(rolling_activity.approved_count_30d, 0) as avg_amount_30d,
        cast(rolling_activity.max_amount_7d as {{ featuremart.type_double() }}) as max_amount_7d,
        cast(rolling_activity.declined_count_7d as bigint) as declined_count_7d,
        cast(rolling_activity.distinct_merchants_30d as bigint) as distinct_merchants_30d,
        {{ dbt.current_timestamp() }} as computed_at
    from rolling_activity

)

select * from final

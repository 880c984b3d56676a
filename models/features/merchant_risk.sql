{#- Rolling risk figures per merchant, declared with featuremart.window_features (docs/window-features.md). As
    in customer_spend, a row's event_ts is the end of a UTC day with activity (00:00 UTC of the next day), and
    a window w covers the events timestamped in [event_ts - w, event_ts). A table, not incremental (see
    customer_spend). -#}

with rolling_activity as (

    {{ featuremart.window_features(
        source=ref('stg_transactions'),
        keys=['merchant_id'],
        timestamp='txn_ts',
        grain='1d',
        incremental=false,
        aggregations=[
            {'name': 'chargeback_count', 'function': 'count', 'column': '*',
             'where': 'is_approved and is_chargeback', 'windows': ['90d']},
            {'name': 'approved_count', 'function': 'count', 'column': '*', 'where': 'is_approved',
             'windows': ['30d', '90d']},
            {'name': 'txn_count', 'function': 'count', 'column': '*', 'windows': ['30d']},
            {'name': 'spend', 'function': 'sum', 'column': 'amount', 'where': 'is_approved', 'windows': ['30d']},
            {'name': 'distinct_customers', 'function': 'count_distinct', 'column': 'customer_id',
             'windows': ['30d']},
        ]) | indent(4) }}

),

final as (

    select
        rolling_activity.merchant_id,
        rolling_activity.event_ts,
        cast(rolling_activity.chargeback_count_90d as {{ featuremart.type_double() }})
            / nullif(rolling_activity.approved_count_90d, 0) as chargeback_rate_90d,
        cast(rolling_activity.distinct_customers_30d as bigint) as distinct_customers_30d,
        cast(rolling_activity.txn_count_30d as bigint) as txn_count_30d,
        -- divided as doubles: Spark divides decimals as decimals, rounded to 8 places
        cast(rolling_activity.spend_30d as {{ featuremart.type_double() }})
            / nullif(rolling_activity.approved_count_30d, 0) as avg_amount_30d,
        {{ dbt.current_timestamp() }} as computed_at
    from rolling_activity

)

select * from final

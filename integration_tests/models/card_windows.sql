{#- Trailing-window features declared with the package's window_features macro (incremental by default).
    A day's row is known at 00:00 UTC of the next day; 7d covers the 7 days ending with that day. -#}
{{ featuremart.window_features(
    source=ref('card_transactions'),
    keys=['customer_id'],
    timestamp='txn_ts',
    windows=['1d', '7d'],
    aggregations=[
        {'name': 'spend', 'function': 'sum', 'column': 'amount', 'where': "status = 'approved'"},
        {'name': 'attempts', 'function': 'count', 'column': '*'},
    ]) }}

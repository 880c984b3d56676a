{#- Fails when two rows of `model` share the entity `keys` and the event `timestamp`: a feature view has one
    row per entity per event time ("from this time on, these are the values").

    Returns one row per colliding (keys, timestamp) with its n_rows, and logs up to five of them, so the
    build output says which keys collide:
      featuremart: customer_spend has 2 duplicate (customer_id, event_ts): customer_id=C1 event_ts=... (2 rows)

    data_tests:
      - featuremart.feature_keys_unique:
          arguments: {keys: [customer_id], timestamp: event_ts} -#}
{% test feature_keys_unique(model, keys, timestamp) %}
    {{ featuremart._check_column_list('feature_keys_unique', 'keys', keys) }}
    {{ featuremart._check_column_name('feature_keys_unique', 'timestamp', timestamp) }}
    {%- set columns = keys + [timestamp] -%}
    {{ featuremart._log_key_collisions(model, columns) }}

    {{ featuremart._key_collisions_sql(model, columns) }}
{% endtest %}

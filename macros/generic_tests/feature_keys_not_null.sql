{#- Fails with the rows of `model` where any of the entity `keys` is null.

    data_tests:
      - featuremart.feature_keys_not_null:
          arguments: {keys: [customer_id]} -#}
{% test feature_keys_not_null(model, keys) %}
    {{ featuremart._check_column_list('feature_keys_not_null', 'keys', keys) }}

    select *
    from {{ model }}
    where {% for key in keys %}{{ key }} is null{% if not loop.last %} or {% endif %}{% endfor %}
{% endtest %}

{#- A customer's spend mix over merchant categories in the 30 days up to event_ts, as an 8-float vector
    (shares of approved spend, in the order of `categories` below; all zeros when nothing was approved).
    A row's event_ts is the end of a day with activity (00:00 UTC of the next day). -#}

{%- set categories = [
    'grocery', 'fuel', 'restaurants', 'travel', 'electronics', 'apparel', 'entertainment', 'health',
] -%}
{%- set shares = [] -%}
{%- for category in categories -%}{%- do shares.append(category ~ '_share') -%}{%- endfor -%}

with transactions as (

    select
        *,
        {{ dbt.dateadd('day', 1, dbt.date_trunc('day', 'txn_ts')) }} as event_ts
    from {{ ref('stg_transactions') }}

),

merchants as (

    select * from {{ ref('stg_merchants') }}

),

daily_category_spend as (

    select
        transactions.customer_id,
        transactions.event_ts,
        {%- for category in categories %}
        sum(
            case when transactions.is_approved and merchants.category = '{{ category }}'
            then transactions.amount else 0 end
        ) as {{ category }}_spend{{ ',' if not loop.last }}
        {%- endfor %}
    from transactions
    inner join merchants
        on merchants.merchant_id = transactions.merchant_id
    group by transactions.customer_id, transactions.event_ts

),

rolling_category_spend as (

    select
        customer_id,
        event_ts,
        {%- for category in categories %}
        cast(sum({{ category }}_spend) over last_30_days as {{ featuremart.type_double() }}) as {{ category }}_spend_30d,
        {%- endfor %}
        cast(sum({% for category in categories %}{{ category }}_spend{{ ' + ' if not loop.last }}{% endfor %})
            over last_30_days as {{ featuremart.type_double() }}) as total_spend_30d
    from daily_category_spend
    window
        last_30_days as (
            partition by customer_id order by event_ts
            range between interval '29 days' preceding and current row
        )

),

spend_shares as (

    select
        customer_id,
        event_ts,
        {%- for category in categories %}
        coalesce({{ category }}_spend_30d / nullif(total_spend_30d, 0), 0) as {{ category }}_share
        {{- ',' if not loop.last }}
        {%- endfor %}
    from rolling_category_spend

),

final as (

    select
        customer_id,
        event_ts,
        {{ featuremart.double_array(shares) }} as embedding,
        sqrt({% for share in shares %}{{ share }} * {{ share }}{{ ' + ' if not loop.last }}{% endfor %})
            as embedding_norm,
        {{ dbt.current_timestamp() }} as computed_at
    from spend_shares

)

select * from final

{#- The customer profile as a slowly changing feature view: a row whenever it changes. The raw data holds
    the current profile and when the identity was verified, so each customer has a row at signup and, once
    verified later, a row at verification. -#}

with customers as (

    select * from {{ ref('stg_customers') }}

),

profile_versions as (

    select
        customer_id,
        signup_ts as updated_at,
        coalesce(verified_at <= signup_ts, false) as is_verified
    from customers

    union all

    select
        customer_id,
        verified_at as updated_at,
        true as is_verified
    from customers
    where verified_at > signup_ts

),

final as (

    select
        profile_versions.customer_id,
        profile_versions.updated_at,
        customers.country,
        cast(
            {{ dbt.datediff('customers.signup_ts', 'profile_versions.updated_at', 'day') }} as integer
        ) as account_age_days,
        customers.signup_channel,
        profile_versions.is_verified,
        customers.bio,
        {{ dbt.current_timestamp() }} as computed_at
    from profile_versions
    inner join customers
        on customers.customer_id = profile_versions.customer_id

)

select * from final

with source as (

    select * from {{ source('raw', 'customers') }}

),

renamed as (

    select
        customer_id,
        upper(country) as country,
        signup_ts,
        lower(signup_channel) as signup_channel,
        coalesce(is_verified, false) as is_verified,
        verified_at,
        bio

    from source

)

select * from renamed

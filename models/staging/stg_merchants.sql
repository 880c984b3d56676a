with source as (

    select * from {{ source('raw', 'merchants') }}

),

renamed as (

    select
        merchant_id,
        lower(category) as category,
        mcc,
        upper(country) as country,
        opened_ts

    from source

)

select * from renamed

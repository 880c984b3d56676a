{{ config(materialized='table') }}

{#- What the online store served: featuremart's served-feature log (Parquet under
    $FEATUREMART_SERVED_LOG_DIR, default data/served_log) read as a source, one row per request x entity x
    feature (docs/flywheel.md). Empty until a logged service is read; rebuilt with the logs of the day at each
    `dbt build`. -#}

{{ featuremart.served_log() }}

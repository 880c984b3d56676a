{{ config(materialized='table') }}

{#- What the online store served: featuremart's served-feature log read as a source, one row per request x
    entity x feature (docs/flywheel.md). On DuckDB and Spark: the Parquet files under $FEATUREMART_SERVED_LOG_DIR
    (default data/served_log), read in place. Elsewhere: the files loaded as they are into the table
    `served_log_files` of the target schema; until one is loaded, no rows. Rebuilt with the logs so far at
    each `dbt build`. -#}

{%- if target.type in ('duckdb', 'spark') %}
{{ featuremart.served_log() }}
{%- else %}
{%- set loaded = adapter.get_relation(database=target.database, schema=target.schema, identifier='served_log_files') if execute else none %}
{{ featuremart.served_log(loaded) if loaded is not none else featuremart._served_log_empty() }}
{%- endif %}

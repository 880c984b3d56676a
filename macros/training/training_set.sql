{#- A training set inside a dbt model: the point-in-time join of `spine` with the features of a feature
    service or of a list of features, each view's keys, timestamp and ttl read from its model's metadata.

    Arguments:
      spine          a relation (ref(), source()) or a SQL query string; its columns come out untouched.
      timestamp      the spine's timestamp column (timestamp taken as UTC; timestamptz converted to UTC, as
                     are the views' timestamptz event times: see _pit_utc_timestamp).
      service        a feature service: the name of a dbt exposure of type `ml` whose
                     config.meta.featuremart.features lists `view.feature` / `view.*`.
      features       or a list of `view.feature` / `view.*` strings (give exactly one of service, features).
      spine_columns  optional, as in point_in_time_join (featuremart's Python side passes it for frames).
      ordered        default true (rows in spine order); a model may pass false: a table keeps no order
                     ('row_number': see point_in_time_join).

    Views are joined in the order they first appear in the list, each with its features in listed order
    (`view.*`: the model's columns in warehouse order, minus keys, timestamp, `changed_at` and `feature: false`
    opt-outs: the features served online). Entity join keys come from `var('featuremart_entities')` and a view
    without a ttl gets `var('featuremart_default_ttl')`: written once, in the project's dbt_project.yml (see
    _featuremart_vars.sql and docs/metadata.md).

    Dependencies: dbt records refs while parsing, before the graph (and so a service's views) is known.
    With `features=[...]` the views are ref'd at parse time; with `service=` the model must declare them,
    one line each:  -- depends_on: {{ ref('customer_spend') }}   (a missing one is a compile error naming it).

    Usage:
      {{ featuremart.training_set(spine=ref('fraud_labels'), timestamp='label_ts', service='fraud_model') }} -#}
{% macro training_set(spine, timestamp, service=none, features=none, spine_columns=none, ordered=true) -%}
    {{ return(adapter.dispatch('training_set', 'featuremart')(spine, timestamp, service, features, spine_columns, ordered)) }}
{%- endmacro %}


{#- Resolution reads the graph (https://docs.getdbt.com/reference/dbt-jinja-functions/graph) and the join is
    point_in_time_join's, itself dispatched per warehouse: nothing here is dialect-specific. -#}
{% macro default__training_set(spine, timestamp, service=none, features=none, spine_columns=none, ordered=true) -%}
    {%- set views = featuremart._training_set_views('training_set', service, features) -%}
    {%- if views is none -%}
        {{ return(featuremart._pit_parse_placeholder()) }}
    {%- endif -%}
    {{ return(featuremart.point_in_time_join(spine, timestamp, views, spine_columns, ordered)) }}
{%- endmacro %}

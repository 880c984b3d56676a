{#- A training set from the served-feature log: each label row with the feature values its request was
    actually served (where they were logged), else recomputed point in time; a `<feature>__source` column says
    which ('logged' or 'recomputed').

    Arguments:
      labels      a relation (ref, source): one row per label, with the service's entity keys and `timestamp`;
                  its columns come out untouched.
      timestamp   the label's time: the moment the prediction was made (timestamp taken as UTC, timestamptz
                  converted). Features not logged are recomputed as of the matched request's time, else this.
      service     the feature service whose logged reads are used (an exposure of type ml).
      log         the served-feature log: a model or relation built with featuremart.served_log().
      request_id  optional: the label column holding the request id the prediction was logged under (see
                  featuremart.servedlog.request_id). Without it a label joins, by entity keys, the latest
                  logged request at or before `timestamp`.

    The point-in-time rule (docs/flywheel.md): a label joins only the logged request it belongs to: the one
    with its request id and entity keys (the latest, if an id was reused), or, without ids, the latest request
    for its entity keys at or before its timestamp. A label that arrives later (labelled_at) changes nothing:
    the values are those served at the request. Labels with no logged request get every feature recomputed
    (point_in_time_join at `timestamp`), so no label is dropped. Output columns: the labels' columns,
    logged_request_id, logged_request_ts, then per feature `<output name>` and `<output name>__source`.

    Usage:
      {{ featuremart.training_set_from_logs(ref('fraud_labels'), 'label_ts', 'fraud_model', ref('served_features'),
                                            request_id='txn_id') }} -#}
{% macro training_set_from_logs(labels, timestamp, service, log, request_id=none) -%}
    {{ return(adapter.dispatch('training_set_from_logs', 'featuremart')(labels, timestamp, service, log, request_id)) }}
{%- endmacro %}


{#- Portable SQL (window functions, the dispatched _json_text and point_in_time_join): DuckDB and PostgreSQL. -#}
{% macro default__training_set_from_logs(labels, timestamp, service, log, request_id=none) -%}
    {%- set macro_name = 'training_set_from_logs' -%}
    {%- if labels is string or labels is none or labels.identifier is not defined -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": `labels` must be a relation (ref or source), got " ~ labels | string) }}
    {%- endif -%}
    {%- if log is none -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": pass `log`, the served-feature log (a model built with featuremart.served_log())") }}
    {%- endif -%}
    {%- set spec = featuremart._served_service(macro_name, service) -%}
    {%- if spec is none -%}
        {{ return(featuremart._pit_parse_placeholder()) }}
    {%- endif -%}
    {%- set log_sql = log | string -%}
    {%- set label_columns = adapter.get_columns_in_relation(labels) -%}
    {%- set by_name = {} -%}
    {%- for column in label_columns -%}
        {%- do by_name.update({column.name | lower: column}) -%}
    {%- endfor -%}
    {%- for needed in [timestamp] + ([request_id] if request_id is not none else []) + (spec['keys'] | map(attribute='name') | list) -%}
        {%- if needed | lower not in by_name -%}
            {{ exceptions.raise_compiler_error(macro_name ~ ": " ~ needed ~ " is not a column of " ~ labels ~ " (columns: " ~ label_columns | map(attribute='name') | join(', ') ~ ")") }}
        {%- endif -%}
    {%- endfor -%}
    {%- for reserved in ['logged_request_id', 'logged_request_ts', 'logged_entity_index', 'features_at'] if reserved in by_name -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": the labels' column " ~ reserved ~ " has a name this macro outputs: rename it") }}
    {%- endfor -%}
    {%- set label_ts = featuremart._pit_utc_timestamp('labels.' ~ adapter.quote(by_name[timestamp | lower].name), by_name[timestamp | lower].data_type) -%}

    {%- set spine -%}
with _fm_requests as (

    {{ featuremart._served_requests(log_sql, service, spec['keys']) | indent(4) }}

),

labels as (

    select *, row_number() over (order by {{ adapter.quote(by_name[timestamp | lower].name) }}) as _fm_label_row
    from {{ labels }}

),

candidates as (

    select
        labels._fm_label_row,
        requests.request_id,
        requests.request_ts,
        requests.entity_index,
        row_number() over (
            partition by labels._fm_label_row
            order by requests.request_ts desc, requests.request_id desc, requests.entity_index
        ) as _fm_rank
    from labels
    inner join _fm_requests as requests
        on {% for key in spec['keys'] %}requests.{{ key.name }} = labels.{{ key.name }}
        and {% endfor -%}
        {%- if request_id is not none %}requests.request_id = cast(labels.{{ adapter.quote(by_name[request_id | lower].name) }} as {{ dbt.type_string() }})
        {%- else %}requests.request_ts <= {{ label_ts }}{% endif %}

)

select
    {% for column in label_columns -%}
    labels.{{ adapter.quote(column.name) }},
    {% endfor -%}
    candidates.request_id as logged_request_id,
    candidates.request_ts as logged_request_ts,
    candidates.entity_index as logged_entity_index,
    coalesce(candidates.request_ts, {{ label_ts }}) as features_at
from labels
left join candidates
    on candidates._fm_label_row = labels._fm_label_row
    and candidates._fm_rank = 1
    {%- endset -%}

with pit as (

    {{ featuremart.point_in_time_join(spine, 'features_at', spec['views'], none, false) | indent(4) }}

),

logged as (

    select
        request_id,
        request_ts,
        entity_index
        {%- for feature in spec['features'] %},
        max(case when feature = {{ featuremart._sql_string(feature.ref) }} then 1 else 0 end) as _fm_has_{{ loop.index0 }},
        max(case when feature = {{ featuremart._sql_string(feature.ref) }} and status = 'present' then value end) as _fm_value_{{ loop.index0 }}
        {%- endfor %}
    from {{ log_sql }} as _fm_log
    where service = {{ featuremart._sql_string(service) }}
    group by request_id, request_ts, entity_index

)

select
    {% for column in label_columns -%}
    pit.{{ adapter.quote(column.name) }},
    {% endfor -%}
    pit.logged_request_id,
    pit.logged_request_ts
    {%- for feature in spec['features'] %},
    case when logged._fm_has_{{ loop.index0 }} = 1
        then cast(logged._fm_value_{{ loop.index0 }} as {{ feature.dtype }})
        else pit.{{ feature.output }} end as {{ feature.output }},
    case when logged._fm_has_{{ loop.index0 }} = 1 then 'logged' else 'recomputed' end as {{ feature.output }}__source
    {%- endfor %}
from pit
left join logged
    on logged.request_id = pit.logged_request_id
    and logged.request_ts = pit.logged_request_ts
    and logged.entity_index = pit.logged_entity_index
{%- endmacro %}

{#- The point-in-time join: for each row of `spine` and each feature view, the values of the view's latest row
    with  spine_ts - ttl <= view_ts <= spine_ts  (both ends inclusive), else nulls.

    Every spine row comes out exactly once, with its own columns untouched and in the spine's order (a
    row_number() over the spine, read once, orders the result), followed by the features.

    Arguments:
      spine            a relation (ref(), source(), api.Relation) or a SQL query string (used as a subquery).
      spine_timestamp  the spine's timestamp column. `timestamp` is taken as UTC; `timestamptz` is converted to
                       UTC wall-clock time (`timestamp`); `date` is cast to midnight. Views' event timestamps
                       are normalised the same way, so both sides compare as UTC instants whatever the
                       session's TimeZone (see _pit_utc_timestamp).
      views            a list of mappings, one per feature view:
                         relation     a relation, or a table name as a string (rendered as given)
                         name         the view's name (prefix of colliding feature names)
                         keys         join keys: the same column names in the spine and in the view
                         timestamp    the view's event-time column
                         timestamp_type  optional: its warehouse type (e.g. 'timestamp with time zone');
                                      read from the relation when not given
                         ttl_seconds  an int >= 0, or none for no ttl
                         features     the feature columns to take (at least one)
                         unique       optional, default false. true promises no two rows share (keys, timestamp)
                                      (the featuremart.feature_keys_unique test); the DuckDB version then skips
                                      the tie-breaking pass, which costs about 2x (see docs/training-sets.md).
      spine_columns    optional: the spine's columns, as a list of names or a mapping name -> data type, in
                       order. Given, nothing is queried at compile time; else they are read from the warehouse.
      ordered          default true: rows come out in the spine's order. A dbt table keeps no order, so a model
                       may pass false and save the final sort (most of what the join costs over a bare ASOF join).
                       'row_number': the join's order, with the spine's row number (0 to n - 1) as a last
                       column _fm_row, for a caller that puts the rows in order itself (featuremart's Python
                       side does, on DuckDB, by a permutation instead of a sort: see docs/training-sets.md).

    Output names: a feature keeps its name unless the same name (case-insensitively) is also a feature of
    another view in the join or a join key of a view in the join; then it is named `<view name>__<feature>`
    (every colliding occurrence, whatever the views' order). The spine's other columns never rename a feature
    (online reads name it the same way, without a spine): a spine column named like an output column is an
    error asking to rename the spine column, and so is a prefixed name that still collides.

    Duplicates: when several rows of a view share keys and timestamp, the one taken is the greatest when the
    rows are ordered by the selected features in their listed order, ascending, nulls smallest.

    Usage:
      {{ featuremart.point_in_time_join(ref('labels'), 'label_ts', [
            {'relation': ref('customer_spend'), 'name': 'customer_spend', 'keys': ['customer_id'],
             'timestamp': 'event_ts', 'ttl_seconds': 2592000, 'features': ['spend_7d', 'txn_count_7d']},
         ]) }} -#}
{% macro point_in_time_join(spine, spine_timestamp, views, spine_columns=none, ordered=true) -%}
    {%- if ordered not in [true, false, 'row_number'] -%}
        {{ exceptions.raise_compiler_error("point_in_time_join: ordered must be true, false or 'row_number', got " ~ ordered) }}
    {%- endif -%}
    {{ return(adapter.dispatch('point_in_time_join', 'featuremart')(spine, spine_timestamp, views, spine_columns, ordered)) }}
{%- endmacro %}


{#- Any warehouse with window functions (PostgreSQL, Snowflake, BigQuery, Redshift, ...).

    Per view, the spine's (keys, timestamp) rows and the view's rows are stacked (union all) and sorted per
    key by (timestamp, view rows before spine rows at the same time, then the features): a running count of
    view rows (count() over ... rows unbounded preceding) gives every spine row the number of the latest view
    row at or before its time, and first_value() over (keys, that number) carries that row's values to it.
    That is two sorts of spine + view rows per view: O((n + m) log(n + m)), whatever the histories' shape
    and with no index needed, where a `left join lateral (... order by ts desc limit 1)` is a nested loop that
    is only fast with an index on (keys, ts) that dbt tables do not have, and a range join + distinct on
    multiplies rows by the history length within the ttl. The tie-break on the features is part of the
    sort, so duplicates cost nothing here. The ttl is then applied as in the DuckDB version (see there).

    Window functions and frames: https://www.postgresql.org/docs/current/sql-expressions.html#SYNTAX-WINDOW-FUNCTIONS
    and https://www.postgresql.org/docs/current/functions-window.html -#}
{% macro default__point_in_time_join(spine, spine_timestamp, views, spine_columns=none, ordered=true) -%}
    {%- set pit = featuremart._pit_prepare('point_in_time_join', spine, spine_timestamp, views, spine_columns) -%}
    {%- if pit is none -%}
        {{ return(featuremart._pit_parse_placeholder()) }}
    {%- endif -%}
with _fm_spine as (

    {{ featuremart._pit_spine_sql(pit) | indent(4) }}

)
{%- for view in pit.views %},

_fm_{{ view.index }}_stacked as (

    select
        {% for key in view.key_columns -%}
        {{ key }},
        {% endfor -%}
        {{ view.timestamp_sql }} as _fm_ts,
        0 as _fm_is_spine,
        cast(null as {{ dbt.type_bigint() }}) as _fm_row,
        {{ view.timestamp_sql }} as _fm_view_ts
        {%- for feature in view.features %},
        {{ feature.column }} as _fm_f{{ loop.index0 }}
        {%- endfor %}
    from {{ view.relation }}
    where {{ view.timestamp }} is not null
    {%- for key in view.key_columns %}
        and {{ key }} is not null
    {%- endfor %}

    union all

    select
        {% for key in view.key_columns -%}
        {{ key }},
        {% endfor -%}
        _fm_ts,
        1 as _fm_is_spine,
        _fm_row,
        null as _fm_view_ts
        {%- for feature in view.features %},
        null as _fm_f{{ loop.index0 }}
        {%- endfor %}
    from _fm_spine
    where _fm_ts is not null

),

_fm_{{ view.index }}_numbered as (

    select
        *,
        count(_fm_view_ts) over (
            partition by {{ view.key_columns | join(', ') }}
            order by _fm_ts, _fm_is_spine
            {%- for feature in view.features %}, _fm_f{{ loop.index0 }} nulls first{% endfor %}
            rows between unbounded preceding and current row
        ) as _fm_view_row
    from _fm_{{ view.index }}_stacked

),

_fm_{{ view.index }}_matched as (

    select
        _fm_row,
        _fm_is_spine,
        first_value(_fm_view_ts) over latest_view_row as _fm_view_ts
        {%- for feature in view.features %},
        first_value(_fm_f{{ loop.index0 }}) over latest_view_row as _fm_f{{ loop.index0 }}
        {%- endfor %}
    from _fm_{{ view.index }}_numbered
    window latest_view_row as (
        partition by {{ view.key_columns | join(', ') }}, _fm_view_row
        order by _fm_is_spine
        rows between unbounded preceding and current row
    )

)
{%- endfor %}

select
    {{ featuremart._pit_output_columns(pit, ordered) | indent(4) }}
from _fm_spine as spine
{%- for view in pit.views %}
left join _fm_{{ view.index }}_matched as _fm_{{ view.index }}
    on _fm_{{ view.index }}._fm_row = spine._fm_row
    and _fm_{{ view.index }}._fm_is_spine = 1
{%- endfor %}
{%- if ordered == true %}
order by spine._fm_row
{%- endif %}
{%- endmacro %}


{#- DuckDB: one `ASOF LEFT JOIN` per view (https://duckdb.org/docs/stable/guides/sql_features/asof_join and
    https://duckdb.org/docs/stable/sql/query_syntax/from#as-of-joins). An ASOF join takes equality conditions
    and a single inequality, so it finds the latest view row with view_ts <= spine_ts; its values are then
    nulled when view_ts < spine_ts - ttl. That is the contract: if the latest row at or before spine_ts is
    older than the ttl, so is every earlier row and the window [spine_ts - ttl, spine_ts] holds none; if it
    is within, it is the latest row of the window. Null feature values stay null: the join matches rows, not
    values.

    Among rows tied on (keys, timestamp) the ASOF join takes whichever its parallel sort left last, which
    varies from run to run (duckdb/duckdb#25536). Unless the view is declared `unique`, its rows are first
    reduced to one per (keys, timestamp) with the documented tie-break (qualify row_number() = 1). -#}
{% macro duckdb__point_in_time_join(spine, spine_timestamp, views, spine_columns=none, ordered=true) -%}
    {%- set pit = featuremart._pit_prepare('point_in_time_join', spine, spine_timestamp, views, spine_columns) -%}
    {%- if pit is none -%}
        {{ return(featuremart._pit_parse_placeholder()) }}
    {%- endif -%}
with _fm_spine as (

    {{ featuremart._pit_spine_sql(pit) | indent(4) }}

)
{%- for view in pit.views %},

_fm_{{ view.index }}_rows as (

    select
        {% for key in view.key_columns -%}
        {{ key }},
        {% endfor -%}
        {{ view.timestamp_sql }} as _fm_view_ts
        {%- for feature in view.features %},
        {{ feature.column }} as _fm_f{{ loop.index0 }}
        {%- endfor %}
    from {{ view.relation }}
    {%- if not view.unique %}
    qualify row_number() over (
        partition by {{ view.key_columns | join(', ') }}, {{ view.timestamp }}
        order by {% for feature in view.features %}{{ feature.column }} desc nulls last{{ ', ' if not loop.last }}{% endfor %}
    ) = 1
    {%- endif %}

)
{%- endfor %}

select
    {{ featuremart._pit_output_columns(pit, ordered) | indent(4) }}
from _fm_spine as spine
{%- for view in pit.views %}
asof left join _fm_{{ view.index }}_rows as _fm_{{ view.index }}
    on {% for key in view.key_columns %}_fm_{{ view.index }}.{{ key }} = spine.{{ key }}
    and {% endfor %}_fm_{{ view.index }}._fm_view_ts <= spine._fm_ts
{%- endfor %}
{%- if ordered == true %}
order by spine._fm_row
{%- endif %}
{%- endmacro %}

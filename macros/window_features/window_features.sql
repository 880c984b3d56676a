{#- Declarative trailing-window features: one row per entity per grain period with activity (or per event
    instant with grain='event'), with aggregations over trailing time windows. See docs/window-features.md.

    Time semantics (the same on every warehouse):
      - An event becomes *known* at the end of its grain period: with grain '1d', an event at 13:05 on day D is
        known at 00:00 UTC of D+1; with grain 'event' it is known at its own timestamp.
      - The row of an entity at output time t (the column `output_timestamp`, default `event_ts`) exists when
        some event of the entity is known at t, and a window w at t includes exactly the events known in
        (t - w, t]. With grain '1d' and w = 7d that is the events timestamped in [t - 7d, t): the 7 days
        ending with the row's day. No row ever includes an event known after its own timestamp.
      - Timestamps are taken as UTC: `timestamp` as is, `timestamptz` converted to UTC wall-clock time
        (featuremart._pit_utc_timestamp), so the session's time zone never matters.
      - Events with a null timestamp or a null key are ignored. Aggregations ignore null values and events
        whose `where` is false or null; a window with no such event gives null (count and count_distinct: 0).

    Arguments:
      source            a relation (ref() or source()) with one row per event.
      keys              the entity's key columns, e.g. ['customer_id'] (also a string for one key).
      timestamp         the event-time column (timestamp or timestamptz).
      aggregations      a list of mappings:
                          name      output prefix: columns are `<name>_<window>`, e.g. spend_7d
                          function  count, sum, avg, min, max, stddev (sample), count_distinct (exact),
                                    first, last (the value of the earliest / latest event in the window;
                                    events at the same instant: the smallest value for first, the largest
                                    for last)
                          column    the aggregated column ('*' for count: count events)
                          where     optional SQL condition on the source's columns, e.g. "status = 'declined'"
                          windows   optional: this aggregation's windows (default: `windows`)
      windows           the default windows: durations like '1h', '1d', '7d', '30d' (units s, m, h, d, w),
                        each a whole multiple of the grain.
      grain             '1d' (default), '1h', '1m' or 'event'.
      output_timestamp  name of the output's time column (default 'event_ts').
      incremental       default true: the model is materialized incrementally (delete+insert on the keys and
                        output_timestamp; on Spark, partitions of output_timestamp overwritten, grain '1d' or
                        '1h' only: _wf_incremental_config); a run recomputes the rows known after (latest stored row - lookback)
                        from the source's events of the longest window before that. false: a plain table.
      lookback          default '2d': how late an event may arrive and still be counted by an incremental run.
                        Later events are only counted by a full refresh (dbt build --full-refresh).

    Usage:
      {{ featuremart.window_features(
            source=ref('stg_transactions'), keys=['customer_id'], timestamp='txn_ts', windows=['1d', '7d'],
            aggregations=[
              {'name': 'spend', 'function': 'sum', 'column': 'amount', 'where': 'is_approved'},
              {'name': 'declines', 'function': 'count', 'column': '*', 'where': "status = 'declined'"},
            ]) }} -#}
{% macro window_features(source, keys, timestamp, aggregations, windows=none, grain='1d',
                         output_timestamp='event_ts', incremental=true, lookback='2d') -%}
    {{ return(adapter.dispatch('window_features', 'featuremart')(
        source, keys, timestamp, aggregations, windows, grain, output_timestamp, incremental, lookback)) }}
{%- endmacro %}


{#- Any warehouse with window functions over RANGE frames with interval offsets (PostgreSQL 11+, DuckDB, Spark).

    Plan, linear in the events (plus one sort per window frame):
      events   the source's events with their known time k and one value column per aggregation (the
               column where the aggregation's `where` holds, else null);
      tiles    one row per (keys, k): the partial aggregates of the period (count, sum, min, max, sum of
               squares, first/last candidates);
      windows  the tiles' partials combined over `range between (w - grain) preceding and current row`
               (grain 'event': w - 1 microsecond, so the window is (t - w, t]); an incremental run computes
               only the rows it writes (fm_rows: known after the cutoff), each joined with its entity's tiles
               of the longest window and combined by conditional aggregates over the same frames
               (_wf_combine): window functions would compute every re-read tile's row and discard most;
      distinct counts: each distinct (keys, value, k) visit covers [k, min(next visit, k + w)); the count at t
               is a running sum of +1/-1 at those ends (as in rolling_distinct_count): no self-join. -#}
{% macro default__window_features(source, keys, timestamp, aggregations, windows, grain, output_timestamp,
                                  incremental, lookback) -%}
    {%- set spec = featuremart._wf_spec(source, keys, timestamp, aggregations, windows, grain, output_timestamp,
                                        incremental, lookback) -%}
    {%- if spec.incremental -%}
        {{ config(materialized='incremental', on_schema_change='fail', **featuremart._wf_incremental_config(spec)) }}
    {%- endif -%}
    {%- if not execute -%}
        {{ return('select 1 as featuremart_window_features_placeholder') }}
    {%- endif -%}
    {%- set columns = featuremart._wf_check_columns(spec, source) -%}
    {%- set keys = spec['keys'] -%}
    {%- set key_list = keys | join(', ') -%}
    {%- set ts_type = columns[spec.timestamp | lower] -%}
    {%- set utc_ts = featuremart._pit_utc_timestamp(spec.timestamp, ts_type) -%}
    {#- The cutoff is read once and written into the SQL as a constant, so the source's time predicate is one the
        warehouse can push into its scan (DuckDB skips the row groups whose max time is before it: in a source
        appended in time order, all but the last weeks); none when the stored table is empty (a full build). -#}
    {%- set cutoff = featuremart._wf_cutoff(spec) if spec.incremental and is_incremental() else none -%}
    {%- set is_incremental_run = cutoff is not none -%}

with fm_source_events as (

    select
        {%- for key in keys %}
        {{ key }},
        {%- endfor %}
        {{ utc_ts }} as fm_ts
        {%- for agg in spec.aggregations %},
        case when {{ agg.condition }} then {{ agg.value }} end as fm_a{{ loop.index }}
        {%- endfor %}
    from {{ source }}
    where {{ spec.timestamp }} is not null
    {%- for key in keys %}
        and {{ key }} is not null
    {%- endfor %}
    {%- if is_incremental_run %}
        and {{ featuremart._wf_since(spec.timestamp, utc_ts,
                cutoff - modules.datetime.timedelta(seconds=spec.max_window_seconds + spec.grain_seconds)) }}
    {%- endif %}

),

fm_events as (

    select *, {{ featuremart._wf_known_time('fm_ts', spec) }} as fm_k
    from fm_source_events
    {%- if is_incremental_run %}
    {#- only the entities with a row to write: an event known after the cutoff, i.e. at or after one grain
        before it (a superset; fm_rows is exact), taken from the same scan, not a second read of the source #}
    where ({{ key_list }}) in (
        select {{ key_list }} from fm_source_events
        where fm_ts >= {{ featuremart._wf_timestamp(cutoff - modules.datetime.timedelta(seconds=spec.grain_seconds)) }}
    )
    {%- endif %}

),

fm_tiles as (

    select
        {{ key_list }},
        fm_k
        {%- for agg in spec.aggregations -%}
        {%- set a = 'fm_a' ~ loop.index -%}
        {%- if agg.function == 'count' %},
        count({{ a }}) as {{ a }}_n
        {%- elif agg.function == 'sum' %},
        sum({{ a }}) as {{ a }}_s
        {%- elif agg.function == 'avg' %},
        sum({{ a }}) as {{ a }}_s,
        count({{ a }}) as {{ a }}_n
        {%- elif agg.function in ('min', 'max') %},
        {{ agg.function }}({{ a }}) as {{ a }}_m
        {%- elif agg.function == 'stddev' %},
        count({{ a }}) as {{ a }}_n,
        sum(cast({{ a }} as {{ featuremart.type_double() }})) as {{ a }}_s,
        sum(cast({{ a }} as {{ featuremart.type_double() }}) * cast({{ a }} as {{ featuremart.type_double() }})) as {{ a }}_ss
        {%- elif agg.function in ('first', 'last') %},
        min(case when {{ a }} is not null then fm_k end) as {{ a }}_k
        {%- endif -%}
        {%- endfor %}
    from fm_events
    group by {{ key_list }}, fm_k

)
{%- for agg in spec.aggregations -%}
{%- set a = 'fm_a' ~ loop.index -%}
{%- if agg.function in ('first', 'last') %},

{{ a }}_picks as (

    {{ featuremart._wf_tile_pick(a, agg.function, keys) | indent(4) }}

)
{%- elif agg.function == 'count_distinct' %},

{{ a }}_visits as (

    select {{ key_list }}, fm_k, {{ a }} as fm_v,
        lead(fm_k) over (partition by {{ key_list }}, {{ a }} order by fm_k) as fm_next_k
    from (select distinct {{ key_list }}, fm_k, {{ a }} from fm_events where {{ a }} is not null) as fm_distinct

)
{%- for window in agg.windows %},

{{ a }}_w{{ loop.index }}_counts as (

    select {{ key_list }}, fm_at, sum(sum(fm_delta)) over (
        partition by {{ key_list }} order by fm_at rows between unbounded preceding and current row
    ) as fm_count
    from (
        select {{ key_list }}, fm_k as fm_at, 1 as fm_delta from {{ a }}_visits
        union all
        select {{ key_list }},
            case
                when fm_next_k < fm_k + {{ featuremart._wf_interval(window.seconds) }} then fm_next_k
                else fm_k + {{ featuremart._wf_interval(window.seconds) }}
            end,
            -1
        from {{ a }}_visits
        union all
        select {{ key_list }}, fm_k, 0 from fm_tiles
    ) as fm_deltas
    group by {{ key_list }}, fm_at

)
{%- endfor -%}
{%- endif -%}
{%- endfor %},

{%- if is_incremental_run %}

fm_rows as (

    select {{ key_list }}, fm_k
    from fm_tiles
    where fm_k > {{ featuremart._wf_timestamp(cutoff) }}

),
{%- endif %}

fm_windows as (

    select
        {%- for key in keys %}
        {{ 'fm_rows.' if is_incremental_run }}{{ key }},
        {%- endfor %}
        {{ 'fm_rows.' if is_incremental_run }}fm_k
        {%- for agg in spec.aggregations -%}
        {%- set a = 'fm_a' ~ loop.index -%}
        {%- for window in agg.windows -%}
        {%- set combine = featuremart._wf_combine -%}
        {%- set args = (window.seconds, spec, is_incremental_run) -%}
        {%- set out = a ~ '_w' ~ loop.index -%}
        {%- if agg.function in ('count', 'avg', 'stddev') %},
        {{ combine('sum', a ~ '_n', *args) }} as {{ out }}_n
        {%- endif -%}
        {%- if agg.function in ('sum', 'avg', 'stddev') %},
        {{ combine('sum', a ~ '_s', *args) }} as {{ out }}_s
        {%- endif -%}
        {%- if agg.function == 'stddev' %},
        {{ combine('sum', a ~ '_ss', *args) }} as {{ out }}_ss
        {%- elif agg.function in ('min', 'max') %},
        {{ combine(agg.function, a ~ '_m', *args) }} as {{ out }}_m
        {%- elif agg.function in ('first', 'last') %},
        {{ combine('min' if agg.function == 'first' else 'max', a ~ '_k', *args) }} as {{ out }}_k
        {%- endif -%}
        {%- endfor -%}
        {%- endfor %}
    {%- if is_incremental_run %}
    from fm_rows
    inner join fm_tiles
        on {% for key in keys %}fm_tiles.{{ key }} = fm_rows.{{ key }} and {% endfor -%}
        fm_tiles.fm_k <= fm_rows.fm_k
        and fm_tiles.fm_k >= fm_rows.fm_k - {{ featuremart._wf_frame_offset(spec.max_window_seconds, spec) }}
    group by {% for key in keys %}fm_rows.{{ key }}, {% endfor %}fm_rows.fm_k
    {%- else %}
    from fm_tiles
    window
    {%- for seconds in spec.frame_seconds %}
        fm_w{{ seconds }} as (
            partition by {{ key_list }} order by fm_k
            range between {{ featuremart._wf_frame_offset(seconds, spec) }} preceding and current row
        ){{ ',' if not loop.last }}
    {%- endfor %}
    {%- endif %}

)

select
    {%- for key in keys %}
    fm_windows.{{ key }},
    {%- endfor %}
    fm_windows.fm_k as {{ spec.output_timestamp }}
    {%- for agg in spec.aggregations -%}
    {%- set a = 'fm_a' ~ loop.index -%}
    {%- for window in agg.windows -%}
    {%- set out = a ~ '_w' ~ loop.index -%}
    {%- set name = agg.name ~ '_' ~ window.label %},
    {% if agg.function == 'count' -%}
        cast(coalesce({{ out }}_n, 0) as bigint) as {{ name }}
    {%- elif agg.function == 'sum' -%}
        {{ out }}_s as {{ name }}
    {%- elif agg.function == 'avg' -%}
        cast({{ out }}_s as {{ featuremart.type_double() }}) / nullif({{ out }}_n, 0) as {{ name }}
    {%- elif agg.function in ('min', 'max') -%}
        {{ out }}_m as {{ name }}
    {%- elif agg.function == 'stddev' -%}
        case when {{ out }}_n > 1 then sqrt(greatest(
            ({{ out }}_ss - {{ out }}_s * {{ out }}_s / {{ out }}_n) / ({{ out }}_n - 1), 0)) end as {{ name }}
    {%- elif agg.function in ('first', 'last') -%}
        {{ out }}_pick.fm_v as {{ name }}
    {%- elif agg.function == 'count_distinct' -%}
        cast(coalesce({{ out }}_counts.fm_count, 0) as bigint) as {{ name }}
    {%- endif -%}
    {%- endfor -%}
    {%- endfor %}
from fm_windows
{%- for agg in spec.aggregations -%}
{%- set a = 'fm_a' ~ loop.index -%}
{%- for window in agg.windows -%}
{%- set out = a ~ '_w' ~ loop.index -%}
{%- if agg.function in ('first', 'last') %}
left join {{ a }}_picks as {{ out }}_pick
    on {% for key in keys %}{{ out }}_pick.{{ key }} = fm_windows.{{ key }} and {% endfor -%}
    {{ out }}_pick.fm_k = fm_windows.{{ out }}_k
{%- elif agg.function == 'count_distinct' %}
left join {{ out }}_counts
    on {% for key in keys %}{{ out }}_counts.{{ key }} = fm_windows.{{ key }} and {% endfor -%}
    {{ out }}_counts.fm_at = fm_windows.fm_k
{%- endif -%}
{%- endfor -%}
{%- endfor %}
{%- endmacro %}

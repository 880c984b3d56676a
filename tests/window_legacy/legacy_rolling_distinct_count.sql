{#- For each (partition_by, timestamp) of `visits`, the number of distinct `counted` values visited in the
    `days` days up to and including that timestamp: e.g. distinct merchants per customer over 30 days.

    `visits` is a relation or CTE name with one row per (partition_by, counted, timestamp). Returns a select of
    (partition_by..., timestamp, distinct_count), one row per distinct (partition_by, timestamp) of `visits`.

    Window functions cannot count distinct values over a range frame on PostgreSQL, and a range self-join
    grows with the square of the activity of popular keys. Instead each visit covers the time from its
    timestamp until the next visit of the same (partition_by, counted), or until it leaves the window,
    whichever comes first; the distinct count at t is the number of visits covering t: a running sum of
    +1 / -1 events. Standard SQL, linear in the number of visits. -#}
{% macro legacy_rolling_distinct_count(visits, partition_by, counted, timestamp, days) -%}
    {%- set partition_by = [partition_by] if partition_by is string else partition_by -%}
    {{ featuremart._check_column_list('rolling_distinct_count', 'partition_by', partition_by) }}
    {{ featuremart._check_column_name('rolling_distinct_count', 'counted', counted) }}
    {{ featuremart._check_column_name('rolling_distinct_count', 'timestamp', timestamp) }}
    {%- if days is not number or days < 1 -%}
        {{ exceptions.raise_compiler_error(
            "rolling_distinct_count: `days` must be a positive number of days, got " ~ days | tojson) }}
    {%- endif -%}
    {%- set partition_columns = partition_by | join(', ') -%}

    with visit_spans as (

        select
            {{ partition_columns }},
            {{ timestamp }} as covered_from,
            lead({{ timestamp }}) over (
                partition by {{ partition_columns }}, {{ counted }} order by {{ timestamp }}
            ) as next_visit,
            {{ dbt.dateadd('day', days, timestamp) }} as window_end
        from {{ visits }}

    ),

    coverage_events as (

        select {{ partition_columns }}, covered_from as event_at, 1 as delta
        from visit_spans

        union all

        select
            {{ partition_columns }},
            case when next_visit < window_end then next_visit else window_end end as event_at,
            -1 as delta
        from visit_spans

    ),

    net_events as (

        select {{ partition_columns }}, event_at, sum(delta) as delta
        from coverage_events
        group by {{ partition_columns }}, event_at

    ),

    running_counts as (

        select
            {{ partition_columns }},
            event_at,
            sum(delta) over (
                partition by {{ partition_columns }} order by event_at
                rows between unbounded preceding and current row
            ) as distinct_count
        from net_events

    ),

    visit_times as (

        select distinct {{ partition_columns }}, {{ timestamp }}
        from {{ visits }}

    )

    select
        {%- for column in partition_by %}
        visit_times.{{ column }},
        {%- endfor %}
        visit_times.{{ timestamp }},
        running_counts.distinct_count
    from visit_times
    inner join running_counts
        on {% for column in partition_by -%}
        running_counts.{{ column }} = visit_times.{{ column }} and
        {% endfor -%}
        running_counts.event_at = visit_times.{{ timestamp }}
{%- endmacro %}

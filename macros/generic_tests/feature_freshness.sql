{#- Warns, or fails, when the newest `timestamp` of `model` is older than `warn_after` / `error_after`
    (dbt's source-freshness shape: {count: 2, period: minute|hour|day}; set one or both).

    How dbt's severities come out of one test: the query returns one row when the model is stale, whose
    `breach` is 1 past warn_after and 2 past error_after (an empty model is past both). `fail_calc` makes
    that level the test's failure count, and `warn_if: >=1`, `error_if: >=2` map it to warn and error,
    exactly like `dbt source freshness`. A model is checked against the current UTC time
    (`featuremart.utc_now()`), its timestamps being UTC without time zone. Severity set in YAML (e.g.
    `config: {severity: warn}`) still overrides.

    data_tests:
      - featuremart.feature_freshness:
          arguments:
            timestamp: event_ts
            warn_after: {count: 2, period: day}
            error_after: {count: 3, period: day} -#}
{% test feature_freshness(model, timestamp, warn_after=none, error_after=none) %}
    {{ config(fail_calc='coalesce(max(breach), 0)', warn_if='>=1', error_if='>=2') }}
    {{ featuremart._check_column_name('feature_freshness', 'timestamp', timestamp) }}
    {{ featuremart._check_freshness_threshold('feature_freshness', 'warn_after', warn_after) }}
    {{ featuremart._check_freshness_threshold('feature_freshness', 'error_after', error_after) }}
    {%- if warn_after is none and error_after is none -%}
        {{ exceptions.raise_compiler_error(
            "feature_freshness: set warn_after or error_after (or both), e.g. warn_after: {count: 2, period: day}") }}
    {%- endif %}

    with latest as (

        select max({{ timestamp }}) as latest_ts
        from {{ model }}

    ),

    checked as (

        select
            latest_ts,
            {{ featuremart.utc_now() }} as checked_at,
            case
                {%- for level, threshold in [(2, error_after), (1, warn_after)] if threshold is not none %}
                when latest_ts is null
                    or latest_ts < {{ dbt.dateadd(threshold.period, -threshold['count'], featuremart.utc_now()) }}
                    then {{ level }}
                {%- endfor %}
                else 0
            end as breach
        from latest

    )

    select * from checked
    where breach > 0
{% endtest %}

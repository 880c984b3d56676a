{#- Helpers of window_features (see window_features.sql). Every bad argument is a compiler error naming the
    model, the argument and the fix, raised before any SQL reaches the warehouse. -#}


{#- The error prefix: the macro and the model it is rendering. -#}
{% macro _wf_error(argument, message) -%}
    {%- set model_name = model.name if model is defined and model is mapping and model.name else this -%}
    {{ exceptions.raise_compiler_error(
        "window_features in model " ~ model_name ~ ": `" ~ argument ~ "` " ~ message) }}
{%- endmacro %}

{#- A duration like '30d' as seconds; units s, m, h, d, w. -#}
{% macro _wf_seconds(argument, value) -%}
    {%- set match = modules.re.fullmatch('\s*([0-9]+)\s*([smhdw])\s*', value | string) if value is string else none -%}
    {%- if not match or (match.group(1) | int) == 0 -%}
        {{ featuremart._wf_error(argument, "is " ~ value | tojson ~ ", which is not a duration; write a positive "
            ~ "whole number and a unit s, m, h, d or w, e.g. '7d' or '1h'") }}
    {%- endif -%}
    {%- set unit_seconds = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}[match.group(2)] -%}
    {{ return((match.group(1) | int) * unit_seconds) }}
{%- endmacro %}

{#- The arguments, checked and normalised: keys a list, windows as {label, seconds}, grain in seconds. -#}
{% macro _wf_spec(source, keys, timestamp, aggregations, windows, grain, output_timestamp, incremental,
                  lookback) -%}
    {%- set name_pattern = '[A-Za-z_][A-Za-z0-9_]*' -%}
    {%- set keys = [keys] if keys is string else keys -%}
    {%- if keys is not iterable or keys is mapping or keys | length == 0 -%}
        {{ featuremart._wf_error('keys', "must be a list of the entity's key columns, e.g. ['customer_id'], got "
            ~ keys | tojson) }}
    {%- endif -%}
    {%- for key in keys -%}
        {%- if key is not string or not modules.re.fullmatch(name_pattern, key) -%}
            {{ featuremart._wf_error('keys', "holds " ~ key | tojson ~ ", which is not a column name; list the "
                ~ "source's key columns, e.g. ['customer_id']") }}
        {%- endif -%}
    {%- endfor -%}
    {%- if timestamp is not string or not modules.re.fullmatch(name_pattern, timestamp) -%}
        {{ featuremart._wf_error('timestamp', "must be the source's event-time column, e.g. 'txn_ts', got "
            ~ timestamp | tojson) }}
    {%- endif -%}
    {%- if output_timestamp is not string or not modules.re.fullmatch(name_pattern, output_timestamp) -%}
        {{ featuremart._wf_error('output_timestamp', "must be a column name, e.g. 'event_ts', got "
            ~ output_timestamp | tojson) }}
    {%- endif -%}
    {%- if grain == 'event' -%}
        {%- set grain_seconds = 0 -%}
        {%- set grain_unit = none -%}
    {%- elif grain in ('1m', '1h', '1d') -%}
        {%- set grain_seconds = featuremart._wf_seconds('grain', grain) -%}
        {%- set grain_unit = {'1m': 'minute', '1h': 'hour', '1d': 'day'}[grain] -%}
    {%- else -%}
        {{ featuremart._wf_error('grain', "is " ~ grain | tojson ~ "; use '1d' (one row per entity per UTC day "
            ~ "with activity), '1h', '1m', or 'event' (one row per entity per event instant)") }}
    {%- endif -%}
    {%- set lookback_seconds = featuremart._wf_seconds('lookback', lookback) -%}
    {%- if incremental not in (true, false) -%}
        {{ featuremart._wf_error('incremental', "must be true or false, got " ~ incremental | tojson) }}
    {%- endif -%}
    {%- if aggregations is string or aggregations is mapping or aggregations is not iterable
           or aggregations | length == 0 -%}
        {{ featuremart._wf_error('aggregations', "must be a list of mappings like {'name': 'spend', 'function': "
            ~ "'sum', 'column': 'amount'}, got " ~ aggregations | tojson) }}
    {%- endif -%}
    {%- set normalised = [] -%}
    {%- set frame_seconds = [] -%}
    {%- set output_names = [output_timestamp | lower] + (keys | map('lower') | list) -%}
    {%- for agg in aggregations -%}
        {%- set where = 'aggregations[' ~ loop.index0 ~ ']' -%}
        {%- if agg is not mapping -%}
            {{ featuremart._wf_error(where, "must be a mapping like {'name': 'spend', 'function': 'sum', "
                ~ "'column': 'amount'}, got " ~ agg | tojson) }}
        {%- endif -%}
        {%- for field in agg -%}
            {%- if field not in ('name', 'function', 'column', 'where', 'windows') -%}
                {{ featuremart._wf_error(where ~ '.' ~ field, "is not an aggregation field; use name, function, "
                    ~ "column, where and windows") }}
            {%- endif -%}
        {%- endfor -%}
        {%- if agg.get('name') is not string or not modules.re.fullmatch(name_pattern, agg.get('name')) -%}
            {{ featuremart._wf_error(where ~ '.name', "must be a column-name prefix like 'spend' (outputs are "
                ~ "spend_7d, ...), got " ~ agg.get('name') | tojson) }}
        {%- endif -%}
        {%- set function = agg.get('function') -%}
        {%- if function in ('approx_count_distinct', 'count_distinct_approx') -%}
            {{ featuremart._wf_error(where ~ '.function', "is " ~ function | tojson ~ ": approximate distinct "
                ~ "counts cannot be merged across periods without sketches neither DuckDB nor PostgreSQL has; "
                ~ "use 'count_distinct' (exact, linear in the events)") }}
        {%- endif -%}
        {%- if function not in ['count', 'sum', 'avg', 'min', 'max', 'stddev', 'count_distinct', 'first', 'last'] -%}
            {{ featuremart._wf_error(where ~ '.function', "is " ~ function | tojson ~ ", which is not a "
                ~ "function; use one of count, sum, avg, min, max, stddev, count_distinct, first, last") }}
        {%- endif -%}
        {%- set column = agg.get('column') -%}
        {%- if column == '*' and function != 'count' -%}
            {{ featuremart._wf_error(where ~ '.column', "is '*', which only `count` takes; name the column "
                ~ "to " ~ function) }}
        {%- elif column != '*' and (column is not string or not modules.re.fullmatch(name_pattern, column)) -%}
            {{ featuremart._wf_error(where ~ '.column', "must name a column of the source (or '*' with "
                ~ "count), got " ~ column | tojson) }}
        {%- endif -%}
        {%- set condition = agg.get('where') -%}
        {%- if condition is not none -%}
            {{ featuremart._wf_check_condition(where ~ '.where', condition) }}
        {%- endif -%}
        {%- set agg_windows = agg.get('windows', windows) -%}
        {%- set windows_argument = where ~ '.windows' if 'windows' in agg else 'windows' -%}
        {%- if agg_windows is none or agg_windows is string or agg_windows is mapping
               or agg_windows is not iterable or agg_windows | length == 0 -%}
            {{ featuremart._wf_error(windows_argument, "must be a list of durations like ['1d', '7d'], got "
                ~ agg_windows | tojson) }}
        {%- endif -%}
        {%- set parsed_windows = [] -%}
        {%- for label in agg_windows -%}
            {%- set seconds = featuremart._wf_seconds(windows_argument, label) -%}
            {%- if seconds < grain_seconds -%}
                {{ featuremart._wf_error(windows_argument, "holds " ~ label | tojson ~ ", shorter than the grain "
                    ~ grain | tojson ~ "; use a window of at least one grain period, or a finer grain") }}
            {%- endif -%}
            {%- if grain_seconds and seconds % grain_seconds != 0 -%}
                {{ featuremart._wf_error(windows_argument, "holds " ~ label | tojson ~ ", not a whole number of "
                    ~ "grain periods (" ~ grain ~ "); use a multiple of the grain") }}
            {%- endif -%}
            {%- set output_name = agg.name ~ '_' ~ (label | trim) -%}
            {%- if output_name | lower in output_names -%}
                {{ featuremart._wf_error(where ~ '.name', "gives the column " ~ output_name ~ " twice (or a "
                    ~ "key's or the output timestamp's name); give each aggregation its own name") }}
            {%- endif -%}
            {%- do output_names.append(output_name | lower) -%}
            {%- do parsed_windows.append({'label': label | trim, 'seconds': seconds}) -%}
            {%- if seconds not in frame_seconds -%}{%- do frame_seconds.append(seconds) -%}{%- endif -%}
        {%- endfor -%}
        {%- do normalised.append({
            'name': agg.name, 'function': function, 'column': column, 'where': condition,
            'condition': '(' ~ condition ~ ')' if condition is not none else 'true',
            'value': '1' if column == '*' else column, 'windows': parsed_windows}) -%}
    {%- endfor -%}
    {{ return({
        'keys': keys, 'timestamp': timestamp, 'output_timestamp': output_timestamp, 'grain': grain,
        'grain_seconds': grain_seconds, 'grain_unit': grain_unit, 'aggregations': normalised,
        'frame_seconds': frame_seconds, 'max_window_seconds': frame_seconds | max,
        'incremental': incremental, 'lookback_seconds': lookback_seconds}) }}
{%- endmacro %}

{#- A `where` must be one SQL condition: quotes and parentheses balanced, no statement separator or comment
    (which would swallow or break the SQL around it). The warehouse's parser is asked too where it can say so
    without failing the run (_wf_parse_conditions). -#}
{% macro _wf_check_condition(argument, condition) -%}
    {%- if condition is not string or condition | trim | length == 0 -%}
        {{ featuremart._wf_error(argument, "must be a SQL condition on the source's columns, e.g. "
            ~ "\"status = 'declined'\", got " ~ condition | tojson) }}
    {%- endif -%}
    {%- set unquoted = modules.re.sub("'([^']|'')*'", " fm_quoted ", condition) -%}
    {%- set unquoted = modules.re.sub('"([^"]|"")*"', ' fm_quoted ', unquoted) -%}
    {%- set depth = namespace(value=0, negative=false) -%}
    {%- for character in unquoted -%}
        {%- if character == '(' -%}{%- set depth.value = depth.value + 1 -%}
        {%- elif character == ')' -%}{%- set depth.value = depth.value - 1 -%}
        {%- endif -%}
        {%- if depth.value < 0 -%}{%- set depth.negative = true -%}{%- endif -%}
    {%- endfor -%}
    {%- if "'" in unquoted or '"' in unquoted or depth.value != 0 or depth.negative
           or ';' in unquoted or '--' in unquoted or '/*' in unquoted -%}
        {{ featuremart._wf_error(argument, "is " ~ condition | tojson ~ ", which does not compile as one SQL "
            ~ "condition (unbalanced quotes or parentheses, or a ; or comment); write a boolean expression on "
            ~ "the source's columns, e.g. \"status = 'declined'\"") }}
    {%- endif -%}
{%- endmacro %}

{#- The source's columns (lower-case name -> data type), checked against the spec: keys, timestamp and
    aggregated columns must exist, the timestamp must be a timestamp, sum/avg/stddev need numbers, and each
    `where` must parse. Runs at execution only (it queries the warehouse). -#}
{% macro _wf_check_columns(spec, source) -%}
    {%- set found = {} -%}
    {%- set numeric = {} -%}
    {%- for column in adapter.get_columns_in_relation(source) -%}
        {%- do found.update({column.name | lower: column.data_type}) -%}
        {%- do numeric.update({column.name | lower: modules.re.search(
            'int|decimal|numeric|double|float|real|money', column.data_type | lower) is not none}) -%}
    {%- endfor -%}
    {%- if not found -%}
        {{ featuremart._wf_error('source', "is " ~ source ~ ", which has no columns or does not exist; pass "
            ~ "ref('...') or source('...', '...') of the events") }}
    {%- endif -%}
    {%- set available = found.keys() | sort | join(', ') -%}
    {%- for key in spec['keys'] -%}
        {%- if key | lower not in found -%}
            {{ featuremart._wf_error('keys', "names " ~ key ~ ", which is not a column of " ~ source
                ~ "; use one of: " ~ available) }}
        {%- endif -%}
    {%- endfor -%}
    {%- if spec.timestamp | lower not in found -%}
        {{ featuremart._wf_error('timestamp', "names " ~ spec.timestamp ~ ", which is not a column of " ~ source
            ~ "; use one of: " ~ available) }}
    {%- endif -%}
    {%- set ts_type = found[spec.timestamp | lower] | lower -%}
    {%- if 'timestamp' not in ts_type -%}
        {{ featuremart._wf_error('timestamp', "names " ~ spec.timestamp ~ ", of type " ~ ts_type ~ ", not a "
            ~ "timestamp; cast it to timestamp (UTC) or timestamptz in the source model") }}
    {%- endif -%}
    {%- set conditions = {} -%}
    {%- for agg in spec.aggregations -%}
        {%- set where = 'aggregations[' ~ loop.index0 ~ '].column' -%}
        {%- if agg.column != '*' and agg.column | lower not in found -%}
            {{ featuremart._wf_error(where, "names " ~ agg.column ~ ", which is not a column of " ~ source
                ~ "; use one of: " ~ available) }}
        {%- endif -%}
        {%- if agg.function in ('sum', 'avg', 'stddev') and not numeric[agg.column | lower] -%}
            {{ featuremart._wf_error(where, "names " ~ agg.column ~ ", of type " ~ found[agg.column | lower]
                ~ ", which " ~ agg.function ~ " cannot add up; use a numeric column, or count/min/max/"
                ~ "count_distinct/first/last") }}
        {%- endif -%}
        {%- if agg.where is not none and agg.where not in conditions -%}
            {%- do conditions.update({agg.where: 'aggregations[' ~ loop.index0 ~ '].where'}) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if conditions -%}
        {{ featuremart._wf_parse_conditions(conditions) }}
    {%- endif -%}
    {{ return(found) }}
{%- endmacro %}

{#- Ask the warehouse's parser whether `select ... where <condition>` parses, without running it, for each
    distinct condition ({condition: argument}) in one query. Only DuckDB can answer without raising
    (json_serialize_sql returns the error as data); elsewhere the structural check of _wf_check_condition is
    all. -#}
{% macro _wf_parse_conditions(conditions) -%}
    {{ return(adapter.dispatch('_wf_parse_conditions', 'featuremart')(conditions)) }}
{%- endmacro %}

{% macro default___wf_parse_conditions(conditions) -%}
{%- endmacro %}

{#- https://duckdb.org/docs/stable/data/json/sql_to_and_from_json: json_serialize_sql parses a statement and
    returns {"error": true, "error_message": ...} instead of raising. -#}
{% macro duckdb___wf_parse_conditions(conditions) -%}
    {%- set probes = [] -%}
    {%- for condition in conditions -%}
        {%- set statement = 'select 1 from t where (' ~ condition ~ ')' -%}
        {%- do probes.append("json_extract_string(json_serialize_sql('" ~ statement.replace("'", "''")
                             ~ "'), '$.error_message')") -%}
    {%- endfor -%}
    {%- set result = run_query('select ' ~ probes | join(', ')) -%}
    {%- for condition, argument in conditions.items() -%}
        {%- set message = result.columns[loop.index0].values()[0] if result else none -%}
        {%- if message -%}
            {{ featuremart._wf_error(argument, "is " ~ condition | tojson ~ ", which does not compile: " ~ message
                ~ "; write a boolean expression on the source's columns, e.g. \"status = 'declined'\"") }}
        {%- endif -%}
    {%- endfor -%}
{%- endmacro %}

{#- An incremental run's cutoff: (latest stored output time - lookback) as a UTC datetime, read from the model's
    table; none when the table has no rows. -#}
{% macro _wf_cutoff(spec) -%}
    {%- set result = run_query('select max(' ~ spec.output_timestamp ~ ') from ' ~ this) -%}
    {%- set latest = result.columns[0].values()[0] if result else none -%}
    {{ return(none if latest is none else latest - modules.datetime.timedelta(seconds=spec.lookback_seconds)) }}
{%- endmacro %}

{#- The incremental model's config: how a run replaces the rows known after its cutoff. By default delete+insert
    on the keys and the output time. -#}
{% macro _wf_incremental_config(spec) -%}
    {{ return(adapter.dispatch('_wf_incremental_config', 'featuremart')(spec)) }}
{%- endmacro %}

{% macro default___wf_incremental_config(spec) -%}
    {{ return({'incremental_strategy': 'delete+insert', 'unique_key': spec['keys'] + [spec.output_timestamp]}) }}
{%- endmacro %}

{#- DuckDB: delete+insert, and a predicate on the stored table's scan, so the delete's hash join probes only the
    stored rows after the cutoff, not every row of the history (measured in bench/README.md, window features).
    config() is read when dbt parses the model, before the cutoff is known, so the predicate computes it from the
    table the way _wf_cutoff does. DBT_INCREMENTAL_TARGET is the alias dbt-duckdb's delete+insert gives the
    target (duckdb__get_delete_insert_merge_sql, https://github.com/duckdb/dbt-duckdb). -#}
{% macro duckdb___wf_incremental_config(spec) -%}
    {%- set column = spec.output_timestamp -%}
    {%- set config = featuremart.default___wf_incremental_config(spec) -%}
    {%- do config.update({'incremental_predicates': [
        'DBT_INCREMENTAL_TARGET.' ~ column ~ ' > (select max(' ~ column ~ ') from ' ~ this ~ ') - '
        ~ featuremart._wf_interval(spec.lookback_seconds)]}) -%}
    {{ return(config) }}
{%- endmacro %}

{#- Spark: dbt-spark has no delete+insert (https://docs.getdbt.com/reference/resource-configs/spark-configs:
    append, insert_overwrite, and merge on Delta, Iceberg or Hudi only). The table is partitioned by the output
    time and a run overwrites the partitions it writes (insert_overwrite; dbt-spark sets
    spark.sql.sources.partitionOverwriteMode to dynamic). That is delete+insert here: a run writes every row known
    after its cutoff (an entity has a row at t only if it has an event known at t, and fm_rows keeps them all),
    so each partition it writes is whole. One partition per output time is one a day or an hour per year of
    history; with grain '1m' or 'event' it would be one per minute or per event instant, so those are refused. -#}
{% macro spark___wf_incremental_config(spec) -%}
    {%- if spec.grain_seconds < 3600 -%}
        {{ featuremart._wf_error('incremental', "is true (the default) with grain " ~ spec.grain | tojson
            ~ ", but on Spark an incremental window_features table is partitioned by its `"
            ~ spec.output_timestamp ~ "` (dbt-spark has no delete+insert; it overwrites partitions), which would "
            ~ "make one partition per " ~ ('minute' if spec.grain_seconds else 'event instant')
            ~ "; use grain='1h' or '1d', or pass incremental=false: a table rebuilt by each run") }}
    {%- endif -%}
    {{ return({'incremental_strategy': 'insert_overwrite', 'partition_by': [spec.output_timestamp]}) }}
{%- endmacro %}

{#- A UTC instant (a naive datetime) as a literal: a timestamp without time zone, or (zoned) the instant as a
    timestamp with time zone, to compare with a column of that type. -#}
{% macro _wf_timestamp(instant, zoned=false) -%}
    {{ return(adapter.dispatch('_wf_timestamp', 'featuremart')(instant, zoned)) }}
{%- endmacro %}

{% macro default___wf_timestamp(instant, zoned) -%}
    {%- if zoned -%}
        cast('{{ instant.isoformat(sep=' ') }}+00:00' as timestamp with time zone)
    {%- else -%}
        cast('{{ instant.isoformat(sep=' ') }}' as {{ dbt.type_timestamp() }})
    {%- endif -%}
{%- endmacro %}

{#- Spark: `timestamp_ntz` (wall-clock UTC, as the event times are), or `timestamp`, Spark's instant: a string
    with its offset casts to that instant whatever the session's zone (a `timestamp` literal without one would be
    read in the session's zone). https://spark.apache.org/docs/latest/sql-ref-datatypes.html -#}
{% macro spark___wf_timestamp(instant, zoned) -%}
    cast('{{ instant.isoformat(sep=' ') }}{{ '+00:00' if zoned }}' as {{ 'timestamp' if zoned else 'timestamp_ntz' }})
{%- endmacro %}

{#- The source's events at or after the UTC instant `since`, as a predicate on the bare column: a timestamp
    column (already UTC, `utc_ts` is the column itself) against a timestamp, a timestamptz column against the same
    instant in UTC, never a converted expression, so the warehouse can use the column's min/max per row group. -#}
{% macro _wf_since(column, utc_ts, since) -%}
    {%- if utc_ts == column -%}
        {{ column }} >= {{ featuremart._wf_timestamp(since) }}
    {%- else -%}
        {{ column }} >= {{ featuremart._wf_timestamp(since, zoned=true) }}
    {%- endif -%}
{%- endmacro %}

{#- An interval literal of whole seconds (both warehouses read `interval 'N seconds'`). -#}
{% macro _wf_interval(seconds) -%}
    interval '{{ seconds | int }} seconds'
{%- endmacro %}

{#- The RANGE frame's offset for a window of `seconds`: tiles known in (t - w, t]. Periods end on multiples of
    the grain, so that is (w - grain) preceding; grain 'event' has any instant, so w less one microsecond (the
    timestamps' resolution on DuckDB and PostgreSQL). -#}
{% macro _wf_frame_offset(seconds, spec) -%}
    {%- if spec.grain_seconds -%}
        interval '{{ seconds - spec.grain_seconds }} seconds'
    {%- else -%}
        interval '{{ seconds * 1000000 - 1 }} microseconds'
    {%- endif -%}
{%- endmacro %}

{#- One tile partial combined over the window of `seconds` ending at a row: over the RANGE frame `fm_w<seconds>`
    (a full build: every row), or, in an incremental run, as a conditional aggregate over the tiles joined to
    the row (fm_rows x fm_tiles, grouped by row), which computes only the rows being written. Both read the
    frame from _wf_frame_offset, so both include exactly the tiles known in (t - w, t]. -#}
{% macro _wf_combine(function, column, seconds, spec, joined) -%}
    {%- if joined -%}
        {{ function }}(case when fm_tiles.fm_k >= fm_rows.fm_k - {{ featuremart._wf_frame_offset(seconds, spec) }}
            then fm_tiles.{{ column }} end)
    {%- else -%}
        {{ function }}({{ column }}) over fm_w{{ seconds }}
    {%- endif -%}
{%- endmacro %}

{#- When an event at `ts` (UTC timestamp) becomes known: the end of its grain period, or itself. -#}
{% macro _wf_known_time(ts, spec) -%}
    {%- if spec.grain_seconds -%}
        {{ featuremart._wf_truncate(spec.grain_unit, ts) }} + {{ featuremart._wf_interval(spec.grain_seconds) }}
    {%- else -%}
        {{ ts }}
    {%- endif -%}
{%- endmacro %}

{#- The UTC timestamp `ts` truncated to its minute, hour or day. -#}
{% macro _wf_truncate(unit, ts) -%}
    {{ return(adapter.dispatch('_wf_truncate', 'featuremart')(unit, ts)) }}
{%- endmacro %}

{% macro default___wf_truncate(unit, ts) -%}
    {{ return(dbt.date_trunc(unit, ts)) }}
{%- endmacro %}

{#- Spark's date_trunc takes a `timestamp`, an instant: a timestamp_ntz (the UTC wall-clock time here) is read in
    the session's time zone, truncated there and returned as an instant, so with any zone but UTC the day moved,
    and a time in the zone's DST gap moved an hour. make_timestamp_ntz of the wall-clock fields depends on no zone
    (https://spark.apache.org/docs/latest/api/sql/index.html#make_timestamp_ntz). -#}
{% macro spark___wf_truncate(unit, ts) -%}
    make_timestamp_ntz(year({{ ts }}), month({{ ts }}), day({{ ts }}),
        {{- ' hour(' ~ ts ~ ')' if unit in ('hour', 'minute') else ' 0' }},
        {{- ' minute(' ~ ts ~ ')' if unit == 'minute' else ' 0' }}, 0)
{%- endmacro %}

{#- Per (keys, known time), the value first/last picks in that period: among the earliest (latest) events,
    the smallest (largest) value. -#}
{% macro _wf_tile_pick(value, function, keys) -%}
    {{ return(adapter.dispatch('_wf_tile_pick', 'featuremart')(value, function, keys)) }}
{%- endmacro %}

{% macro default___wf_tile_pick(value, function, keys) -%}
    {%- set direction = 'asc' if function == 'first' else 'desc' -%}
    select {{ keys | join(', ') }}, fm_k, fm_v
    from (
        select {{ keys | join(', ') }}, fm_k, {{ value }} as fm_v,
            row_number() over (
                partition by {{ keys | join(', ') }}, fm_k order by fm_ts {{ direction }}, {{ value }} {{ direction }}
            ) as fm_rank
        from fm_events
        where {{ value }} is not null
    ) as fm_ranked
    where fm_rank = 1
{%- endmacro %}

{#- DuckDB's arg_min/arg_max (https://duckdb.org/docs/stable/sql/functions/aggregates#arg_minarg-val) pick in
    one hash aggregation instead of a sort per period; a struct orders by time, then value. -#}
{% macro duckdb___wf_tile_pick(value, function, keys) -%}
    {%- set pick = 'arg_min' if function == 'first' else 'arg_max' -%}
    select {{ keys | join(', ') }}, fm_k, {{ pick }}({{ value }}, {'t': fm_ts, 'v': {{ value }}}) as fm_v
    from fm_events
    where {{ value }} is not null
    group by {{ keys | join(', ') }}, fm_k
{%- endmacro %}

{#-
  The package's on-run-end hook (wired in this project's dbt_project.yml, so every project that installs the
  package runs it with no line of its own): keep each node's latest dbt result in the warehouse, in
  `<target schema>.featuremart_build_results`, so that `featuremart sync` knows what was built and tested
  whatever dbt commands ran since and wherever it runs (a fresh checkout, after `dbt clean`, another machine).

  One row per node (the latest non-skipped result replaces the previous one): the table stays as small as the
  project. Only adapter-agnostic dbt macros are used (create_schema, statement, cross-db types, commit).
-#}
{% macro record_build_results(results) %}
  {{ return(adapter.dispatch('record_build_results', 'featuremart')(results)) }}
{% endmacro %}

{% macro default__record_build_results(results) %}
  {%- if not execute -%}
    {{ return('') }}
  {%- endif -%}
  {%- set rows = featuremart._build_result_rows(results) -%}
  {%- if rows | length == 0 -%}
    {{ return('') }}
  {%- endif -%}
  {%- set relation = featuremart._build_results_relation() -%}
  {%- do adapter.create_schema(relation) -%}
  {%- do adapter.dispatch('_write_build_results', 'featuremart')(relation, rows) -%}
  {{ return('') }}
{% endmacro %}

{#- Replace the record's rows of these nodes: delete them, insert the new ones, 500 at a time. -#}
{% macro default___write_build_results(relation, rows) %}
  {%- call statement('featuremart_build_results_create', auto_begin=True) -%}
    create table if not exists {{ relation }} ({{ featuremart._build_results_columns() }})
  {%- endcall -%}
  {%- for batch in rows | batch(500) -%}
    {%- call statement('featuremart_build_results_delete', auto_begin=True) -%}
      delete from {{ relation }} where unique_id in (
        {%- for row in batch %}{{ featuremart._build_results_literal(row.unique_id) }}{{ ", " if not loop.last }}{% endfor -%}
      )
    {%- endcall -%}
    {%- call statement('featuremart_build_results_insert', auto_begin=True) -%}
      insert into {{ relation }}
        (unique_id, resource_type, status, message, checksum, completed_at, invocation_id, command)
      {{ featuremart._build_results_values(batch) }}
    {%- endcall -%}
  {%- endfor -%}
  {%- do adapter.commit() -%}
{% endmacro %}

{#- Spark: a plain (parquet) table has no `delete` (only Delta and other v2 tables do,
    https://spark.apache.org/docs/latest/sql-ref-syntax-dml.html), and `insert overwrite` may not read the table it
    overwrites. So the kept rows and the new ones are written to a sibling table, which then replaces the record
    (drop, rename): a reader between the two statements finds no record and withholds every view, never a wrong one. -#}
{% macro spark___write_build_results(relation, rows) %}
  {%- set staged = relation.incorporate(path={'identifier': relation.identifier ~ '__next'}) -%}
  {%- call statement('featuremart_build_results_create') -%}
    create table if not exists {{ relation }} ({{ featuremart._build_results_columns() }}) using parquet
  {%- endcall -%}
  {%- call statement('featuremart_build_results_drop_next') -%}drop table if exists {{ staged }}{%- endcall -%}
  {%- call statement('featuremart_build_results_stage') -%}
    create table {{ staged }} using parquet as
    select * from {{ relation }} where unique_id not in (
      {%- for row in rows %}{{ featuremart._build_results_literal(row.unique_id) }}{{ ", " if not loop.last }}{% endfor -%}
    )
    union all
    select * from ({{ featuremart._build_results_values(rows) }})
  {%- endcall -%}
  {%- call statement('featuremart_build_results_drop') -%}drop table {{ relation }}{%- endcall -%}
  {%- call statement('featuremart_build_results_rename') -%}alter table {{ staged }} rename to {{ relation }}{%- endcall -%}
{% endmacro %}

{#- The record's columns and types. -#}
{% macro _build_results_columns() -%}
  unique_id {{ dbt.type_string() }}, resource_type {{ dbt.type_string() }}, status {{ dbt.type_string() }},
  message {{ dbt.type_string() }}, checksum {{ dbt.type_string() }}, completed_at {{ dbt.type_timestamp() }},
  invocation_id {{ dbt.type_string() }}, command {{ dbt.type_string() }}
{%- endmacro %}

{#- `values` rows of the record, in the order of its columns. -#}
{% macro _build_results_values(rows) -%}
      values
      {%- for row in rows %}
        ({{ featuremart._build_results_literal(row.unique_id) }}, {{ featuremart._build_results_literal(row.resource_type) }},
         {{ featuremart._build_results_literal(row.status) }}, {{ featuremart._build_results_literal(row.message) }},
         {{ featuremart._build_results_literal(row.checksum) }},
         cast({{ featuremart._build_results_literal(row.completed_at) }} as {{ dbt.type_timestamp() }}),
         {{ featuremart._build_results_literal(invocation_id) }}, {{ featuremart._build_results_literal(row.command) }}){{ "," if not loop.last }}
      {%- endfor %}
{%- endmacro %}

{#- Where the results live: the target's own schema, named the same in every project (Spark has no database). -#}
{% macro _build_results_relation() %}
  {{ return(api.Relation.create(database=target.database if target.database is defined else none, schema=target.schema,
                                identifier='featuremart_build_results')) }}
{% endmacro %}

{#- A quoted string literal, or null. -#}
{% macro _build_results_literal(value) -%}
  {%- if value is none -%}null{%- else -%}'{{ dbt.escape_single_quotes(value | string) }}'{%- endif -%}
{%- endmacro %}

{#- The rows to record: executed models, seeds, snapshots and tests (a skipped node did not run, so its previous
    result stands), each with its node's checksum and when it completed, in UTC. A model built with `--empty`
    holds no rows: it is recorded as `empty`, which vouches for nothing. -#}
{% macro _build_result_rows(results) %}
  {%- set rows = [] -%}
  {%- set command = invocation_args_dict.get('which') or '' -%}
  {%- set empty = invocation_args_dict.get('empty') -%}
  {%- for result in results -%}
    {%- set node = result.node -%}
    {%- set status = result.status | string -%}
    {%- set status = 'empty' if empty and status == 'success' and node.resource_type == 'model' else status -%}
    {%- if node.resource_type in ('model', 'seed', 'snapshot', 'test', 'unit_test') and status != 'skipped' -%}
      {%- set completed = [] -%}
      {%- for timing in result.timing if timing.completed_at is not none -%}
        {%- do completed.append(timing.completed_at) -%}
      {%- endfor -%}
      {%- set when = completed[-1] if completed else modules.datetime.datetime.now(modules.pytz.utc) -%}
      {%- if when.tzinfo is not none -%}
        {%- set when = when.astimezone(modules.pytz.utc).replace(tzinfo=none) -%}
      {%- endif -%}
      {%- set message = result.message -%}
      {%- do rows.append({
          'unique_id': node.unique_id,
          'resource_type': node.resource_type | string,
          'status': status,
          'message': (message | string)[:2000] if message is not none else none,
          'checksum': (node.checksum.checksum or none) if node.checksum is defined and node.checksum else none,
          'completed_at': when.strftime('%Y-%m-%d %H:%M:%S.%f'),
          'command': command,
      }) -%}
    {%- endif -%}
  {%- endfor -%}
  {{ return(rows) }}
{% endmacro %}

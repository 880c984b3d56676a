{#- The rows of `model` whose `columns` are not unique: one row per colliding combination, with n_rows. -#}
{% macro _key_collisions_sql(model, columns) -%}
    select
        {% for column in columns -%}
        {{ column }},
        {% endfor -%}
        count(*) as n_rows
    from {{ model }}
    group by {{ columns | join(', ') }}
    having count(*) > 1
{%- endmacro %}

{#- Logs up to `limit` colliding combinations, so that a failing `dbt build` says which keys collide:
      featuremart: customer_spend has 3 duplicate (customer_id, event_ts): customer_id=C1 event_ts=... (2 rows), ...
    Runs a query, so it does nothing at parse time, and nothing when the model has not been built. -#}
{% macro _log_key_collisions(model, columns, limit=5) -%}
    {%- if not execute -%}
        {{ return('') }}
    {%- endif -%}
    {%- set relation = load_relation(model) -%}
    {%- if relation is none -%}
        {{ return('') }}
    {%- endif -%}
    {%- set query -%}
        with collisions as (
            {{ featuremart._key_collisions_sql(relation, columns) }}
        )
        select *, count(*) over () as n_collisions
        from collisions
        order by n_rows desc, {{ columns | join(', ') }}
        limit {{ limit }}
    {%- endset -%}
    {%- set result = run_query(query) -%}
    {%- if result.rows | length == 0 -%}
        {{ return('') }}
    {%- endif -%}
    {%- set samples = [] -%}
    {%- for row in result.rows -%}
        {%- set values = [] -%}
        {%- for column in columns -%}
            {%- do values.append(column ~ '=' ~ row[loop.index0]) -%}
        {%- endfor -%}
        {%- do samples.append(values | join(' ') ~ ' (' ~ row['n_rows'] ~ ' rows)') -%}
    {%- endfor -%}
    {%- set total = result.rows[0]['n_collisions'] -%}
    {%- do log(
        'featuremart: ' ~ relation.identifier ~ ' has ' ~ total ~ ' duplicate (' ~ columns | join(', ') ~ '): '
        ~ samples | join(', ') ~ (', ...' if total > samples | length else ''),
        info=True) -%}
{%- endmacro %}

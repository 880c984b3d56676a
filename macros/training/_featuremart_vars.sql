{#- The project-wide facts the user writes once, in dbt_project.yml vars (dbt cannot read features.yml, and
    featuremart's Python reads the same vars from dbt's rendered project):

      vars:
        featuremart_entities:
          customer:
            description: A card holder.
            join_keys: {customer_id: string}
        featuremart_default_ttl: 30d

    Each macro raises a compiler error naming `where`, the var and what to write when it is missing or has
    another shape (such as the old `customer: [customer_id]`). -#}

{#- Entity name -> its join key columns, in the order written. -#}
{% macro _featuremart_entities(where) -%}
    {%- set example = "vars: {featuremart_entities: {customer: {description: A card holder., join_keys: {customer_id: string}}}}" -%}
    {%- set entities = var('featuremart_entities', none) -%}
    {%- if entities is none -%}
        {{ exceptions.raise_compiler_error(where ~ ": the var featuremart_entities is not set; declare your entities once, in dbt_project.yml:  " ~ example) }}
    {%- endif -%}
    {%- if entities is not mapping or entities | length == 0 -%}
        {{ exceptions.raise_compiler_error(where ~ ": the var featuremart_entities must map each entity to {description, join_keys: {column: type}}, got " ~ entities | string ~ "; write in dbt_project.yml:  " ~ example) }}
    {%- endif -%}
    {%- set keys_of = {} -%}
    {%- for name, spec in entities.items() -%}
        {%- set join_keys = spec.get('join_keys') if spec is mapping else none -%}
        {%- if join_keys is not mapping or join_keys | length == 0 -%}
            {{ exceptions.raise_compiler_error(where ~ ": the var featuremart_entities." ~ name ~ " must be {description, join_keys: {column: type}} with at least one join key (type string or int), got " ~ spec | string ~ (" (the old list shape: write join_keys: {" ~ spec | join(': string, ') ~ ": string} instead)" if spec is iterable and spec is not string and spec is not mapping else "")) }}
        {%- endif -%}
        {%- for column, key_type in join_keys.items() if key_type not in ('string', 'int') -%}
            {{ exceptions.raise_compiler_error(where ~ ": the var featuremart_entities." ~ name ~ ".join_keys." ~ column ~ " has type " ~ key_type | string ~ "; write string or int") }}
        {%- endfor -%}
        {%- do keys_of.update({name: join_keys.keys() | list}) -%}
    {%- endfor -%}
    {{ return(keys_of) }}
{%- endmacro %}


{#- The ttl of a feature view whose metadata sets none. -#}
{% macro _featuremart_default_ttl(where) -%}
    {%- set ttl = var('featuremart_default_ttl', none) -%}
    {%- if ttl is none -%}
        {{ exceptions.raise_compiler_error(where ~ ": a feature view sets no ttl and the var featuremart_default_ttl is not set; add to dbt_project.yml  vars: {featuremart_default_ttl: 30d}") }}
    {%- endif -%}
    {{ return(ttl) }}
{%- endmacro %}

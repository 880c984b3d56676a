{#- Checks the arguments of a point-in-time join and resolves everything its dialect versions render:
      {spine_from, spine_columns: [{name, quoted, data_type}], timestamp_sql, views: [{index, name, relation,
       key_columns, timestamp, timestamp_sql, ttl_seconds, unique, features: [{column, output}]}]}
    timestamp_sql (spine and views) is the timestamp as a UTC `timestamp`, whatever its type and the session's
    TimeZone (see _pit_utc_timestamp); a view's timestamp type is `timestamp_type`, or read from its relation.
    Returns none at parse time when the spine's columns must be read from the warehouse (nothing to render
    yet). Errors name `macro_name`, the argument and the value it got. -#}
{% macro _pit_prepare(macro_name, spine, spine_timestamp, views, spine_columns=none) -%}
    {%- if spine is string -%}
        {%- if spine | trim | length == 0 -%}
            {{ exceptions.raise_compiler_error(macro_name ~ ": `spine` must be a relation or a SQL query, got an empty string") }}
        {%- endif -%}
        {%- set spine_from = '(\n' ~ spine ~ '\n)' -%}
    {%- elif spine is not none and spine.identifier is defined and spine.render is defined -%}
        {%- set spine_from = spine | string -%}
    {%- else -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": `spine` must be a relation (ref, source) or a SQL query string, got " ~ spine | string) }}
    {%- endif -%}
    {{ featuremart._check_column_name(macro_name, 'spine_timestamp', spine_timestamp) }}
    {%- if views is string or views is mapping or views is not iterable or views | length == 0 -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": `views` must be a non-empty list of feature views ({relation, name, keys, timestamp, ttl_seconds, features}), got " ~ views | string) }}
    {%- endif -%}

    {#- The spine's columns, in order, with their types. -#}
    {%- set columns = [] -%}
    {%- if spine_columns is not none -%}
        {%- if spine_columns is mapping -%}
            {%- for name, data_type in spine_columns.items() -%}
                {%- do columns.append({'name': name, 'data_type': data_type}) -%}
            {%- endfor -%}
        {%- elif spine_columns is string or spine_columns is not iterable -%}
            {{ exceptions.raise_compiler_error(macro_name ~ ": `spine_columns` must be a list of column names or a mapping name -> data type, got " ~ spine_columns | string) }}
        {%- else -%}
            {%- for name in spine_columns -%}
                {%- do columns.append({'name': name, 'data_type': none}) -%}
            {%- endfor -%}
        {%- endif -%}
    {%- elif not execute -%}
        {{ return(none) }}
    {%- elif spine is string -%}
        {%- for column in get_column_schema_from_query(spine) -%}
            {%- do columns.append({'name': column.name, 'data_type': column.dtype}) -%}
        {%- endfor -%}
    {%- else -%}
        {%- for column in adapter.get_columns_in_relation(spine) -%}
            {%- do columns.append({'name': column.name, 'data_type': column.dtype}) -%}
        {%- endfor -%}
    {%- endif -%}
    {%- set spine_names = {} -%}
    {%- for column in columns -%}
        {{ featuremart._check_column_name(macro_name, 'spine_columns', column.name) }}
        {%- if (column.name | lower).startswith('_fm_') -%}
            {{ exceptions.raise_compiler_error(macro_name ~ ": spine column " ~ column.name ~ " uses the prefix _fm_, which the join reserves for its own columns: rename it") }}
        {%- endif -%}
        {%- do column.update({'quoted': adapter.quote(column.name)}) -%}
        {%- do spine_names.update({column.name | lower: column}) -%}
    {%- endfor -%}
    {%- if spine_timestamp | lower not in spine_names -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": `spine_timestamp` " ~ spine_timestamp ~ " is not a column of the spine (columns: " ~ columns | map(attribute='name') | join(', ') ~ ")") }}
    {%- endif -%}
    {%- set ts_column = spine_names[spine_timestamp | lower] -%}
    {%- set timestamp_sql = featuremart._pit_utc_timestamp('_fm_source.' ~ ts_column.quoted, ts_column.data_type) -%}

    {#- The views, checked. -#}
    {%- set resolved = [] -%}
    {%- set view_names = [] -%}
    {%- for view in views -%}
        {%- set where = macro_name ~ ": views[" ~ loop.index0 ~ "]" -%}
        {%- if view is not mapping -%}
            {{ exceptions.raise_compiler_error(where ~ " must be a mapping {relation, name, keys, timestamp, ttl_seconds, features}, got " ~ view | string) }}
        {%- endif -%}
        {%- for field in ['relation', 'name', 'keys', 'timestamp', 'features'] -%}
            {%- if view.get(field) is none -%}
                {{ exceptions.raise_compiler_error(where ~ " has no `" ~ field ~ "` (got the keys " ~ view.keys() | list | join(', ') ~ ")") }}
            {%- endif -%}
        {%- endfor -%}
        {%- set name = view['name'] -%}
        {{ featuremart._check_column_name(where, 'name', name) }}
        {%- if name | lower in view_names -%}
            {{ exceptions.raise_compiler_error(where ~ ": the view " ~ name ~ " appears twice: list each view once, with all its features") }}
        {%- endif -%}
        {%- do view_names.append(name | lower) -%}
        {{ featuremart._check_column_list(where ~ " (" ~ name ~ ")", 'keys', view['keys']) }}
        {{ featuremart._check_column_name(where ~ " (" ~ name ~ ")", 'timestamp', view['timestamp']) }}
        {{ featuremart._check_column_list(where ~ " (" ~ name ~ ")", 'features', view['features']) }}
        {%- for key in view['keys'] -%}
            {%- if key | lower not in spine_names -%}
                {{ exceptions.raise_compiler_error(where ~ " (" ~ name ~ "): key " ~ key ~ " is not a column of the spine (columns: " ~ columns | map(attribute='name') | join(', ') ~ ")") }}
            {%- endif -%}
        {%- endfor -%}
        {%- set ttl = view.get('ttl_seconds') -%}
        {%- if ttl is not none and (ttl is sameas true or ttl is sameas false or ttl is not number or ttl != ttl | int or ttl < 0) -%}
            {{ exceptions.raise_compiler_error(where ~ " (" ~ name ~ "): `ttl_seconds` must be a whole number of seconds >= 0, or none for no ttl, got " ~ ttl | string) }}
        {%- endif -%}
        {%- set relation = view['relation'] -%}
        {%- set timestamp_type = view.get('timestamp_type') -%}
        {%- if timestamp_type is none and execute -%}
            {%- set timestamp_type = featuremart._pit_column_type(where ~ " (" ~ name ~ ")", relation, view['timestamp']) -%}
        {%- endif -%}
        {%- set seen = [] -%}
        {%- for feature in view['features'] -%}
            {%- if feature | lower in seen -%}
                {{ exceptions.raise_compiler_error(where ~ " (" ~ name ~ "): the feature " ~ feature ~ " is listed twice") }}
            {%- endif -%}
            {%- if feature | lower in (view['keys'] | map('lower') | list) or feature | lower == view['timestamp'] | lower -%}
                {{ exceptions.raise_compiler_error(where ~ " (" ~ name ~ "): " ~ feature ~ " is a key or the timestamp of the view, not a feature") }}
            {%- endif -%}
            {%- do seen.append(feature | lower) -%}
        {%- endfor -%}
        {%- do resolved.append({
            'index': loop.index0,
            'name': name,
            'relation': relation if relation is string else relation | string,
            'key_columns': view['keys'],
            'timestamp': view['timestamp'],
            'timestamp_sql': featuremart._pit_utc_timestamp(view['timestamp'], timestamp_type),
            'ttl_seconds': ttl,
            'unique': view.get('unique', false) is sameas true,
            'features': view['features'],
        }) -%}
    {%- endfor -%}

    {#- Output names: the spine's other columns never rename a feature (online reads have no spine), so a spine
        column named like an output column is an error. -#}
    {%- set named = featuremart._pit_output_names(resolved) -%}
    {%- if named.error is not none -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": " ~ named.error) }}
    {%- endif -%}
    {%- for view in resolved -%}
        {%- set outputs = named.names[loop.index0] -%}
        {%- set features = [] -%}
        {%- for feature in view.features -%}
            {%- set output = outputs[loop.index0] -%}
            {%- if output | lower in spine_names -%}
                {{ exceptions.raise_compiler_error(macro_name ~ ": the spine column " ~ spine_names[output | lower].name ~ " has the name of the output column of feature " ~ view.name ~ "." ~ feature ~ " (a feature is named the same in training sets and online): rename the spine column") }}
            {%- endif -%}
            {%- do features.append({'column': feature, 'output': output}) -%}
        {%- endfor -%}
        {%- do view.update({'features': features}) -%}
    {%- endfor -%}
    {{ return({
        'spine_from': spine_from,
        'spine_columns': columns,
        'timestamp_sql': timestamp_sql,
        'views': resolved,
    }) }}
{%- endmacro %}


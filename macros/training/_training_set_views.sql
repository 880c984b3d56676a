{#- The `views` argument of point_in_time_join for a feature service or a list of `view.feature` strings,
    resolved from the graph. At parse time (not execute) it only records the refs it can know (those of a
    feature list) and returns none. Errors name `macro_name` and the value at fault. -#}
{% macro _training_set_views(macro_name, service, features) -%}
    {%- if (service is none) == (features is none) -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": give either `service` (a feature service) or `features` (a list of view.feature), not both or neither; got service=" ~ service | string ~ ", features=" ~ features | string) }}
    {%- endif -%}
    {%- if features is not none and (features is string or features is mapping or features is not iterable or features | length == 0) -%}
        {{ exceptions.raise_compiler_error(macro_name ~ ": `features` must be a non-empty list of 'view.feature' or 'view.*' strings, got " ~ features | string) }}
    {%- endif -%}
    {%- if not execute -%}
        {%- for item in features or [] -%}
            {%- do ref((item | string).split('.')[0]) -%}
        {%- endfor -%}
        {{ return(none) }}
    {%- endif -%}

    {#- The feature references: the list, or the service's. -#}
    {%- if service is not none -%}
        {%- set where = macro_name ~ ": feature service " ~ service -%}
        {%- set found = [] -%}
        {%- for exposure in graph.exposures.values() if exposure.name == service -%}
            {%- do found.append(exposure) -%}
        {%- endfor -%}
        {%- if found | length == 0 -%}
            {%- set services = [] -%}
            {%- for exposure in graph.exposures.values() if exposure.type == 'ml' -%}
                {%- do services.append(exposure.name) -%}
            {%- endfor -%}
            {{ exceptions.raise_compiler_error(macro_name ~ ": no feature service " ~ service ~ " (an exposure of type ml); services: " ~ (services | sort | join(', ') or 'none')) }}
        {%- endif -%}
        {%- if found[0].type != 'ml' -%}
            {{ exceptions.raise_compiler_error(where ~ " is an exposure of type " ~ found[0].type ~ ", not ml") }}
        {%- endif -%}
        {%- set refs = featuremart._featuremart_meta(found[0]).get('features') -%}
        {%- if refs is none or refs is string or refs is mapping or refs | length == 0 -%}
            {{ exceptions.raise_compiler_error(where ~ " lists no features under config.meta.featuremart.features (" ~ found[0].original_file_path ~ ")") }}
        {%- endif -%}
    {%- else -%}
        {%- set where = macro_name ~ ": features" -%}
        {%- set refs = features -%}
    {%- endif -%}

    {#- Group by view, in first-appearance order; `view.*` expands to the model's columns. -#}
    {%- set entities = featuremart._featuremart_entities(macro_name) -%}
    {%- set views = [] -%}
    {%- set by_name = {} -%}
    {%- for item in refs -%}
        {%- set parts = (item | string).split('.') -%}
        {%- if parts | length != 2 or parts[0] | length == 0 or parts[1] | length == 0 -%}
            {{ exceptions.raise_compiler_error(where ~ ": " ~ item | string ~ " should be written view.feature or view.*") }}
        {%- endif -%}
        {%- if parts[0] not in by_name -%}
            {%- set view = featuremart._training_set_view(where, parts[0], entities) -%}
            {%- do by_name.update({parts[0]: view}) -%}
            {%- do views.append(view) -%}
        {%- endif -%}
        {%- set view = by_name[parts[0]] -%}
        {%- if parts[1] == '*' -%}
            {%- set names = featuremart._training_set_all_features(view) -%}
        {%- else -%}
            {%- if parts[1] | lower in view._excluded -%}
                {{ exceptions.raise_compiler_error(where ~ ": " ~ item ~ " is a key, the timestamp or a `feature: false` column of " ~ view.name ~ ", not a feature") }}
            {%- endif -%}
            {%- set names = [parts[1]] -%}
        {%- endif -%}
        {%- for name in names if name | lower not in (view.features | map('lower') | list) -%}
            {%- do view.features.append(name) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- for view in views -%}
        {%- do view.pop('_excluded') -%}
        {%- do view.pop('_columns') -%}
    {%- endfor -%}
    {{ return(views) }}
{%- endmacro %}

{#- A ttl such as 30d, 12h, 90m, 3600s, 2w (features.yml's format) in seconds. -#}
{% macro _ttl_seconds(where, ttl) -%}
    {%- set match = modules.re.match('^\\s*(\\d+)\\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|w|wk|week|weeks)\\s*$', ttl | string | lower) -%}
    {%- if match is none -%}
        {{ exceptions.raise_compiler_error(where ~ ": ttl " ~ ttl | string ~ " does not parse; write a whole number and a unit (s, m, h, d, w), e.g. 30d") }}
    {%- endif -%}
    {%- set unit = match.group(2) -%}
    {%- set unit = 'm' if unit == 'm' or unit.startswith('mi') else unit[0] -%}
    {{ return(match.group(1) | int * {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}[unit]) }}
{%- endmacro %}

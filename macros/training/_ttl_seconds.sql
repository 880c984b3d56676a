{#- A ttl such as 30d, 12h, 90m, 3600s, 2w in seconds; a compiler error naming `where` when it does not parse.
    The grammar is featuremart.config.parse_duration's (tests/test_parity.py runs the same cases through
    both). -#}
{% macro _ttl_seconds(where, ttl) -%}
    {%- set seconds = featuremart._parse_ttl(ttl) -%}
    {%- if seconds is none -%}
        {{ exceptions.raise_compiler_error(where ~ ": ttl " ~ ttl | string ~ " does not parse; write a whole number and a unit (s, m, h, d, w), e.g. 30d") }}
    {%- endif -%}
    {{ return(seconds) }}
{%- endmacro %}


{#- The seconds of a ttl, or none when it does not parse. Only text (or a whole number, which has no unit and
    is rejected) is a ttl. -#}
{% macro _parse_ttl(ttl) -%}
    {%- if ttl is not string and (ttl is not number or ttl is sameas true or ttl is sameas false) -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set match = modules.re.match('(?a)^\\s*(\\d+)\\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|w|wk|week|weeks)\\s*$', ttl | string, modules.re.IGNORECASE) -%}
    {%- if match is none -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set unit = match.group(2) | lower -%}
    {%- set unit = 'm' if unit == 'm' or unit.startswith('mi') else unit[0] -%}
    {%- set seconds = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}.get(unit) -%}
    {{ return(none if seconds is none else match.group(1) | int * seconds) }}
{%- endmacro %}

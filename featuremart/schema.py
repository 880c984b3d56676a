"""The declared shape of everything a user writes: features.yml, the featuremart dbt vars, model and column meta.

pydantic v2 models check it (strict types: `'false'` is not a bool and `5` is not a string; unknown keys are
errors), and `validate()` turns pydantic's errors into one line each, `<path inside the file>: <what is
expected>, got <what>`, with a did-you-mean for an unknown key. Callers put the file (and model) in front.

Example:
    >>> validate(OnlineStoreSpec, {"keyprefix": "fm"}, "online_store")[1]
    ["online_store.keyprefix: unknown key; did you mean 'key_prefix'? (allowed: url_env, key_prefix)"]
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal, Mapping, TypeVar, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, field_validator,
                      model_validator)
from pydantic import ValidationError as PydanticError
from pydantic_core import PydanticCustomError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Duration:
    """A ttl as the user wrote it (`14d`, shown as written) and its length."""

    text: str
    delta: timedelta


def _duration(value: Any) -> Duration:
    from featuremart.config import MAX_TTL, parse_duration  # config imports this module: import them late

    if not isinstance(value, str):
        raise PydanticCustomError("ttl_type", "expected a duration such as 30d, 12h, 90m or 2w, got {got}",
                                  {"got": describe(value)})
    try:
        delta = parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("ttl_parse", str(exc)) from None
    if delta <= timedelta(0):
        raise PydanticCustomError("ttl_zero", f"a ttl of {value!r} would expire every value as soon as it is "
                                  "written (and delete every key of the view); use at least 1s")
    if delta > MAX_TTL:
        raise PydanticCustomError("ttl_max", f"{value!r} is longer than the longest ttl, {MAX_TTL.days}d (100 years)")
    return Duration(value.strip(), delta)


def _one_or_list(value: Any) -> Any:
    """`tags: payments` means one tag, as in dbt's own `tags:` config; the same for `entity: customer`."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError("name_or_list", f"expected a name or a list of names, got {describe(value)}")
    return value


def _empty_if_null(value: Any) -> Any:
    """`bronze:` with nothing after it is a tier with every default, as YAML users expect."""
    return {} if value is None else value


def _distinct(names: list[str]) -> list[str]:
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PydanticCustomError("repeated", f"names {', '.join(twice)} more than once; list each entity once")
    return names


Ttl = Annotated[Duration, PlainValidator(_duration)]
Name = Annotated[str, Field(min_length=1)]
#: The largest share of a view's entities one sync may delete (the reliability branch's mass-delete guard).
Fraction = Annotated[float, Field(ge=0, le=1)]


class Block(BaseModel):
    """A mapping with exactly these keys, of exactly these types (no coercion of `'false'` or `5`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- features.yml -------------------------------------------------------------------------------------------
class OnlineStoreSpec(Block):
    url_env: Name | None = None
    key_prefix: Name = "fm"

    @field_validator("url_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise PydanticCustomError("env_name", f"{value!r} is not an environment variable name (letters, digits "
                                      "and _, not starting with a digit); name the variable that holds the Redis "
                                      "URL, e.g. FEATUREMART_REDIS_URL")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _PREFIX.fullmatch(value):
            raise PydanticCustomError("key_prefix", f"{value!r} may only hold letters, digits, _ . -")
        return value


class DefaultsSpec(Block):
    online: bool = True
    tier: Name | None = None
    max_delete_fraction: Fraction = 0.5
    ttl: Any = Field(default=None, json_schema_extra={"moved": "vars.featuremart_default_ttl"})

    @field_validator("ttl")
    @classmethod
    def _moved(cls, value: Any) -> Any:
        raise PydanticCustomError("moved", "moved to dbt_project.yml as vars.featuremart_default_ttl (the dbt macros "
                                  "need it too, and dbt cannot read features.yml); delete it here and write "
                                  "`featuremart_default_ttl: {value}` under vars: there", {"value": value})


class Threshold(Block):
    count: Annotated[int, Field(gt=0)]
    period: Literal["minute", "hour", "day"]


class FreshnessSpec(Block):
    warn_after: Threshold | None = None
    error_after: Threshold | None = None


class DriftLevels(Block):
    """`warn` and `error` thresholds of one drift statistic: a level is reached when the value is >= it."""

    warn: Annotated[float, Field(gt=0)]
    error: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _ordered(self) -> "DriftLevels":
        if self.warn > self.error:
            raise PydanticCustomError("drift_levels", f"warn ({self.warn:g}) is above error ({self.error:g}); "
                                      "write warn <= error")
        return self


class DriftSpec(Block):
    """A tier's drift thresholds (docs/monitoring.md); a statistic left out keeps its default."""

    psi: DriftLevels | None = None
    ks: DriftLevels | None = None


class TierSpec(Block):
    description: str = ""
    freshness: FreshnessSpec | None = None
    online: bool = True
    drift: DriftSpec | None = None


class SkewSpec(Block):
    """How much online/offline disagreement `featuremart skew` tolerates before exiting non-zero."""

    max_mismatch_rate: Fraction = 0.0


class FeaturesFile(Block):
    """features.yml: what dbt has no place for (the online store, defaults, tier policies)."""

    version: Literal[1] = 1
    online_store: OnlineStoreSpec = OnlineStoreSpec()
    defaults: DefaultsSpec = DefaultsSpec()
    skew: SkewSpec = SkewSpec()
    tiers: dict[Name, Annotated[TierSpec, BeforeValidator(_empty_if_null)]] = {}
    entities: Any = Field(default=None, json_schema_extra={"moved": "vars.featuremart_entities"})

    @field_validator("entities")
    @classmethod
    def _moved(cls, value: Any) -> Any:
        raise PydanticCustomError("moved", "moved to dbt_project.yml as vars.featuremart_entities (the dbt macros "
                                  "need the join keys, and dbt cannot read features.yml); move the block there "
                                  "under vars:, unchanged, and delete it here")


# -- dbt_project.yml vars -----------------------------------------------------------------------------------
class EntitySpec(Block):
    description: str = ""
    join_keys: Annotated[dict[Name, Literal["string", "int"]], Field(min_length=1)]


class FeaturemartVars(Block):
    """The featuremart vars of dbt_project.yml (other vars are the project's own and not looked at)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    featuremart_entities: Annotated[dict[Name, EntitySpec], Field(min_length=1)]
    featuremart_default_ttl: Ttl = Duration("30d", timedelta(days=30))


# -- model and column meta (config.meta.featuremart) --------------------------------------------------------
class ViewMeta(Block):
    entity: Annotated[list[Name], BeforeValidator(_one_or_list), Field(min_length=1), AfterValidator(_distinct)]
    timestamp: Name
    ttl: Ttl | None = None
    online: bool | None = None
    owner: str | None = None
    tier: Name | None = None
    tags: Annotated[list[Name], BeforeValidator(_one_or_list)] = []
    freshness: FreshnessSpec | None = None
    changed_at: Name | None = None
    max_delete_fraction: Fraction | None = None


class ColumnMeta(Block):
    feature: bool = True


# -- pydantic errors as located one-line messages ------------------------------------------------------------
_MISSING = {
    "entity": "required: the entity (or list of entities) whose keys identify a row, e.g. entity: customer",
    "timestamp": "required: the event-time column, from when each row's values hold, e.g. timestamp: event_ts",
    "join_keys": "required: the key columns and their types, e.g. join_keys: {customer_id: string}",
    "featuremart_entities": ("required: declare your entities under vars:, e.g. featuremart_entities: "
                             "{customer: {join_keys: {customer_id: string}}}"),
    "count": "required: a whole number, as in {count: 2, period: day}",
    "period": "required: minute, hour or day, as in {count: 2, period: day}",
}
_UNKNOWN = {
    "url": ("the Redis URL is not read from files (secrets stay out of them): set it in the environment "
            "variable that online_store.url_env names"),
}
_EXPECTED = {
    "string_type": "a string", "bool_type": "true or false", "int_type": "a whole number",
    "list_type": "a list", "dict_type": "a mapping (key: value)", "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)", "float_type": "a number",
}

M = TypeVar("M", bound=BaseModel)


def describe(value: Any) -> str:
    """A value as the user wrote it in YAML, with its kind: `a string 'false'`, `a list [a, b]`."""
    if value is None:
        return "nothing (null)"
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)
    text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{kind} {text}"


def validate(model: type[M], data: Any, path: str = "") -> tuple[M | None, list[str]]:
    """`data` checked against `model`: the model, or None and one message per problem (`path` prefixes each)."""
    try:
        return model.model_validate(data), []
    except PydanticError as exc:
        return None, _messages(model, exc, path)


def _messages(model: type[BaseModel], exc: PydanticError, path: str) -> list[str]:
    """One message per error; a required key reported missing because it was misspelt is said once, as the typo."""
    errors = exc.errors()
    typos = {(tuple(e["loc"][:-1]), _suggestion(model, e)) for e in errors if e["type"] == "extra_forbidden"}
    return [_message(model, e, path) for e in errors
            if not (e["type"] == "missing" and (tuple(e["loc"][:-1]), str(e["loc"][-1])) in typos)]


def _suggestion(model: type[BaseModel], error: Mapping[str, Any]) -> str | None:
    """The key an unknown key was probably meant to be (a known or moved key of the same mapping)."""
    loc = list(error["loc"])
    allowed, moved = _allowed(model, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), allowed + list(moved), n=1, cutoff=0.6)
    return close[0] if close else None


def validate_lenient(model: type[M], data: Any, path: str = "") -> tuple[M | None, list[str]]:
    """As `validate`, but with errors also the model of the keys that are right (defaults for the wrong ones), so
    that a caller can go on checking those against the project and report every problem in one run; None when
    that fails too (a required key is wrong)."""
    try:
        return model.model_validate(data), []
    except PydanticError as exc:
        messages = _messages(model, exc, path)
        wrong = {error["loc"][0] for error in exc.errors() if error["loc"]}
    if not isinstance(data, dict):
        return None, messages
    try:
        return model.model_validate({k: v for k, v in data.items() if k not in wrong}), messages
    except PydanticError:
        return None, messages


def _message(model: type[BaseModel], error: Mapping[str, Any], path: str) -> str:
    """One pydantic error as `<path>: <what is expected>, got <what was written>`."""
    loc = list(error["loc"])
    kind, value = error["type"], error.get("input")
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:  # a mapping's key of the wrong type: name the mapping and the key
        loc = loc[:-2]
    where = _join(path, loc)
    if kind == "extra_forbidden":
        name = str(loc[-1])
        if name in _UNKNOWN:
            return f"{where}: {_UNKNOWN[name]}"
        allowed, moved = _allowed(model, loc[:-1])
        close = _suggestion(model, error)
        hint = f"; did you mean {close!r}?" if close else ""
        if close in moved:
            hint += f" That moved to dbt_project.yml {moved[close]}"
        return f"{where}: unknown key{hint} (allowed: {', '.join(allowed)})"
    if kind == "missing":
        return f"{where}: {_MISSING.get(str(loc[-1]), 'required')}"
    if kind in _EXPECTED:
        got = describe(value)
        if is_key:
            return f"{where}: key {value!r} must be {_EXPECTED[kind]}, got {got}"
        quoted = " (quoted: write it without quotes)" if kind == "bool_type" and isinstance(value, str) else ""
        return f"{where}: expected {_EXPECTED[kind]}, got {got}{quoted}"
    if kind == "literal_error":
        expected = error["ctx"]["expected"].replace("'", "")
        return f"{where}: expected {expected}, got {describe(value)}"
    if kind in ("too_short", "string_too_short"):
        return f"{where}: must not be empty"
    if kind == "greater_than":
        return f"{where}: must be greater than {error['ctx']['gt']}, got {describe(value)}"
    if kind == "greater_than_equal":
        return f"{where}: must be at least {error['ctx']['ge']:g}, got {describe(value)}"
    if kind == "less_than_equal":
        return f"{where}: must be at most {error['ctx']['le']:g}, got {describe(value)}"
    return f"{where}: {error['msg']}"  # our own PydanticCustomError messages, and any kind not foreseen


def _join(path: str, loc: list[Any]) -> str:
    """`vars.featuremart_entities.customer.join_keys`, `config.meta.featuremart.tags[0]`."""
    out = path
    for part in loc:
        if isinstance(part, int) and out:  # a list index (an int mapping key is named by the message instead)
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _allowed(model: type[BaseModel], loc: list[Any]) -> tuple[list[str], dict[str, str]]:
    """The keys allowed in the mapping at `loc` of `model` (walking fields, dict values and list items), and the
    keys that moved elsewhere (to where)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return [], {}
            current = field.annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            return [], {}
    current = _unwrap(current)
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return [], {}
    moved = {n: str(f.json_schema_extra["moved"]) for n, f in current.model_fields.items()
             if isinstance(f.json_schema_extra, dict) and "moved" in f.json_schema_extra}
    return [n for n in current.model_fields if n not in moved], moved


def _unwrap(annotation: Any) -> Any:
    """The type inside Annotated[...] and Optional[...]."""
    while True:
        args = get_args(annotation)
        if get_origin(annotation) is Annotated:
            annotation = args[0]
        elif args and type(None) in args and len(args) == 2:
            annotation = next(a for a in args if a is not type(None))
        else:
            return annotation

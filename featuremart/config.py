"""Read the project's configuration: features.yml, dbt_project.yml and the dbt profile's target.

features.yml holds what dbt has no place for: entities and their join keys, the online store, defaults and
tier policies. profiles.yml is dbt's own; we render it the way dbt does (Jinja with `env_var`) to find the
warehouse the feature models were built in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jinja2
import yaml

from featuremart.errors import ConfigError

KEY_TYPES = ("string", "int")
_DURATION_RE = re.compile(
    r"^\s*(\d+)\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|"
    r"d|day|days|w|wk|week|weeks)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PERIOD_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def parse_duration(text: Any) -> timedelta:
    """Parse a ttl such as `30d`, `12h`, `90 minutes` into a timedelta.

    Raises ValueError naming the accepted forms when the text is not one of them.

    >>> parse_duration("7d")
    datetime.timedelta(days=7)
    """
    match = _DURATION_RE.match(str(text)) if isinstance(text, (str, int)) else None
    if not match:
        raise ValueError(f"{text!r} is not a duration: write a whole number and a unit, e.g. 30d, 12h, 90m, 2w")
    unit = match.group(2).lower()
    # "m"/"min..." are minutes; months are deliberately not accepted (they have no fixed length).
    key = "m" if unit.startswith("mi") or unit == "m" else unit[0]
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[key])


def format_duration(td: timedelta) -> str:
    """The shortest exact `<n><unit>` form of a duration, the inverse of parse_duration."""
    seconds = int(td.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Freshness:
    """dbt's freshness shape: `warn_after` / `error_after`, each `{count, period}`."""

    warn_after: timedelta | None = None
    error_after: timedelta | None = None

    @classmethod
    def parse(cls, raw: Any, where: str) -> Freshness:
        if raw is None:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"warn_after", "error_after"}:
            raise ConfigError(f"{where}: freshness takes warn_after and error_after, e.g. "
                              "{warn_after: {count: 2, period: day}}")
        return cls(*(cls._threshold(raw.get(k), f"{where}: freshness.{k}") for k in ("warn_after", "error_after")))

    @staticmethod
    def _threshold(raw: Any, where: str) -> timedelta | None:
        if raw is None:
            return None
        try:
            return timedelta(seconds=int(raw["count"]) * _PERIOD_SECONDS[str(raw["period"])])
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"{where} is {raw!r}; write {{count: <int>, period: minute|hour|day}}") from None

    def status(self, age: timedelta) -> str:
        """'error', 'warn' or 'pass' for data whose newest row is `age` old."""
        if self.error_after is not None and age > self.error_after:
            return "error"
        if self.warn_after is not None and age > self.warn_after:
            return "warn"
        return "pass"


@dataclass(frozen=True)
class Entity:
    name: str
    join_keys: tuple[tuple[str, str], ...]  # (column, type) with type in KEY_TYPES
    description: str = ""

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.join_keys)


@dataclass(frozen=True)
class Tier:
    name: str
    description: str = ""
    freshness: Freshness = Freshness()
    online: bool = True  # a tier may forbid publishing its views online


@dataclass(frozen=True)
class OnlineStoreConfig:
    url_env: str = "FEATUREMART_REDIS_URL"
    key_prefix: str = "fm"

    @property
    def url(self) -> str | None:
        """The Redis URL from the environment, or None for the embedded server."""
        return os.environ.get(self.url_env) or None


@dataclass(frozen=True)
class ProjectConfig:
    """features.yml, parsed and checked."""

    path: Path
    entities: dict[str, Entity]
    online_store: OnlineStoreConfig
    default_ttl: timedelta
    default_online: bool
    default_tier: str | None
    tiers: dict[str, Tier] = field(default_factory=dict)
    default_max_delete_fraction: float = 0.5  # a sync withholds a view that would delete more of its entities


def load_features_yml(project_dir: Path) -> ProjectConfig:
    """Read and check `features.yml` at the project root."""
    path = Path(project_dir) / "features.yml"
    if not path.exists():
        raise ConfigError(
            f"{path} not found: featuremart needs a features.yml at the dbt project root declaring at least "
            "your entities (see docs/metadata.md)."
        )
    raw = _load_yaml(path)
    where = str(path)
    unknown = set(raw) - {"version", "entities", "online_store", "defaults", "tiers"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {sorted(unknown)}; "
                          "allowed: version, entities, online_store, defaults, tiers")
    entities = {}
    for name, spec in (raw.get("entities") or {}).items():
        keys = (spec or {}).get("join_keys")
        if not isinstance(keys, dict) or not keys:
            raise ConfigError(f"{where}: entity {name!r} needs join_keys, e.g. join_keys: {{{name}_id: string}}")
        for key, typ in keys.items():
            if typ not in KEY_TYPES:
                raise ConfigError(f"{where}: entity {name!r} join key {key!r} has type {typ!r}; "
                                  f"use one of {', '.join(KEY_TYPES)}")
        entities[name] = Entity(name, tuple(keys.items()), (spec or {}).get("description", ""))
    if not entities:
        raise ConfigError(f"{where}: declare at least one entity under `entities:`")

    store = raw.get("online_store") or {}
    prefix = str(store.get("key_prefix", "fm"))
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", prefix):
        raise ConfigError(f"{where}: online_store.key_prefix {prefix!r} may only hold letters, digits, _ . -")
    if "url" in store:
        raise ConfigError(f"{where}: online_store.url is not read from files (secrets stay out of them); "
                          "set the URL in the environment variable named by online_store.url_env")

    defaults = raw.get("defaults") or {}
    try:
        default_ttl = parse_duration(defaults.get("ttl", "30d"))
    except ValueError as exc:
        raise ConfigError(f"{where}: defaults.ttl: {exc}") from None
    tiers = {
        name: Tier(
            name=name,
            description=(spec or {}).get("description", ""),
            freshness=Freshness.parse((spec or {}).get("freshness"), f"{where}: tiers.{name}"),
            online=bool((spec or {}).get("online", True)),
        )
        for name, spec in (raw.get("tiers") or {}).items()
    }
    max_delete_fraction = defaults.get("max_delete_fraction", 0.5)
    if isinstance(max_delete_fraction, bool) or not isinstance(max_delete_fraction, (int, float)) or not (
            0 <= max_delete_fraction <= 1):
        raise ConfigError(f"{where}: defaults.max_delete_fraction {max_delete_fraction!r} must be a number from 0 "
                          "to 1 (the largest share of a view's entities one sync may delete; 1 turns the guard off)")
    default_tier = defaults.get("tier")
    if default_tier is not None and default_tier not in tiers:
        raise ConfigError(f"{where}: defaults.tier {default_tier!r} is not a tier; tiers: {sorted(tiers)}")
    return ProjectConfig(
        path=path,
        entities=entities,
        online_store=OnlineStoreConfig(str(store.get("url_env", "FEATUREMART_REDIS_URL")), prefix),
        default_ttl=default_ttl,
        default_online=bool(defaults.get("online", True)),
        default_tier=default_tier,
        tiers=tiers,
        default_max_delete_fraction=float(max_delete_fraction),
    )


@dataclass(frozen=True)
class DbtProject:
    """What featuremart needs of dbt_project.yml and the profile's active target."""

    project_dir: Path
    profiles_dir: Path
    name: str
    target_dir: Path
    profile_name: str
    target_name: str
    target: dict[str, Any]  # the rendered output block: type, path, host, ...

    @property
    def adapter_type(self) -> str:
        return str(self.target.get("type", ""))


def load_dbt_project(project_dir: Path, profiles_dir: Path | None = None, target: str | None = None) -> DbtProject:
    """Read dbt_project.yml and resolve the profile target the way dbt does (flags, env, then default)."""
    project_dir = Path(project_dir).resolve()
    path = project_dir / "dbt_project.yml"
    if not path.exists():
        raise ConfigError(f"{path} not found: run featuremart in a dbt project directory or pass --project-dir")
    project = _load_yaml(path)
    target_path = os.environ.get("DBT_TARGET_PATH") or project.get("target-path") or "target"
    profile_name = str(project.get("profile") or "")

    profiles_dir = Path(profiles_dir or os.environ.get("DBT_PROFILES_DIR") or _default_profiles_dir(project_dir))
    profiles_path = profiles_dir / "profiles.yml"
    if not profiles_path.exists():
        raise ConfigError(f"{profiles_path} not found: pass --profiles-dir or set DBT_PROFILES_DIR")
    profiles = _load_yaml(profiles_path, render=True)
    profile = profiles.get(profile_name)
    if not isinstance(profile, dict):
        raise ConfigError(f"{profiles_path}: no profile {profile_name!r} (named by {path})")
    target_name = target or os.environ.get("DBT_TARGET") or str(profile.get("target", ""))
    outputs = profile.get("outputs") or {}
    if target_name not in outputs:
        raise ConfigError(f"{profiles_path}: profile {profile_name!r} has no target {target_name!r}; "
                          f"targets: {', '.join(sorted(outputs))}")
    return DbtProject(
        project_dir=project_dir,
        profiles_dir=profiles_dir.resolve(),
        name=str(project.get("name", "")),
        target_dir=(project_dir / target_path).resolve(),
        profile_name=profile_name,
        target_name=target_name,
        target=dict(outputs[target_name]),
    )


def _default_profiles_dir(project_dir: Path) -> Path:
    # dbt >= 1.5 looks in the current directory first, then ~/.dbt; we also try the project directory.
    for candidate in (Path.cwd(), project_dir):
        if (candidate / "profiles.yml").exists():
            return candidate
    return Path.home() / ".dbt"


def _env_var(name: str, default: str | None = None) -> str:
    if name in os.environ:
        return os.environ[name]
    if default is not None:
        return default
    raise ConfigError(f"profiles.yml uses env_var({name!r}) but {name} is not set")


def _load_yaml(path: Path, render: bool = False) -> dict[str, Any]:
    text = path.read_text()
    if render:
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        env.filters["as_number"] = lambda v: v
        env.filters["as_bool"] = lambda v: v
        env.filters["as_text"] = lambda v: v
        text = env.from_string(text).render(env_var=_env_var)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} should hold a mapping at the top level")
    return data

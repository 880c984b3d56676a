"""Read the project's configuration: features.yml, dbt_project.yml and the dbt profile's target.

features.yml holds what dbt has no place for: the online store, defaults and tier policies. Entities and the
default ttl are dbt vars (`featuremart_entities`, `featuremart_default_ttl`), written once where dbt's macros
can read them too; the shapes of both are declared in featuremart.schema. dbt_project.yml and profiles.yml
are dbt's own: `featuremart.dbtcore` loads them with dbt's loader (DbtProject and load_dbt_project are
re-exported here for callers that import them from config).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from featuremart.dbtcore import DbtProject, load_dbt_project  # noqa: F401  (dbt's loading lives in dbtcore)
from featuremart.errors import ConfigError, ConfigProblems

KEY_TYPES = ("string", "int")
DEFAULT_URL_ENV = "FEATUREMART_REDIS_URL"
# ASCII only (digits and case folding), as the Jinja side (macros/training/_ttl_seconds.sql) writes it with
# `(?ai)`: under Unicode rules 'ſ' folds to 's' and '３' is a digit.
_DURATION_RE = re.compile(
    r"^\s*(\d+)\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|"
    r"d|day|days|w|wk|week|weeks)\s*$",
    re.IGNORECASE | re.ASCII,
)
#: The longest ttl accepted: an expiry instant (event time + ttl) must stay a valid date for Redis and Python.
MAX_TTL = timedelta(days=36500)
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
    try:
        return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[key])
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration: the longest ttl is {MAX_TTL.days}d (100 years)") from None


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
    def from_spec(cls, spec: Any) -> Freshness:
        """Thresholds from a checked `schema.FreshnessSpec` (or None: no thresholds)."""
        if spec is None:
            return cls()
        return cls(*(None if t is None else timedelta(seconds=t.count * _PERIOD_SECONDS[t.period])
                     for t in (spec.warn_after, spec.error_after)))

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
class DriftThresholds:
    """When drift of a feature is a warning or an error: PSI and KS levels (value >= threshold). The defaults
    (docs/monitoring.md): PSI 0.1 / 0.25, the usual rule of thumb; KS 0.1 / 0.2, a tenth and a fifth of
    the population moved across some value."""

    psi_warn: float = 0.1
    psi_error: float = 0.25
    ks_warn: float = 0.1
    ks_error: float = 0.2

    @classmethod
    def from_spec(cls, spec: Any) -> DriftThresholds:
        """Thresholds from a checked `schema.DriftSpec` (or None: the defaults)."""
        if spec is None:
            return cls()
        psi, ks, default = spec.psi, spec.ks, cls()
        return cls(psi.warn if psi else default.psi_warn, psi.error if psi else default.psi_error,
                   ks.warn if ks else default.ks_warn, ks.error if ks else default.ks_error)


@dataclass(frozen=True)
class Tier:
    name: str
    description: str = ""
    freshness: Freshness = Freshness()
    online: bool = True  # a tier may forbid publishing its views online
    drift: DriftThresholds = DriftThresholds()


@dataclass(frozen=True)
class OnlineStoreConfig:
    url_env: str | None = None  # None: the user named no variable (FEATUREMART_REDIS_URL, else embedded)
    key_prefix: str = "fm"

    @property
    def url(self) -> str | None:
        """The Redis URL from the environment, or None for the embedded server.

        The embedded server is a default only for a user who configured no store: no `online_store.url_env`
        and FEATUREMART_REDIS_URL unset. A variable the user named that is unset is an error (a typo there
        must not publish into a private Redis under target/ and report success).
        """
        if self.url_env is None:
            return os.environ.get(DEFAULT_URL_ENV) or None
        url = os.environ.get(self.url_env)
        if not url:
            raise ConfigError(f"features.yml: online_store.url_env names {self.url_env}, which is unset or empty: "
                              f"export {self.url_env}=redis://host:6379/0, or delete url_env to use "
                              f"{DEFAULT_URL_ENV} (when that is unset too: an embedded redis-server under target/)")
        return url


@dataclass(frozen=True)
class ProjectConfig:
    """features.yml and the featuremart dbt vars, parsed and checked."""

    path: Path
    entities: dict[str, Entity]
    online_store: OnlineStoreConfig
    default_ttl: timedelta
    default_online: bool
    default_tier: str | None
    tiers: dict[str, Tier] = field(default_factory=dict)
    default_ttl_text: str = "30d"  # as written in vars.featuremart_default_ttl, shown as written
    default_max_delete_fraction: float = 0.5  # a sync withholds a view that would delete more of its entities
    max_skew_rate: float = 0.0  # `featuremart skew` fails a feature whose mismatch rate is above it


def project_vars(project_dir: Path) -> Any:
    """The root project's vars as dbt renders them (where the entities and the default ttl live)."""
    return load_dbt_project(Path(project_dir)).vars


def load_features_yml(project_dir: Path, dbt_vars: Mapping[str, Any] | None = None) -> ProjectConfig:
    """Read and check `features.yml` at the project root, and the entities and default ttl of the dbt vars.

    `dbt_vars` are the root project's vars (read from dbt_project.yml when None). Every wrong shape is one line
    naming the file and the path inside it; all of them are reported at once, in one ConfigError.
    """
    path = Path(project_dir) / "features.yml"
    if not path.exists():
        raise ConfigError(
            f"{path} not found: featuremart needs a features.yml at the dbt project root (version: 1 and the "
            "online store; see docs/metadata.md)."
        )
    from featuremart import validated

    variables = project_vars(project_dir) if dbt_vars is None else dbt_vars
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:  # _load_yaml says why
        return _validated_config(path, variables)
    return validated.cached("config", [str(path), digest, variables], lambda: _validated_config(path, variables))


def _validated_config(path: Path, variables: Any) -> ProjectConfig:
    """features.yml at `path` and the featuremart dbt vars, checked by the schema (pydantic)."""
    from featuremart import schema  # pydantic: not on the serving path, which imports this module

    raw = _load_yaml(path, allow_empty=True)
    spec, problems = schema.validate(schema.FeaturesFile, raw)
    lines = [f"{path.name}: {p}" for p in problems]
    found, var_problems = schema.validate(schema.FeaturemartVars, variables, "vars")
    lines += [f"dbt_project.yml: {p}" for p in var_problems]
    if isinstance(variables, Mapping) and "featuremart_entities" not in variables:  # misspelt? not "required"
        close = difflib.get_close_matches("featuremart_entities", [str(k) for k in variables], n=1, cutoff=0.7)
        if close:
            lines = [line for line in lines if not line.startswith("dbt_project.yml: vars.featuremart_entities:")]
            lines.append(f"dbt_project.yml: vars.{close[0]}: not a featuremart var; did you mean "
                         "'featuremart_entities'?")
    if spec is not None and spec.defaults.tier is not None and spec.defaults.tier not in spec.tiers:
        lines.append(f"{path.name}: defaults.tier: {spec.defaults.tier!r} is not a tier; tiers: "
                     f"{', '.join(sorted(spec.tiers)) or 'none'}")
    if lines or spec is None or found is None:
        raise ConfigProblems(lines)
    entities = {name: Entity(name, tuple(e.join_keys.items()), e.description)
                for name, e in found.featuremart_entities.items()}
    tiers = {name: Tier(name, t.description, Freshness.from_spec(t.freshness), t.online,
                      DriftThresholds.from_spec(t.drift))
             for name, t in spec.tiers.items()}
    return ProjectConfig(
        path=path,
        entities=entities,
        online_store=OnlineStoreConfig(spec.online_store.url_env, spec.online_store.key_prefix),
        default_ttl=found.featuremart_default_ttl.delta,
        default_online=spec.defaults.online,
        default_tier=spec.defaults.tier,
        tiers=tiers,
        default_ttl_text=found.featuremart_default_ttl.text,
        default_max_delete_fraction=spec.defaults.max_delete_fraction,
        max_skew_rate=spec.skew.max_mismatch_rate,
    )


def _load_yaml(path: Path, allow_empty: bool = False) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path} cannot be read as UTF-8 text ({exc}); save it as UTF-8") from None
    import yaml  # here, not at the top: online readers import this module for its dataclasses only

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None and allow_empty:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} should hold a mapping at the top level")
    return data

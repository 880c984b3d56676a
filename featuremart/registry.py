"""The registry: entities, feature views, features and feature services, built from dbt's manifest.

A feature view is a dbt model with a `featuremart` meta block; its features are the model's output columns
other than the entity keys, the timestamp and opted-out columns, typed by the warehouse. Feature services are
dbt exposures of type `ml`. Validation collects every problem at once, each naming the YAML file, model and
column at fault and how to fix it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterable, Mapping

from featuremart import types
from featuremart.config import Entity, Freshness, ProjectConfig, format_duration, parse_duration
from featuremart.errors import ConfigError, UnavailableError, UnknownNameError, ValidationError
from featuremart.manifest import Manifest, Model



def __getattr__(name: str) -> Any:
    """VIEW_META_KEYS and COLUMN_META_KEYS, the meta keys the schema declares; read lazily so that online
    readers (which import this module for the snapshot) never import pydantic."""
    if name in ("VIEW_META_KEYS", "COLUMN_META_KEYS"):
        from featuremart import schema

        return tuple((schema.ViewMeta if name == "VIEW_META_KEYS" else schema.ColumnMeta).model_fields)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_META = "config.meta.featuremart"
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True)
class Relation:
    database: str | None
    schema: str
    identifier: str

    def __str__(self) -> str:
        return ".".join(p for p in (self.database, self.schema, self.identifier) if p)


@dataclass(frozen=True)
class Feature:
    view: str
    name: str
    dtype: str  # a logical type of featuremart.types
    description: str = ""
    warehouse_type: str = ""

    @property
    def ref(self) -> str:
        return f"{self.view}.{self.name}"


@dataclass(frozen=True)
class FeatureView:
    """A feature model: rows of (entity keys, event timestamp, features), "from this time on, these values"."""

    name: str
    entities: tuple[str, ...]
    join_keys: tuple[tuple[str, str], ...]  # (column, key type) in entity order
    timestamp: str
    ttl: timedelta
    features: tuple[Feature, ...]
    relation: Relation
    online: bool = True
    owner: str | None = None
    tier: str | None = None
    tags: tuple[str, ...] = ()
    description: str = ""
    freshness: Freshness = Freshness()
    sql_path: str = ""
    yaml_path: str | None = None
    model_id: str = ""
    upstream: tuple[str, ...] = ()
    changed_at: str | None = None  # a column that is newer on every row (re)written: enables incremental syncs
    ttl_text: str = ""  # the ttl as the user wrote it (`14d`, not `2w`); empty: format_duration(ttl)
    max_delete_fraction: float | None = None  # the sync's mass-delete guard; None: features.yml's default

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.join_keys)

    @property
    def ttl_label(self) -> str:
        """The ttl as the user wrote it, for people (list, describe, the registry snapshot)."""
        return self.ttl_text or format_duration(self.ttl)

    @property
    def version(self) -> str:
        """A short hash of the served schema: it changes when a feature is added, removed or retyped."""
        schema = [self.name, list(self.join_keys), self.timestamp, [[f.name, f.dtype] for f in self.features]]
        return hashlib.sha256(json.dumps(schema).encode()).hexdigest()[:8]

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise UnknownNameError(
            f"feature view {self.name!r} has no feature {name!r}; its features: "
            f"{', '.join(f.name for f in self.features)}"
        )


@dataclass(frozen=True)
class FeatureService:
    """The named feature list one ML model consumes (a dbt exposure of type `ml`)."""

    name: str
    features: tuple[Feature, ...]
    description: str = ""
    owner: str | None = None
    path: str = ""
    log: bool = False  # config.meta.featuremart.log: its online reads are logged (featuremart.servedlog)

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.view for f in self.features))


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    where: str  # the file at fault
    message: str  # names the model/column and says how to fix it

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Registry:
    entities: dict[str, Any]  # name -> config.Entity
    views: dict[str, FeatureView]
    services: dict[str, FeatureService]
    manifest_checksum: str = ""
    problems: list[Problem] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # service -> why it cannot be served online now

    def view(self, name: str) -> FeatureView:
        if name not in self.views:
            raise UnknownNameError(f"no feature view {name!r}; feature views: {', '.join(sorted(self.views)) or 'none'}")
        return self.views[name]

    def service(self, name: str) -> FeatureService:
        if name in self.unavailable:
            raise UnavailableError(f"feature service {name!r} is not available online: {self.unavailable[name]}")
        if name not in self.services:
            raise UnknownNameError(
                f"no feature service {name!r}; services (dbt exposures of type ml): "
                f"{', '.join(sorted(self.services)) or 'none'}"
            )
        return self.services[name]

    def feature(self, ref: str) -> Feature:
        view, sep, name = ref.partition(".")
        if not sep or not name:
            raise UnknownNameError(f"feature {ref!r} should be written view.feature (e.g. customer_spend.spend_7d)")
        return self.view(view).feature(name)

    def resolve(self, service: str | None = None, features: Iterable[str] | None = None) -> list[Feature]:
        """The features a request names: a service's, or a list of `view.feature` / `view.*` references."""
        if (service is None) == (features is None):
            raise UnknownNameError("name either a feature service or a list of features, not both or neither")
        if service is not None:
            return list(self.service(service).features)
        resolved: list[Feature] = []
        for ref in features or ():
            view, _, name = ref.partition(".")
            resolved.extend(self.view(view).features if name == "*" else [self.feature(ref)])
        return list(dict.fromkeys(resolved))

    # The snapshot is what a sync publishes beside the data: online readers need only the Redis URL.
    def to_snapshot(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "manifest_checksum": self.manifest_checksum,
            "entities": {e.name: {"join_keys": dict(e.join_keys), "description": e.description}
                         for e in self.entities.values()},
            "views": {v.name: _view_to_json(v) for v in self.views.values()},
            "services": {s.name: {"features": [f.ref for f in s.features], "description": s.description,
                                  "owner": s.owner, **({"log": True} if s.log else {})}
                         for s in self.services.values()},
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Registry:
        if data.get("format") != SNAPSHOT_FORMAT:
            raise ConfigError(f"registry snapshot format {data.get('format')!r} is not {SNAPSHOT_FORMAT}: "
                              "upgrade featuremart, or rerun `featuremart sync` with this version")
        entities = {n: Entity(n, tuple(e["join_keys"].items()), e.get("description", ""))
                    for n, e in data["entities"].items()}
        views = {n: _view_from_json(n, v) for n, v in data["views"].items()}
        services = {
            n: FeatureService(n, tuple(views[r.split(".", 1)[0]].feature(r.split(".", 1)[1]) for r in s["features"]),
                              s.get("description", ""), s.get("owner"), log=bool(s.get("log")))
            for n, s in data["services"].items() if "unavailable" not in s
        }
        unavailable = {n: s["unavailable"] for n, s in data["services"].items() if "unavailable" in s}
        return cls(entities, views, services, data.get("manifest_checksum", ""), unavailable=unavailable)


def merge_snapshot(registry: Registry, previous: Mapping[str, Any] | None, synced: Iterable[str],
                   withheld: Mapping[str, str]) -> dict[str, Any]:
    """The snapshot a sync publishes: views synced now as the project defines them, the others as the previous
    snapshot served them (a withheld view keeps serving its previous values), views gone from the project
    dropped (and so are views turned `online: false`). A service is published as defined when every feature it names is served, else as the previous
    snapshot had it if that still is, else marked unavailable with the reason: one service fails, nothing else.
    The result always loads with `Registry.from_snapshot` (the sync checks before publishing).
    """
    snapshot = registry.to_snapshot()
    previous = previous if isinstance(previous, Mapping) and previous.get("format") == SNAPSHOT_FORMAT else {}
    synced = set(synced)
    old_views, old_services = previous.get("views") or {}, previous.get("services") or {}
    snapshot["views"] = {name: snapshot["views"][name] if name in synced else old_views[name]
                         for name in sorted(registry.views)
                         if name in synced or (name in old_views and registry.views[name].online)}
    served = {f"{name}.{f['name']}" for name, v in snapshot["views"].items() for f in v["features"]}
    services = {}
    for name, service in snapshot["services"].items():
        missing = [ref for ref in service["features"] if ref not in served]
        old = old_services.get(name) or {}
        if not missing:
            services[name] = service
        elif "features" in old and all(ref in served for ref in old["features"]):
            services[name] = old
        else:
            services[name] = {**{k: v for k, v in service.items() if k != "features"},
                              "unavailable": _why_unserved(missing, registry, withheld)}
    snapshot["services"] = services
    return snapshot


def _why_unserved(refs: list[str], registry: Registry, withheld: Mapping[str, str]) -> str:
    view = refs[0].split(".", 1)[0]
    if view in withheld:
        why = f"view {view} was withheld by the last sync ({withheld[view]})"
    elif view in registry.views and not registry.views[view].online:
        why = f"view {view} is not online (online: false)"
    else:
        why = f"view {view} has not been published with feature {refs[0]} yet"
    return f"{why}; features not served: {', '.join(refs)}"


def _view_to_json(v: FeatureView) -> dict[str, Any]:
    return {
        "entities": list(v.entities), "join_keys": [list(k) for k in v.join_keys], "timestamp": v.timestamp,
        "ttl": v.ttl_label, "version": v.version, "online": v.online, "owner": v.owner,
        "tier": v.tier, "tags": list(v.tags), "description": v.description, "relation": str(v.relation),
        "features": [{"name": f.name, "type": f.dtype, "description": f.description} for f in v.features],
    }


def _view_from_json(name: str, d: Mapping[str, Any]) -> FeatureView:
    view = FeatureView(
        name=name, entities=tuple(d["entities"]), join_keys=tuple((k, t) for k, t in d["join_keys"]),
        timestamp=d["timestamp"], ttl=parse_duration(d["ttl"]), ttl_text=d["ttl"], online=d["online"],
        owner=d.get("owner"), tier=d.get("tier"), tags=tuple(d.get("tags", ())), description=d.get("description", ""),
        relation=Relation(None, "", d.get("relation", "")),
        features=tuple(Feature(name, f["name"], f["type"], f.get("description", "")) for f in d["features"]),
    )
    if view.version != d["version"]:
        raise ConfigError(f"registry snapshot of view {name!r} is inconsistent (version {d['version']} != "
                          f"{view.version}); rerun `featuremart sync --full-refresh`")
    return view


def build_registry(
    manifest: Manifest,
    config: ProjectConfig,
    warehouse_columns: Mapping[Relation, Mapping[str, str]],
) -> Registry:
    """Build the registry from the manifest, features.yml and the warehouse's column types.

    Raises ValidationError listing every error; warnings are kept in `Registry.problems`.
    `warehouse_columns` maps each feature model's relation to its output columns and warehouse types.
    """
    problems: list[Problem] = []
    views: dict[str, FeatureView] = {}
    for model in feature_models(manifest):
        view = _build_view(model, manifest, config, warehouse_columns.get(relation_of(model)), problems)
        if view is not None:
            views[view.name] = view
    broken = {m.name for m in feature_models(manifest)} - set(views)
    services = _build_services(manifest, views, broken, problems)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ValidationError([str(p) for p in errors])
    return Registry(dict(config.entities), views, services, manifest.checksum, problems)


def feature_models(manifest: Manifest) -> list[Model]:
    """The models that declare themselves feature views (a `featuremart` meta block), by name."""
    return sorted((m for m in manifest.models.values() if m.meta), key=lambda m: m.name)


def relation_of(model: Model) -> Relation:
    return Relation(model.database, model.schema, model.identifier)


def _build_view(
    model: Model,
    manifest: Manifest,
    config: ProjectConfig,
    columns: Mapping[str, str] | None,
    problems: list[Problem],
) -> FeatureView | None:
    from featuremart import schema  # pydantic: imported only when metadata is validated

    where = model.yaml_path or model.sql_path
    start = len(problems)

    def error(message: str) -> None:
        problems.append(Problem("error", where, f"model {model.name}: {message}"))

    raw_meta = dict(model.meta)
    if "__invalid__" in raw_meta:
        error(f"{_META}: expected a mapping (entity, timestamp, ttl, ...), got "
              f"{schema.describe(raw_meta['__invalid__'])}")
        return None
    meta, shape_errors = schema.validate_lenient(schema.ViewMeta, raw_meta, _META)
    for message in shape_errors:
        error(message)
    for col in model.columns.values():
        for message in schema.validate(schema.ColumnMeta, col.meta, f"columns.{col.name}.{_META}")[1]:
            error(message)
    if meta is None:
        return None

    join_keys: list[tuple[str, str]] = []
    for name in meta.entity:
        if name not in config.entities:
            error(f"unknown entity {name!r}; dbt_project.yml vars.featuremart_entities declares: "
                  f"{', '.join(sorted(config.entities))}. Fix the name or add the entity there.")
        else:
            join_keys.extend(config.entities[name].join_keys)
    timestamp = meta.timestamp
    ttl, ttl_text = (meta.ttl.delta, meta.ttl.text) if meta.ttl else (config.default_ttl, config.default_ttl_text)
    tier = meta.tier if meta.tier is not None else config.default_tier
    if tier is not None and config.tiers and tier not in config.tiers:
        error(f"unknown tier {tier!r}; features.yml declares: {', '.join(sorted(config.tiers))}")
    tier_policy = config.tiers.get(tier) if tier else None
    online = meta.online if meta.online is not None else config.default_online
    if online and tier_policy is not None and not tier_policy.online:
        online = False  # the tier forbids serving; `featuremart validate` says so
        problems.append(Problem("warning", where, f"model {model.name}: tier {tier!r} is never published online, "
                                "so online: true is ignored"))
    freshness = (Freshness.from_spec(meta.freshness) if meta.freshness is not None
                 else tier_policy.freshness if tier_policy else Freshness())

    if columns is None:
        error(f"relation {relation_of(model)} was not found in the warehouse: run `dbt build --select "
              f"{model.name}` (or check that featuremart reads the same target as dbt)")
        return None
    lowered = {c.lower(): c for c in columns}

    def actual(col: str) -> str | None:
        return col if col in columns else lowered.get(col.lower())

    for col in model.columns:
        if actual(col) is None:
            error(f"column {col!r} is described in the YAML but the model does not output it; the model outputs: "
                  f"{', '.join(columns)}. Remove it from the YAML or add it to {model.sql_path}.")
    for key, key_type in join_keys:
        col = actual(key)
        if col is None:
            error(f"entity key {key!r} is not an output column; select it in {model.sql_path}")
        elif types.logical_type(columns[col]) != key_type:
            error(f"entity key {key!r} has warehouse type {columns[col]} but dbt_project.yml "
                  f"vars.featuremart_entities declares {key_type}; cast it in {model.sql_path}")
    if timestamp:
        col = actual(timestamp)
        if col is None:
            error(f"timestamp column {timestamp!r} is not an output column; the model outputs: {', '.join(columns)}")
        elif types.logical_type(columns[col]) not in (types.TIMESTAMP, types.DATE):
            error(f"timestamp column {timestamp!r} has type {columns[col]}; it must be a timestamp or date")

    changed_at = meta.changed_at
    if changed_at is not None:
        col = actual(str(changed_at))
        if col is None:
            error(f"changed_at column {changed_at!r} is not an output column; the model outputs: {', '.join(columns)}")
        elif types.logical_type(columns[col]) != types.TIMESTAMP:
            error(f"changed_at column {changed_at!r} has type {columns[col]}; it must be a timestamp")
        changed_at = col
    excluded = {c.name.lower() for c in model.columns.values() if c.meta.get("feature") is False}
    skip = {k.lower() for k, _ in join_keys} | {str(timestamp).lower()} | excluded
    if changed_at:
        skip.add(changed_at.lower())
    features = []
    for col, wtype in columns.items():
        if col.lower() in skip:
            continue
        dtype = types.logical_type(wtype)
        if dtype is None:
            error(f"column {col!r} has type {wtype}, which featuremart cannot serve; cast it in {model.sql_path} "
                  f"to one of {', '.join(types.LOGICAL_TYPES)}, or opt it out with "
                  "config: {meta: {featuremart: {feature: false}}}")
            continue
        described = model.columns.get(col) or next((c for c in model.columns.values() if c.name.lower() == col.lower()), None)
        features.append(Feature(model.name, col, dtype, described.description if described else "", wtype))
    if not features and timestamp and columns:
        error("the model outputs no feature columns besides its keys and timestamp")

    if online:
        _check_tests(model, manifest, [k for k, _ in join_keys], timestamp, where, problems)
    if any(p.severity == "error" for p in problems[start:]):
        return None
    return FeatureView(
        name=model.name,
        entities=tuple(meta.entity),
        join_keys=tuple(join_keys),
        timestamp=actual(timestamp) or timestamp,
        ttl=ttl,
        features=tuple(features),
        relation=relation_of(model),
        online=online,
        owner=meta.owner,
        tier=tier,
        tags=tuple(meta.tags) + model.tags,
        description=model.description,
        freshness=freshness,
        sql_path=model.sql_path,
        yaml_path=model.yaml_path,
        model_id=model.unique_id,
        upstream=model.depends_on,
        changed_at=changed_at,
        ttl_text=ttl_text,
        max_delete_fraction=meta.max_delete_fraction,
    )


def _check_tests(model: Model, manifest: Manifest, keys: list[str], timestamp: Any, where: str,
                 problems: list[Problem]) -> None:
    """Warn when an online view lacks the generic tests that make its keys trustworthy."""
    attached = {t.name: t for t in manifest.tests_on(model.unique_id) if t.namespace in (None, "featuremart")}
    wanted = {
        "feature_keys_not_null": f"featuremart.feature_keys_not_null: {{arguments: {{keys: {keys}}}}}",
        "feature_keys_unique": (f"featuremart.feature_keys_unique: {{arguments: {{keys: {keys}, "
                                f"timestamp: {timestamp}}}}}"),
    }
    for name, snippet in wanted.items():
        test = attached.get(name)
        if test is None:
            problems.append(Problem("warning", where, f"model {model.name}: online feature view has no {name} test; "
                                    f"add under data_tests: - {snippet}"))
            continue
        got_keys = test.kwargs.get("keys")
        if got_keys is not None and [str(k).lower() for k in got_keys] != [k.lower() for k in keys]:
            problems.append(Problem("warning", where, f"model {model.name}: {name} tests keys {got_keys} but the "
                                    f"entity keys are {keys}"))


def _build_services(manifest: Manifest, views: dict[str, FeatureView], broken: set[str],
                    problems: list[Problem]) -> dict[str, FeatureService]:
    """Feature services from exposures of type ml; references to views that failed validation (already reported)
    are passed over rather than reported twice."""
    services = {}
    for exposure in sorted(manifest.exposures.values(), key=lambda e: e.name):
        if exposure.type != "ml":
            continue
        refs = exposure.meta.get("features")
        where = exposure.path
        if not refs:
            problems.append(Problem("warning", where, f"exposure {exposure.name} (type ml) lists no features under "
                                    "config.meta.featuremart.features, so it is not a feature service"))
            continue
        if not isinstance(refs, list):
            problems.append(Problem("error", where, f"exposure {exposure.name}: featuremart.features must be a list "
                                    "of view.feature strings"))
            continue
        resolved: list[Feature] = []
        for ref in refs:
            view_name, sep, feat = str(ref).partition(".")
            view = views.get(view_name)
            if not sep or not feat:
                problems.append(Problem("error", where, f"exposure {exposure.name}: feature {ref!r} should be "
                                        "written view.feature or view.*"))
            elif view is None and view_name in broken:
                continue
            elif view is None:
                problems.append(Problem("error", where, f"exposure {exposure.name}: feature {ref!r} names no valid "
                                        f"feature view; feature views: {', '.join(sorted(views)) or 'none'}"))
            elif feat == "*":
                resolved.extend(view.features)
            elif feat not in {f.name for f in view.features}:
                problems.append(Problem("error", where, f"exposure {exposure.name}: view {view_name} has no feature "
                                        f"{feat!r}; its features: {', '.join(f.name for f in view.features)}"))
            else:
                resolved.append(view.feature(feat))
        for view_name in dict.fromkeys(f.view for f in resolved):
            if not views[view_name].online:
                problems.append(Problem("warning", where, f"exposure {exposure.name}: view {view_name} is not online, "
                                        "so online reads of this service report its features as missing"))
        log = exposure.meta.get("log", False)
        if not isinstance(log, bool):
            problems.append(Problem("error", where, f"exposure {exposure.name}: featuremart.log must be true or "
                                    f"false, got {log!r}"))
        services[exposure.name] = FeatureService(exposure.name, tuple(dict.fromkeys(resolved)),
                                                 exposure.description, exposure.owner, where, log=log is True)
    return services


def output_names(features: Iterable[Feature], reserved: Iterable[str] = ()) -> list[str]:
    """Column names for requested features: the feature's name, or `<view>__<feature>` where another requested
    feature has the same name or the name is one of `reserved`, the join keys of the requested views.

    Online reads and training sets both name columns this way (the dbt macro `_pit_prepare` implements the
    same rule; tests/test_parity.py runs the same cases through both), so a model sees the same names in
    training and in serving: nothing else (a training spine's other columns) changes a name.

    Raises ValidationError when two outputs still collide (a feature named `a__x` beside `a.x` and `b.x`).
    """
    features = list(features)
    keys = {n.lower() for n in reserved}
    counts: dict[str, int] = {}
    for f in features:
        counts[f.name.lower()] = counts.get(f.name.lower(), 0) + 1
    names = [f"{f.view}__{f.name}" if counts[f.name.lower()] > 1 or f.name.lower() in keys else f.name
             for f in features]
    seen: dict[str, Feature] = {}
    for name, f in zip(names, features):
        other = seen.setdefault(name.lower(), f)
        if other is not f:
            raise ValidationError([f"the output column {name} of feature {f.ref} collides with the output column of "
                                   f"feature {other.ref}: rename one of the features"])
    return names

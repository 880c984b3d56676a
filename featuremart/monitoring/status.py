"""`featuremart status`: for every online feature view and every feature service, how fresh its data is at each
stage, judged against its freshness policy (the model's `freshness`, else its tier's in features.yml):

- source: the age of the newest data of the dbt sources it reads (target/sources.json, `dbt source freshness`);
- warehouse: the newest event time in its table (one UNION ALL query for every view) and its last build;
- online: the last publish and the online age, now minus the newest event time published (the sync's record);
- drift: the worst drift level (PSI, KS) of its features at the last publish against the one before, judged by
  the tier's thresholds (featuremart.monitoring.drift; the statistics history the sync keeps).

A service row is the worst of its views. docs/monitoring.md describes every figure and the JSON schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import reduce
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import sqlglot
from sqlglot import exp

from featuremart import sql
from featuremart.errors import FeaturemartError
from featuremart.monitoring.drift import Drift, latest_drift
from featuremart.monitoring.freshness import (ERROR, NA, OK, WARN, Published, SourceResult, from_us, judge,
                                              load_source_freshness, read_published, upstream_sources, utc, worst)
from featuremart.online import keys

if TYPE_CHECKING:  # pragma: no cover
    from featuremart.gate import NodeResult
    from featuremart.manifest import Manifest
    from featuremart.registry import FeatureService, FeatureView
    from featuremart.store import FeatureStore
    from featuremart.warehouse import Warehouse

#: The JSON document's format (docs/monitoring.md); bumped on an incompatible change.
FORMAT = 1
#: Views per UNION ALL statement: one statement at 100 views, and no deep expression tree at 10,000.
UNION_VIEWS = 200


@dataclass(frozen=True)
class Stage:
    """One stage's verdict: ok / warn / error / n/a, the age it judged (None: unknown) and why, for people."""

    status: str
    age: timedelta | None = None
    detail: str = ""

    def json(self) -> dict[str, Any]:
        return {"status": self.status, "age_seconds": _seconds(self.age), "detail": self.detail}


@dataclass(frozen=True)
class StatusRow:
    """A view's (or a service's: the worst of its views) freshness from source to online."""

    kind: str  # "view" | "service"
    name: str
    views: tuple[str, ...]
    tier: str | None
    owner: str | None
    warn_after: timedelta | None
    error_after: timedelta | None
    source: Stage
    source_newest: datetime | None  # the stalest upstream source's newest loaded_at
    sources: tuple[str, ...]  # the upstream sources with a freshness result
    warehouse: Stage
    warehouse_newest: datetime | None  # newest event time in the table
    last_build: datetime | None  # when its model last built successfully (None: unknown or never)
    online: Stage
    last_publish: datetime | None
    online_newest: datetime | None  # newest event time published
    entities: int | None  # entities with a live value at the last publish (views only)
    now: datetime = field(repr=False, default=datetime.min.replace(tzinfo=timezone.utc))
    drift: Stage = Stage(NA)
    features: dict[str, Drift] = field(default_factory=dict)  # each feature's drift (views only)

    @property
    def status(self) -> str:
        """The worst of the four stages."""
        return worst((self.source.status, self.warehouse.status, self.online.status, self.drift.status))

    def json(self) -> dict[str, Any]:
        since_publish = None if self.last_publish is None else self.now - self.last_publish
        return {
            "kind": self.kind, "name": self.name, "views": list(self.views), "tier": self.tier, "owner": self.owner,
            "status": self.status,
            "policy": {"warn_after_seconds": _seconds(self.warn_after),
                       "error_after_seconds": _seconds(self.error_after)},
            "source": {**self.source.json(), "newest": _iso(self.source_newest), "sources": list(self.sources)},
            "warehouse": {**self.warehouse.json(), "newest_event": _iso(self.warehouse_newest),
                          "last_build": _iso(self.last_build)},
            "online": {**self.online.json(), "newest_event": _iso(self.online_newest),
                       "last_publish": _iso(self.last_publish), "seconds_since_publish": _seconds(since_publish),
                       "entities": self.entities},
            "drift": {"status": self.drift.status, "detail": self.drift.detail,
                      "features": {name: d.to_json() for name, d in sorted(self.features.items())}},
        }


@dataclass(frozen=True)
class StatusReport:
    now: datetime
    rows: list[StatusRow]

    @property
    def status(self) -> str:
        return worst(r.status for r in self.rows)

    @property
    def breached(self) -> bool:
        """Whether any row is at error level (the CLI then exits non-zero)."""
        return any(r.status == ERROR for r in self.rows)

    def json(self) -> dict[str, Any]:
        return {"format": FORMAT, "generated_at": _iso(self.now), "status": self.status,
                "rows": [r.json() for r in self.rows]}


# -- collecting ----------------------------------------------------------------------------------------------

def collect(store: FeatureStore, views: Sequence[FeatureView], now: datetime | None = None) -> StatusReport:
    """The status of `views` (the selected online views) and of every service that reads any of them.

    Reads target/manifest.json, target/sources.json, the build results (featuremart.gate), one UNION ALL of
    `max(timestamp)` in the warehouse and one GET of the publish record in the online store."""
    from featuremart.gate import BuildGate

    now = utc(now) if now is not None else datetime.now(timezone.utc)
    registry = store.registry
    manifest = store.manifest()
    chosen = {v.name for v in views}
    services = [s for s in sorted(registry.services.values(), key=lambda s: s.name) if set(s.view_names) & chosen]
    needed = {v.name: v for v in views}
    for service in services:
        for name in service.view_names:
            needed.setdefault(name, registry.views[name])
    with store.warehouse() as wh:
        newest = newest_events(wh, list(needed.values()))
        builds = BuildGate.load(store.project, manifest, wh).results
    sources = load_source_freshness(store.project.target_dir)
    published, unreachable = _published(store)
    drift, drift_unread = _drift(store, list(needed.values())) if not unreachable else ({}, unreachable)
    rows = {name: view_row(view, now, manifest=manifest, sources=sources, newest_us=newest.get(name),
                           build=builds.get(view.model_id), published=published.get(name), unreachable=unreachable,
                           drift=drift.get(name), drift_unread=drift_unread)
            for name, view in needed.items()}
    out = [rows[v.name] for v in sorted(views, key=lambda v: v.name)]
    out += [service_row(s, [rows[n] for n in s.view_names], now) for s in services]
    return StatusReport(now, out)


def _published(store: FeatureStore) -> tuple[dict[str, Published], str]:
    """The publish record, and '' or why the online store could not be read (then every online stage is error)."""
    try:
        online = store.online
        return read_published(online.get_bytes(keys.published_key(online.prefix))), ""
    except FeaturemartError as exc:
        return {}, f"online store unreadable: {exc}"


def _drift(store: FeatureStore, views: Sequence[FeatureView]) -> tuple[dict[str, dict[str, Drift]], str]:
    """Each view's drift at its last publish (one read of its statistics history), and '' or why it could not be
    read."""
    try:
        return latest_drift(store.online, views, store.config.tiers), ""
    except FeaturemartError as exc:
        return {}, f"statistics history unreadable: {exc}"


def newest_events_query(views: Sequence[FeatureView], dialect: str) -> exp.Expression:
    """`select '<view>' as view, <epoch µs>(max(<timestamp>)) as newest_us from <relation> union all ...`:
    one statement for every view (epoch microseconds: a UTC instant whatever the column's type and the
    session's time zone)."""
    selects = [sqlglot.select(exp.Literal.string(v.name).as_("view"),
                              sql.epoch_us(exp.Max(this=sql.col(v.timestamp)), dialect).as_("newest_us"))
               .from_(sql.table(v.relation)) for v in views]
    return reduce(lambda a, b: exp.union(a, b, distinct=False, copy=False), selects)  # no copy: linear, not quadratic


def newest_events(wh: Warehouse, views: Sequence[FeatureView]) -> dict[str, int | None]:
    """The newest event time (epoch µs, None for an empty table) of each view, in one query per UNION_VIEWS."""
    found: dict[str, int | None] = {}
    for start in range(0, len(views), UNION_VIEWS):
        chunk = views[start:start + UNION_VIEWS]
        for row in wh.records(sql.render(newest_events_query(chunk, wh.dialect), wh.dialect)):
            found[row["view"]] = None if row["newest_us"] is None else int(row["newest_us"])
    return found


def view_row(view: FeatureView, now: datetime, *, manifest: Manifest, sources: dict[str, SourceResult],
             newest_us: int | None, build: NodeResult | None, published: Published | None,
             unreachable: str = "", drift: dict[str, Drift] | None = None, drift_unread: str = "") -> StatusRow:
    """One view's row from the facts gathered for it."""
    policy = view.freshness
    source, source_newest, names = _source_stage(view, now, manifest, sources)
    newest = from_us(newest_us)
    warehouse, last_build = _warehouse_stage(view, now, newest, build)
    online = _online_stage(view, now, published, unreachable)
    return StatusRow(
        "view", view.name, (view.name,), view.tier, view.owner, policy.warn_after, policy.error_after,
        source, source_newest, names, warehouse, newest, last_build, online,
        published.published_at if published else None, published.newest_event if published else None,
        published.entities if published else None, now, _drift_stage(view, drift, drift_unread), dict(drift or {}))


def _source_stage(view: FeatureView, now: datetime, manifest: Manifest,
                  results: dict[str, SourceResult]) -> tuple[Stage, datetime | None, tuple[str, ...]]:
    upstream = upstream_sources(manifest.models, manifest.sources, view.model_id)
    checked = sorted((uid for uid in upstream if uid in results), key=lambda uid: manifest.sources[uid].name)
    names = tuple(manifest.sources[uid].name for uid in checked)
    if not upstream:
        return Stage(NA, None, "reads no dbt source"), None, names
    if not results:
        return Stage(NA, None, "no target/sources.json: run `dbt source freshness`"), None, names
    if not checked:
        return Stage(NA, None, "no upstream source declares freshness"), None, names
    failed = [uid for uid in checked if results[uid].max_loaded_at is None]
    if failed:
        first = results[failed[0]]
        return Stage(ERROR, None, f"`dbt source freshness` failed on {manifest.sources[first.unique_id].name}: "
                                  f"{first.error or first.status}"), None, names
    stalest = min(results[uid].max_loaded_at for uid in checked)  # type: ignore[type-var]
    age = now - stalest
    level = judge(age, view.freshness)
    detail = "" if level == OK else f"newest data of {len(checked)} source(s) {human_age(age)} old"
    return Stage(level, age, detail), stalest, names


def _warehouse_stage(view: FeatureView, now: datetime, newest: datetime | None,
                     build: NodeResult | None) -> tuple[Stage, datetime | None]:
    age = None if newest is None else now - newest
    if build is None:
        return Stage(ERROR, age, f"model never built: run `dbt build -s {view.name}`"), None
    built = utc(build.completed_at)
    if build.status == "empty":
        return Stage(WARN, age, f"last built with --empty at {shown(built)}"), None
    if build.status != "success":
        return Stage(ERROR, age, f"latest build failed at {shown(built)} ({build.status}); the table holds an "
                                 "older build's rows"), None
    if newest is None:
        return Stage(NA, None, f"no rows in {view.relation}"), built
    level = judge(age, view.freshness)
    return Stage(level, age, "" if level == OK else f"newest event {human_age(age)} old"), built


def _online_stage(view: FeatureView, now: datetime, published: Published | None, unreachable: str) -> Stage:
    if not view.online:
        return Stage(NA, None, "online: false")
    if unreachable:
        return Stage(ERROR, None, unreachable)
    if published is None:
        return Stage(NA, None, "never published: run `featuremart sync`")
    if published.newest_event is None:
        return Stage(NA, None, "published with no live values")
    age = now - published.newest_event
    level = judge(age, view.freshness)
    return Stage(level, age, "" if level == OK else f"newest value online {human_age(age)} old")


def _drift_stage(view: FeatureView, drift: dict[str, Drift] | None, unread: str) -> Stage:
    """The worst drift level of the view's features at its last publish (n/a before two publishes)."""
    if not view.online:
        return Stage(NA, None, "online: false")
    if unread:
        return Stage(ERROR, None, unread)
    if not drift:
        return Stage(NA, None, "no statistics history yet: drift needs two publishes")
    level = worst(d.level for d in drift.values())
    beyond = [f"{name} {_figures(d)} ({d.level})" for name, d in sorted(drift.items()) if d.level in (WARN, ERROR)]
    return Stage(level, None, "drift against the previous publish: " + ", ".join(beyond) if beyond else "")


def _figures(d: Drift) -> str:
    return " ".join(f"{name} {value:.3f}" for name, value in (("PSI", d.psi), ("KS", d.ks)) if value is not None)


def service_row(service: FeatureService, rows: Sequence[StatusRow], now: datetime) -> StatusRow:
    """A service judged by its views: each stage the worst of theirs, each age the oldest, each time the
    earliest (the stalest view is what limits the model)."""
    def stage(which: str) -> Stage:
        stages = [(r.name, getattr(r, which)) for r in rows]
        details = [f"{name}: {s.detail}" for name, s in stages if s.status in (WARN, ERROR) and s.detail]
        return Stage(worst(s.status for _, s in stages), _max(s.age for _, s in stages), "; ".join(details))

    def earliest(values: Iterable[datetime | None]) -> datetime | None:
        known = [v for v in values if v is not None]
        return min(known) if known else None

    return StatusRow(
        "service", service.name, tuple(r.name for r in rows), None, service.owner,
        _min(r.warn_after for r in rows), _min(r.error_after for r in rows),
        stage("source"), earliest(r.source_newest for r in rows), tuple(sorted({s for r in rows for s in r.sources})),
        stage("warehouse"), earliest(r.warehouse_newest for r in rows), earliest(r.last_build for r in rows),
        stage("online"), earliest(r.last_publish for r in rows), earliest(r.online_newest for r in rows), None, now,
        stage("drift"))


# -- showing -------------------------------------------------------------------------------------------------

HEADERS = ("kind", "name", "tier", "source age", "newest event", "age", "last build", "last publish",
           "online age", "drift", "status")


def table_rows(report: StatusReport) -> list[tuple[str, ...]]:
    """The report as text cells, in HEADERS order (the terminal table and the plain text share them)."""
    return [(r.kind, r.name, r.tier or "-", _cell(r.source), shown(r.warehouse_newest), _cell(r.warehouse),
             shown(r.last_build), shown(r.last_publish), _cell(r.online), r.drift.status, r.status)
            for r in report.rows]


def notes(report: StatusReport) -> list[str]:
    """One line per stage that is not ok, saying why (views only: a service's notes repeat its views')."""
    return [f"{r.name}: {which}: {stage.detail}" for r in report.rows if r.kind == "view"
            for which, stage in (("source", r.source), ("warehouse", r.warehouse), ("online", r.online),
                                 ("drift", r.drift))
            if stage.detail and stage.status != OK]


def plain_text(report: StatusReport) -> str:
    """Columns padded with spaces, no box drawing or colour: for CI logs and files."""
    cells = [HEADERS, *table_rows(report)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.append(f"status at {shown(report.now)}: {report.status}")
    return "\n".join(lines + notes(report)) + "\n"


def rich_table(report: StatusReport) -> Any:
    """A rich Table for a terminal, statuses coloured; notes in its caption."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"featuremart status at {shown(report.now)}: {report.status}")
    for header in HEADERS:
        table.add_column(header, no_wrap=header != "name", overflow="fold")
    for cells in table_rows(report):
        table.add_row(*cells[:-1], Text(cells[-1], style=_STYLE[cells[-1]]))
    if notes(report):
        table.caption = "\n".join(escape(n) for n in notes(report))
        table.caption_justify = "left"
    return table


_STYLE = {OK: "green", WARN: "yellow", ERROR: "bold red", NA: "dim"}


def human_age(age: timedelta | None) -> str:
    """An age for people: 45s, 12m, 5.5h, 3.2d; '-' when unknown."""
    if age is None:
        return "-"
    seconds = age.total_seconds()
    if abs(seconds) < 120:
        return f"{seconds:.0f}s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.0f}m"
    if abs(seconds) < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _cell(stage: Stage) -> str:
    return human_age(stage.age) if stage.age is not None else NA


def shown(moment: datetime | None) -> str:
    """A time for people: `2026-01-31 12:00:00 UTC`; '-' when unknown."""
    return utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "-"


def _iso(moment: datetime | None) -> str | None:
    return utc(moment).isoformat() if moment is not None else None


def _seconds(age: timedelta | None) -> float | None:
    return None if age is None else round(age.total_seconds(), 3)


def _max(values: Iterable[timedelta | None]) -> timedelta | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _min(values: Iterable[timedelta | None]) -> timedelta | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None

"""`featuremart report --output DIR`: a static HTML site of the feature store that works offline (no server,
no CDN, no JavaScript): an index of services → views → features with owners, tiers, tags, descriptions and
lineage to dbt sources, each view's freshness row, and per feature a histogram and a drift-over-time chart drawn
as inline SVG by this module.

Every figure comes from the functions the commands print: a view's freshness row is `featuremart status`'s
(`status.collect`), a feature's statistics and drift are `featuremart stats --json`'s (`summary.view_summary`).
Pages are jinja2 templates (templates/report/) with autoescape on: names, descriptions and category values are
the user's text. docs/monitoring.md describes the site.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from featuremart.errors import FeaturemartError, ReportError
from featuremart.monitoring.drift import view_thresholds
from featuremart.monitoring.freshness import lineage
from featuremart.monitoring.stats import CATEGORY, NUMBER
from featuremart.monitoring.status import StatusRow, collect, human_age, shown
from featuremart.monitoring.summary import RUNS_SHOWN, number_text, percent_text, view_summary

if TYPE_CHECKING:  # pragma: no cover
    from featuremart.manifest import Manifest
    from featuremart.registry import FeatureView
    from featuremart.store import FeatureStore

#: The site's pages: the index, and one page per feature view (`view_page`).
INDEX = "index.html"
#: A chart's size and the margins around its plot in SVG user units (the page scales it to its column); the
#: left margin holds the y axis labels.
WIDTH, HEIGHT, MARGIN, LEFT = 360, 140, 24, 48


@dataclass(frozen=True)
class Site:
    """What `write_site` wrote: the directory, its pages, and (view, why) for each view shown without statistics."""

    output: Path
    pages: tuple[str, ...]
    without_stats: tuple[tuple[str, str], ...]


def view_page(name: str) -> str:
    """A view's page file name: `view-<name>.html`, or a digest when the name is not a plain identifier."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        return f"view-{name}.html"
    return f"view-{hashlib.sha256(name.encode()).hexdigest()[:16]}.html"


def write_site(store: FeatureStore, output: str | Path, views: Sequence[FeatureView] | None = None,
               *, runs: int = RUNS_SHOWN, now: datetime | None = None) -> Site:
    """Write the report of `views` (default: every feature view) and the services reading them into `output`.

    The directory is checked for writing first, every page is rendered in memory, then each is written to a
    temporary file and renamed over the old one (a reader never sees half a page). Raises ReportError when
    `output` cannot be written, and what `status` or `stats` raise when the project or the store cannot be read.
    """
    out = _writable(Path(output))
    registry = store.registry
    manifest = store.manifest()
    chosen = sorted(views if views is not None else registry.views.values(), key=lambda v: v.name)
    status = collect(store, [v for v in chosen if v.online], now)
    rows = {(r.kind, r.name): r for r in status.rows}
    pages, index_views, missing = {}, [], []
    for view in chosen:
        stats, why = _stats(store, view, runs)
        if stats is None:
            missing.append((view.name, why))
        facts = _view_facts(view, manifest, rows.get(("view", view.name)), stats, why,
                            view_thresholds(view, store.config.tiers))
        index_views.append(facts)
        pages[view_page(view.name)] = _render("view.html", view=facts, generated=shown(status.now), index=INDEX)
    names = {v.name for v in chosen}
    services = [{"name": s.name, "owner": s.owner, "description": s.description,
                 "row": _row(rows.get(("service", s.name))),
                 "views": [{"name": n, "page": view_page(n) if n in names else None} for n in s.view_names],
                 "features": [f.ref for f in s.features]}
                for s in sorted(registry.services.values(), key=lambda s: s.name) if set(s.view_names) & names]
    pages[INDEX] = _render("index.html", project=store.project.name, generated=shown(status.now),
                           status=status.status, services=services, views=index_views)
    for name, html in pages.items():
        _write(out / name, html)
    return Site(out, tuple(sorted(pages)), tuple(missing))


# -- gathering ---------------------------------------------------------------------------------------------------

def _stats(store: FeatureStore, view: FeatureView, runs: int) -> tuple[dict[str, Any] | None, str]:
    """`featuremart stats VIEW --json`'s document, or None and why (no statistics recorded yet, offline view)."""
    if not view.online:
        return None, "online: false (statistics are computed by `featuremart sync`, which publishes online views)"
    try:
        return view_summary(store.online, view, runs=runs, thresholds=view_thresholds(view, store.config.tiers)), ""
    except FeaturemartError as exc:  # none recorded yet, or the store unreadable: said on the page, as status does
        return None, str(exc)


def _view_facts(view: FeatureView, manifest: Manifest, row: StatusRow | None, stats: Mapping[str, Any] | None,
                why: str, thresholds: Any) -> dict[str, Any]:
    models, sources = lineage(manifest.models, manifest.sources, view.model_id)
    features = []
    for f in view.features:
        entry = (stats or {}).get("features", {}).get(f.name)
        features.append({"name": f.name, "dtype": f.dtype, "description": f.description,
                         **(_feature_charts(entry, thresholds) if entry else {"stats": None})})
    return {
        "name": view.name, "page": view_page(view.name), "owner": view.owner, "tier": view.tier,
        "tags": list(view.tags), "description": view.description, "entities": list(view.entities),
        "keys": [k for k, _ in view.join_keys], "timestamp": view.timestamp, "ttl": view.ttl_label,
        "online": view.online, "relation": str(view.relation), "sql_path": view.sql_path,
        "sources": sorted(manifest.sources[s].name for s in sources),
        "models": sorted(manifest.models[m].name for m in models if m in manifest.models),
        "row": _row(row), "stats": stats, "why": why, "features": features,
    }


def _row(row: StatusRow | None) -> dict[str, Any] | None:
    """A freshness row as the pages show it: each stage's level, age and detail, and the times."""
    if row is None:
        return None
    stages = [(name, getattr(row, name)) for name in ("source", "warehouse", "online", "drift")]
    return {"status": row.status,
            "stages": [{"name": n, "status": s.status, "age": human_age(s.age) if s.age is not None else "",
                        "detail": s.detail} for n, s in stages],
            "times": [("newest source data", shown(row.source_newest)),
                      ("newest event", shown(row.warehouse_newest)), ("last build", shown(row.last_build)),
                      ("last publish", shown(row.last_publish)), ("newest event online", shown(row.online_newest))],
            "entities": row.entities, "sources": list(row.sources)}


# -- charts (inline SVG, drawn here) --------------------------------------------------------------------------------

def _feature_charts(entry: Mapping[str, Any], thresholds: Any) -> dict[str, Any]:
    latest, history = entry["latest"], entry["history"]
    return {"stats": latest, "figures": _figures(latest), "histogram": histogram_chart(latest),
            "drift": drift_chart(history, thresholds), "history": history}


def _figures(s: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(label, text, exact value) of a feature's latest statistics, in the order the page lists them."""
    out = [("count", number_text(s["count"]), s["count"]),
           ("null fraction", percent_text(s["null_fraction"]), s["null_fraction"])]
    if s["kind"] == NUMBER:
        out += [(name, number_text(s.get(name)), s.get(name)) for name in ("mean", "stddev", "min", "max")]
        out += [(q, number_text(v), v) for q, v in (s.get("quantiles") or {}).items()]
    elif s["kind"] == CATEGORY:
        out.append(("distinct", number_text(s.get("distinct")), s.get("distinct")))
    else:
        for part in ("length", "norm"):
            out += [(f"{part} {k}", number_text(v), v) for k, v in (s.get(part) or {}).items()]
    return out


def histogram_chart(s: Mapping[str, Any]) -> dict[str, Any] | None:
    """Bars of a number's histogram (its equal-width bins) or a category's top values plus "other"; None for
    arrays and for a profile with no values. Each bar keeps its exact count for the page's data attributes."""
    if s["kind"] == NUMBER and s.get("histogram"):
        h = s["histogram"]
        counts, lo, hi = h["counts"], h["lo"], h["hi"]
        step = (hi - lo) / len(counts) if counts else 0
        labels = [f"[{number_text(lo + i * step)}, {number_text(lo + (i + 1) * step)}"
                  f"{']' if i == len(counts) - 1 else ')'}" for i in range(len(counts))]
        axis = (number_text(lo), number_text(hi))
    elif s["kind"] == CATEGORY and s.get("top"):
        labels = [str(value) for value, _n in s["top"]]
        counts = [n for _value, n in s["top"]]
        other = s["count"] - sum(counts)
        if other:
            labels, counts = [*labels, "(other)"], [*counts, other]
        axis = ("", "")
    else:
        return None
    return {"bars": _bars(counts, labels), "axis": axis, "peak": max(counts), **_frame()}


def _bars(counts: Sequence[int], labels: Sequence[str]) -> list[dict[str, Any]]:
    peak = max(counts) or 1
    inner_w, inner_h = WIDTH - LEFT - MARGIN, HEIGHT - 2 * MARGIN
    width = inner_w / len(counts)
    bars = []
    for i, (n, label) in enumerate(zip(counts, labels)):
        h = inner_h * n / peak
        bars.append({"x": round(LEFT + i * width + 1, 2), "y": round(MARGIN + inner_h - h, 2),
                     "w": round(max(width - 2, 1), 2), "h": round(h, 2), "count": n, "label": label})
    return bars


def drift_chart(history: Sequence[Mapping[str, Any]], thresholds: Any) -> dict[str, Any] | None:
    """PSI (and KS for numbers) of each run against the one before, oldest run left, with the tier's warn and
    error PSI thresholds as lines; runs without a figure (the first publish) are gaps. None with no figure."""
    runs = list(reversed(history))
    if not any(r.get("psi") is not None for r in runs):
        return None
    top = max([thresholds.psi_error * 1.25, *(r[k] for r in runs for k in ("psi", "ks") if r.get(k) is not None)])
    inner_w, inner_h = WIDTH - LEFT - MARGIN, HEIGHT - 2 * MARGIN
    step = inner_w / max(len(runs) - 1, 1)

    def y(value: float) -> float:
        return round(MARGIN + inner_h * (1 - value / top), 2)

    series = {}
    for key in ("psi", "ks"):
        points = [{"x": round(LEFT + i * step, 2), "y": y(r[key]), "value": r[key], "level": r.get("level"),
                   "run": r.get("run_id"), "as_of": r.get("as_of")} for i, r in enumerate(runs)
                  if r.get(key) is not None]
        series[key] = {"points": points, "path": " ".join(f"{p['x']},{p['y']}" for p in points)}
    return {"series": series, "runs": len(runs), "scale": number_text(top),
            "warn": {"value": thresholds.psi_warn, "y": y(thresholds.psi_warn)},
            "error": {"value": thresholds.psi_error, "y": y(thresholds.psi_error)},
            "first": (runs[0].get("as_of") or "")[:16], "last": (runs[-1].get("as_of") or "")[:16], **_frame()}


def _frame() -> dict[str, int]:
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "top": MARGIN, "bottom": HEIGHT - MARGIN,
            "right": WIDTH - MARGIN}


# -- files ---------------------------------------------------------------------------------------------------------

def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


_ENV = None


def _environment() -> Any:
    """The templates' jinja2 environment: autoescape on for every page (user text is escaped)."""
    global _ENV
    if _ENV is None:
        import jinja2

        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates") / "report"),
                                  autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined)
        _ENV.filters.update(num=number_text, pct=percent_text)
    return _ENV


def _writable(out: Path) -> Path:
    """`out`, created if needed and checked for writing (a probe file), before any work is done."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"--output {out}: it is a file, not a directory; name a directory for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".fm-report-probe-"):
            pass
    except OSError as exc:
        raise ReportError(f"--output {out}: cannot write there ({exc.strerror or exc}); choose a directory you "
                          "can write, or fix its permissions") from None
    return out.resolve()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # opened as usual: the user's umask applies
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"--output {path.parent}: cannot write {path.name} ({exc.strerror or exc})") from None

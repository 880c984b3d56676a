"""What `featuremart stats VIEW[.FEATURE]` shows: a view's latest statistics, how they changed over its last
runs, and drift against the previous publish and (optionally) a baseline. Reads only; writes nothing."""

from __future__ import annotations

from typing import Any, Callable

from featuremart.config import DriftThresholds
from featuremart.durable import StatsHistory
from featuremart.errors import StatsError
from featuremart.monitoring.drift import Drift, record_drift
from featuremart.monitoring.stats import NUMBER, CATEGORY, STATS_ENV
from featuremart.registry import Feature, FeatureView

#: The runs `featuremart stats` shows by default.
RUNS_SHOWN = 10


def view_summary(online: Any, view: FeatureView, feature: Feature | None = None, *, runs: int = RUNS_SHOWN,
                 thresholds: DriftThresholds = DriftThresholds(),
                 baseline: Callable[[list[Feature], dict[str, Any]], tuple[int, dict[str, Drift]]] | None = None,
                 baseline_text: str = "") -> dict[str, Any]:
    """The JSON `featuremart stats --json` prints. `baseline(features, latest)`: the baseline's (rows, drift)."""
    records = StatsHistory(online).read(view.name, runs)
    if not records:
        raise StatsError(f"no statistics recorded for view {view.name} yet: run `featuremart sync` (statistics "
                         f"are computed unless {STATS_ENV}=off)")
    latest = records[0]
    wanted = [feature] if feature else [f for f in view.features if f.name in latest["features"]]
    if feature is not None and feature.name not in latest["features"]:
        raise StatsError(f"no statistics recorded for feature {feature.ref} yet (it was not in the view's last "
                         f"publish, {latest.get('as_of')}): run `featuremart sync`")
    compared = None
    if baseline is not None:
        rows, drift = baseline(wanted, latest["features"])
        compared = {"baseline": baseline_text, "rows": rows, "drift": {n: d.to_json() for n, d in drift.items()}}
    features = {}
    for f in wanted:
        history = []
        for record in records:
            stats = record["features"].get(f.name)
            if stats is None:
                continue
            drift = record_drift(record, thresholds).get(f.name, Drift(None, None, "n/a"))
            history.append({"run_id": record.get("run_id"), "as_of": record.get("as_of"), **_headline(stats),
                            **drift.to_json()})
        features[f.name] = {"latest": latest["features"][f.name], "history": history}
    return {"view": view.name, "version": latest.get("version"), "as_of": latest.get("as_of"),
            "run_id": latest.get("run_id"), "entities": latest.get("entities"), "rows": latest.get("rows"),
            "sample": latest.get("sample", 1.0), "features": features,
            "runs": [{"run_id": r.get("run_id"), "as_of": r.get("as_of"), "entities": r.get("entities"),
                      "rows": r.get("rows")} for r in records],
            "baseline": compared}


def _headline(stats: dict[str, Any]) -> dict[str, Any]:
    """The few figures of a run shown in a feature's history."""
    out = {"count": stats.get("count"), "null_fraction": stats.get("null_fraction")}
    if stats["kind"] == NUMBER:
        out.update(mean=stats.get("mean"), stddev=stats.get("stddev"), p50=(stats.get("quantiles") or {}).get("p50"))
    elif stats["kind"] == CATEGORY:
        out.update(distinct=stats.get("distinct"), top=(stats.get("top") or [[None]])[0][0] if stats.get("top")
                   else None)
    else:
        out.update(mean_length=(stats.get("length") or {}).get("mean"), mean_norm=(stats.get("norm") or {}).get(
            "mean"))
    return out


def number_text(value: Any) -> str:
    """A figure for people: 4 significant digits for floats, integers whole, n/a for None."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent_text(value: float | None) -> str:
    """A share for people: 12.5%, n/a for None."""
    return "n/a" if value is None else f"{value:.1%}"

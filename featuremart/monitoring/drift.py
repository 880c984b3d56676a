"""Drift of a feature between two profiles: PSI on shared bins, and for numbers the Kolmogorov–Smirnov statistic.

Bins (docs/monitoring.md): both sides are counted on the *reference* profile's bins.
- number: an open-ended bin below the reference's min, its BINS equal-width bins over [min, max], an
  open-ended bin above its max, and a bin of nulls. A constant reference (min = max) has below / equal / above.
- category: the reference's top values, one bin "other" for every other value, and a bin of nulls.
PSI = Σ (a - e) · ln(a / e) over the bins' shares, a share of 0 taken as EPSILON. KS = the largest gap between the
two cumulative distributions of non-null values at the bins' edges (the exact KS of values binned this way: a
lower bound of the KS of the raw values, equal to it when no bin holds values of both sides' steps).
Either figure is None ("n/a") when a side has no rows (PSI) or no non-null value (KS), or for arrays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from featuremart.config import DriftThresholds
from featuremart.monitoring.stats import CATEGORY, NUMBER

#: The share a bin with no value gets in PSI (ln 0 is undefined); 1e-4 is the customary choice.
EPSILON = 1e-4
OK, WARN, ERROR, NA = "ok", "warn", "error", "n/a"
_RANK = {NA: 0, OK: 1, WARN: 2, ERROR: 3}


@dataclass(frozen=True)
class Drift:
    """One feature's drift against a reference: PSI, KS (numbers) and the worse of their levels."""

    psi: float | None
    ks: float | None
    level: str  # ok | warn | error | n/a

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = EPSILON) -> float | None:
    """Population stability index of two histograms on the same bins (counts); None if either is empty."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        return None
    total = 0.0
    for e, a in zip(expected, actual):
        p, q = max(e / e_total, epsilon), max(a / a_total, epsilon)
        total += (q - p) * math.log(q / p)
    return total


def ks(expected: Sequence[float], actual: Sequence[float]) -> float | None:
    """Largest gap between the cumulative shares of two histograms on the same ordered bins; None if empty."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        return None
    gap = e_cum = a_cum = 0.0
    for e, a in zip(expected, actual):
        e_cum, a_cum = e_cum + e, a_cum + a
        gap = max(gap, abs(e_cum / e_total - a_cum / a_total))
    return gap


def bins(reference: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[list[int], list[int]] | None:
    """The reference's and the current profile's counts on the reference's bins, nulls last (None: no bins,
    e.g. an array feature, a kind that changed, or a current profile not counted on this reference)."""
    counted = current.get("reference_counts")
    if counted is None or reference.get("kind") != current.get("kind"):
        return None
    if reference["kind"] == NUMBER:
        histogram = reference.get("histogram") or {"counts": [0] * (len(counted) - 2)}
        expected = [0, *histogram["counts"], 0]
    elif reference["kind"] == CATEGORY:
        top = [n for _value, n in reference.get("top") or []]
        expected = [*top, reference["count"] - sum(top)]
        counted = [*counted, current["count"] - sum(counted)]
    else:
        return None
    return [*expected, reference["nulls"]], [*counted, current["nulls"]]


def compare(reference: Mapping[str, Any], current: Mapping[str, Any], thresholds: DriftThresholds) -> Drift:
    """The drift of one feature from its reference profile to the current one (counted on the reference's bins)."""
    counts = bins(reference, current)
    if counts is None:
        return Drift(None, None, NA)
    expected, actual = counts
    p = psi(expected, actual)
    k = ks(expected[:-1], actual[:-1]) if reference["kind"] == NUMBER else None
    return Drift(_round(p), _round(k), level(p, k, thresholds))


def compare_profiles(reference: Mapping[str, Any] | None, current: Mapping[str, Any],
                     thresholds: DriftThresholds) -> dict[str, Drift]:
    """Per feature of `current` (a profile's "features"): its drift from `reference` ("n/a" where it has none)."""
    reference = reference or {}
    return {name: compare(reference[name], stats, thresholds) if name in reference else Drift(None, None, NA)
            for name, stats in current.items()}


def level(psi_value: float | None, ks_value: float | None, thresholds: DriftThresholds) -> str:
    """ok / warn / error: the worse of the PSI's and the KS's levels; n/a when neither is known."""
    levels = [_level(psi_value, thresholds.psi_warn, thresholds.psi_error),
              _level(ks_value, thresholds.ks_warn, thresholds.ks_error)]
    return max(levels, key=_RANK.__getitem__)


def worst(levels: Iterable[str]) -> str:
    """The worst of some levels (n/a when there are none)."""
    return max(levels, key=_RANK.__getitem__, default=NA)


def latest_drift(online: Any, views: Iterable[Any], tiers: Mapping[str, Any] | None = None
                 ) -> dict[str, dict[str, Drift]]:
    """Per view, per feature: the drift of the last publish against the one before, judged by the view's tier's
    thresholds (`tiers`: features.yml's, by name; defaults where absent). A view with no history is absent;
    a feature of the first publish is "n/a". For `featuremart status` and `/metrics`."""
    from featuremart.durable import StatsHistory

    history = StatsHistory(online)
    out: dict[str, dict[str, Drift]] = {}
    for view in views:
        records = history.read(view.name, 1)
        if not records:
            continue
        out[view.name] = record_drift(records[0], view_thresholds(view, tiers))
    return out


def view_thresholds(view: Any, tiers: Mapping[str, Any] | None) -> DriftThresholds:
    """The drift thresholds of `view`: its tier's in features.yml (`tiers`, by name), else the defaults."""
    tier = (tiers or {}).get(view.tier) if view.tier else None
    return tier.drift if tier else DriftThresholds()


def record_drift(record: Mapping[str, Any], thresholds: DriftThresholds) -> dict[str, Drift]:
    """The drift a history record holds (its figures against the publish before it), levels by `thresholds`."""
    out = {}
    for name, figures in (record.get("drift") or {}).items():
        p, k = figures.get("psi"), figures.get("ks")
        out[name] = Drift(p, k, level(p, k, thresholds))
    return out


def _level(value: float | None, warn: float, error: float) -> str:
    if value is None:
        return NA
    return ERROR if value >= error else WARN if value >= warn else OK


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)

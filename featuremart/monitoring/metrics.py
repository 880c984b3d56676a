"""Prometheus gauges of online freshness for `featuremart serve`'s `/metrics`, computed on scrape from the sync's
publish record (one GET of `<prefix>:meta:{<prefix>}:published`) and each published view's newest statistics
record (one LRANGE per view): no warehouse, no dbt, nothing on the read path.

    featuremart_view_online_age_seconds{view="..."}          now - newest event time published
    featuremart_view_seconds_since_publish{view="..."}       now - the last sync that published the view
    featuremart_view_entities_published{view="..."}         entities with a live value at that publish
    featuremart_feature_drift_psi{view="...",feature="..."}  PSI of the last publish against the one before
    featuremart_feature_drift_ks{view="...",feature="..."}   KS statistic of the same (numbers)

Written by hand in the text exposition format 0.0.4, like the server's request metrics beside it: three gauges
need no library, and each worker answers for the store, not for itself (no multiprocess registry to merge).
"""

from __future__ import annotations

from datetime import datetime, timezone

from featuremart.config import DriftThresholds
from featuremart.durable import StatsHistory
from featuremart.monitoring.drift import Drift, record_drift
from featuremart.monitoring.freshness import read_published
from featuremart.online import keys
from featuremart.online.store import OnlineStore

GAUGES = (
    ("featuremart_view_online_age_seconds",
     "Seconds between now and the newest event time the last sync published for the view."),
    ("featuremart_view_seconds_since_publish", "Seconds since a sync last published the view."),
    ("featuremart_view_entities_published", "Entities with a live (unexpired) value when the view was last published."),
)


DRIFT_GAUGES = (
    ("featuremart_feature_drift_psi", "psi",
     "Population stability index of the feature at the view's last publish against the publish before it."),
    ("featuremart_feature_drift_ks", "ks",
     "Kolmogorov-Smirnov statistic of the feature at the view's last publish against the publish before it."),
)


def read_record(store: OnlineStore) -> tuple[bytes | None, dict[str, dict[str, Drift]]]:
    """The raw publish record (one GET) and, for each view in it, its drift at the last publish (one LRANGE per
    view); a scrape renders them with `render`."""
    raw = store.get_bytes(keys.published_key(store.prefix))
    history = StatsHistory(store)
    drift = {}
    for view in read_published(raw):
        records = history.read(view, 1)
        if records:  # levels need the tier's thresholds; the gauges carry the figures only
            drift[view] = record_drift(records[0], DriftThresholds())
    return raw, drift


def render(raw: bytes | None, drift: dict[str, dict[str, Drift]] | None = None, now: datetime | None = None) -> str:
    """The gauges for every view in the publish record, in the text exposition format ('' with no record)."""
    now = now or datetime.now(timezone.utc)
    published = read_published(raw)
    if not published:
        return ""
    samples: dict[str, list[str]] = {name: [] for name, _ in GAUGES}
    for view, entry in sorted(published.items()):
        label = f'{{view="{_label(view)}"}}'
        if entry.newest_event is not None:
            samples[GAUGES[0][0]].append(f"{GAUGES[0][0]}{label} {(now - entry.newest_event).total_seconds():.3f}")
        if entry.published_at is not None:
            samples[GAUGES[1][0]].append(f"{GAUGES[1][0]}{label} {(now - entry.published_at).total_seconds():.3f}")
        if entry.entities is not None:
            samples[GAUGES[2][0]].append(f"{GAUGES[2][0]}{label} {entry.entities}")
    for name, figure, _ in DRIFT_GAUGES:
        samples[name] = [f'{name}{{view="{_label(view)}",feature="{_label(feature)}"}} {value:.6g}'
                         for view, features in sorted((drift or {}).items())
                         for feature, d in sorted(features.items())
                         if (value := getattr(d, figure)) is not None]
    lines = []
    for name, help_text in (*GAUGES, *((name, help_text) for name, _, help_text in DRIFT_GAUGES)):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples[name]]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A label value escaped as the exposition format requires (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

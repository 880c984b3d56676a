"""Prometheus gauges of online freshness for `featuremart serve`'s `/metrics`, computed on scrape from the sync's
publish record (one GET of `<prefix>:meta:{<prefix>}:published`): no warehouse, no dbt, nothing on the read path.

    featuremart_view_online_age_seconds{view="..."}          now - newest event time published
    featuremart_view_seconds_since_publish{view="..."}       now - the last sync that published the view
    featuremart_view_entities_published{view="..."}         entities with a live value at that publish

Written by hand in the text exposition format 0.0.4, like the server's request metrics beside it: three gauges
need no library, and each worker answers for the store, not for itself (no multiprocess registry to merge).
"""

from __future__ import annotations

from datetime import datetime, timezone

from featuremart.monitoring.freshness import read_published
from featuremart.online import keys
from featuremart.online.store import OnlineStore

GAUGES = (
    ("featuremart_view_online_age_seconds",
     "Seconds between now and the newest event time the last sync published for the view."),
    ("featuremart_view_seconds_since_publish", "Seconds since a sync last published the view."),
    ("featuremart_view_entities_published", "Entities with a live (unexpired) value when the view was last published."),
)


def read_record(store: OnlineStore) -> bytes | None:
    """The raw publish record (one GET); a scrape parses it with `render`."""
    return store.get_bytes(keys.published_key(store.prefix))


def render(raw: bytes | None, now: datetime | None = None) -> str:
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
    lines = []
    for name, help_text in GAUGES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples[name]]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A label value escaped as the exposition format requires (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

"""Freshness facts and verdicts: the levels ok / warn / error / n/a, dbt's source freshness results, the dbt
sources a model reads (transitively), and what the sync recorded as published (`<prefix>:meta:{<prefix>}:published`).

Every time here is an aware UTC datetime; ages are `now - moment` between UTC instants (docs/monitoring.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

from featuremart.config import Freshness
from featuremart.errors import ArtifactError

OK, WARN, ERROR, NA = "ok", "warn", "error", "n/a"
#: Severity order for `worst`: n/a says nothing, so anything known outranks it.
_RANK = {NA: 0, OK: 1, WARN: 2, ERROR: 3}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def worst(levels: Iterable[str]) -> str:
    """The most severe of `levels` (n/a when there are none or all are n/a)."""
    return max(levels, key=_RANK.__getitem__, default=NA)


def judge(age: timedelta | None, policy: Freshness) -> str:
    """ok / warn / error for data `age` old under `policy` (dbt's rule: strictly older than a threshold);
    n/a when the age is unknown."""
    if age is None:
        return NA
    return {"pass": OK, "warn": WARN, "error": ERROR}[policy.status(age)]


def utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; a naive one is read as UTC (as the warehouse and dbt write them)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def from_us(us: int | None) -> datetime | None:
    """Microseconds since the epoch as an aware UTC datetime (exact: no float rounding)."""
    return None if us is None else _EPOCH + timedelta(microseconds=int(us))


def parse_time(text: Any) -> datetime | None:
    """An ISO 8601 time from a dbt artifact or a sync record (`Z` or an offset; naive means UTC), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        return None


# -- dbt source freshness (target/sources.json) --------------------------------------------------------------

@dataclass(frozen=True)
class SourceResult:
    """One source's row of `dbt source freshness`: its newest loaded_at, and dbt's own verdict."""

    unique_id: str
    max_loaded_at: datetime | None  # None: the check failed (dbt's status `runtime error`)
    status: str  # dbt's: pass | warn | error | runtime error
    error: str = ""


def load_source_freshness(target_dir: Path) -> dict[str, SourceResult]:
    """The results of the last `dbt source freshness` (target/sources.json), by source unique_id; empty when
    the file is absent (the command never ran). Only sources that declare freshness appear in it."""
    path = Path(target_dir) / "sources.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_bytes())
        results = raw["results"]
        found = {}
        for r in results:
            found[r["unique_id"]] = SourceResult(r["unique_id"], parse_time(r.get("max_loaded_at")),
                                                 str(r.get("status", "")), str(r.get("error") or ""))
        return found
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} is not what `dbt source freshness` writes ({type(exc).__name__}: {exc}); "
                            "rerun `dbt source freshness` to rewrite it") from None


def upstream_sources(models: dict[str, Any], sources: Iterable[str], model_id: str) -> set[str]:
    """The dbt sources `model_id` reads, directly or through other models (manifest lineage, transitively)."""
    return lineage(models, sources, model_id)[1]


def lineage(models: dict[str, Any], sources: Iterable[str], model_id: str) -> tuple[set[str], set[str]]:
    """(the models, the dbt sources) `model_id` reads, directly or through other models, by unique_id."""
    known = set(sources)
    found: set[str] = set()
    seen: set[str] = set()
    todo = [model_id]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        model = models.get(node)
        for parent in model.depends_on if model is not None else ():
            if parent in known:
                found.add(parent)
            elif parent in models:
                todo.append(parent)
    return seen - {model_id}, found


# -- what the sync published (featuremart.sync seals it with the generation) ----------------------------------

@dataclass(frozen=True)
class Published:
    """A view's entry in the publish record: when a sync last published it, its newest event time then, and
    how many entities had a live (unexpired) value."""

    view: str
    published_at: datetime | None
    newest_event: datetime | None
    entities: int | None
    run_id: str = ""


def read_published(raw: bytes | str | None) -> dict[str, Published]:
    """Parse the publish record (the value of `keys.published_key`); {} when absent or unreadable (no sync
    recorded one yet: every online figure is then n/a)."""
    try:
        record = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    views = record.get("views") if isinstance(record, dict) else None
    out = {}
    for name, entry in (views if isinstance(views, dict) else {}).items():
        if not isinstance(entry, dict):
            continue
        newest = entry.get("newest_event_us")
        entities = entry.get("entities")
        out[name] = Published(name, parse_time(entry.get("published_at")),
                              from_us(newest) if isinstance(newest, int) else None,
                              entities if isinstance(entities, int) else None, str(entry.get("run_id") or ""))
    return out

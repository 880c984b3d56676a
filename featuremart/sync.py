"""`featuremart sync`: publish the latest value per entity of every online feature view to the online store.

Boring on purpose: gated on the latest `dbt build`, incremental (a diff against the last sync's state), safe to
rerun and to interrupt, one at a time. The order of a run:

1. take the lock; 2. per view: stage the warehouse's latest values, diff, write inserts and updates, delete
entities that left, record the state; 3. publish the registry snapshot (the switch to new view versions);
4. delete the keys of versions no longer served; 5. record the run.
"""

from __future__ import annotations

import json
import threading
from contextlib import closing
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Protocol

import pyarrow as pa

from featuremart import sql
from featuremart.errors import FeaturemartError
from featuremart.manifest import Manifest
from featuremart.online import keys
from featuremart.online.store import OnlineStore
from featuremart.registry import FeatureView, Registry
from featuremart.state import SyncState
from featuremart.warehouse import Warehouse

#: A crashed sync blocks the next for at most this long; a running one renews its lock every third of it.
LOCK_TTL_SECONDS = 30
RUNS_KEPT = 100


@dataclass
class ViewResult:
    view: str
    status: str  # "synced" | "withheld" (by the build gate) | "skipped" (online: false) | "dry-run" | "removed"
    reason: str = ""
    version: str = ""
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped_older: int = 0
    version_switch: bool = False  # a new schema version: its old keys go after the registry switch
    incremental: bool = False  # only entities with rows changed since the last sync were read (changed_at)
    seconds: float = 0.0


@dataclass
class SyncRun:
    """The record of one sync: appended to target/featuremart/runs.jsonl and to `<prefix>:runs` in Redis."""

    run_id: str
    started_at: str
    manifest_checksum: str
    dry_run: bool
    full_refresh: bool
    finished_at: str = ""
    status: str = "running"  # "success" | "withheld" (some views withheld, others published) | "failed" | "dry-run"
    error: str = ""
    seconds: float = 0.0
    views: list[ViewResult] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def failed(cls, error: str, *, manifest_checksum: str = "", dry_run: bool = False,
               full_refresh: bool = False) -> SyncRun:
        """The record of a sync that could not start (online store or warehouse unreachable): nothing written."""
        now = _iso(datetime.now(timezone.utc))
        return cls(uuid.uuid4().hex[:12], now, manifest_checksum, dry_run, full_refresh, finished_at=now,
                   status="failed", error=error)


class Gate(Protocol):
    """Decides which views may be published (featuremart.gate.BuildGate)."""

    def withheld_reason(self, view: FeatureView) -> str | None: ...


class Syncer:
    """One sync of a project's registry from a warehouse to an online store."""

    def __init__(self, registry: Registry, manifest: Manifest, gate: Gate, warehouse: Warehouse,
                 store: OnlineStore, state_dir: Path, now: datetime | None = None,
                 lock_ttl: float = LOCK_TTL_SECONDS):
        self.registry, self.manifest, self.gate = registry, manifest, gate
        self.warehouse, self.store, self.state_dir = warehouse, store, state_dir
        self.now = now or datetime.now(timezone.utc).replace(tzinfo=None)
        self.prefix = store.prefix
        self.lock_ttl = lock_ttl
        self._watermarks: dict[str, int | None] = {}

    def run(self, views: list[FeatureView], *, full_refresh: bool = False, dry_run: bool = False,
            incremental: bool = True, progress: Callable[[str, str, int, int], None] | None = None) -> SyncRun:
        """Sync `views`; returns the run record (also when a view failed: then status is 'failed')."""
        started = time.perf_counter()
        run = SyncRun(uuid.uuid4().hex[:12], _iso(datetime.now(timezone.utc)), self.manifest.checksum, dry_run,
                      full_refresh)
        progress = progress or (lambda *a: None)
        self.incremental = incremental
        try:
            if dry_run:
                self._run_views(run, views, full_refresh, dry_run, progress)
            else:
                with self.store.lock("sync", self.lock_ttl) as lock, _KeepAlive(lock, self.lock_ttl / 3) as alive:
                    self._alive = alive
                    self._run_views(run, views, full_refresh, dry_run, progress)
        except FeaturemartError as exc:
            run.status, run.error = "failed", str(exc)
        finally:
            run.seconds = round(time.perf_counter() - started, 3)
            run.finished_at = _iso(datetime.now(timezone.utc))
            if not dry_run:
                self._record(run)
        return run

    def _run_views(self, run: SyncRun, views: list[FeatureView], full_refresh: bool, dry_run: bool,
                   progress: Callable[[str, str, int, int], None]) -> None:
        store_id = self._store_id(create=not dry_run)
        state = SyncState(self.state_dir / "sync_state.duckdb")
        try:
            published: dict[str, FeatureView] = {}
            retired: list[str] = []  # views whose old version's keys go after the registry switch
            for view in views:
                if not view.online:
                    run.views.append(ViewResult(view.name, "skipped", "online: false", view.version))
                    continue
                reason = self.gate.withheld_reason(view)
                if reason:
                    run.views.append(ViewResult(view.name, "withheld", reason, view.version))
                    continue
                result = self._sync_view(view, state, store_id, full_refresh, dry_run, progress)
                run.views.append(result)
                published[view.name] = view
                if result.version_switch:
                    retired.append(view.name)
            if dry_run:
                run.status = "dry-run"
                return
            self._publish(published)
            for name in retired:
                self._delete(state.departed(name))
                view = published[name]
                state.commit(name, view.version, store_id, self._watermarks.get(name))
            for name in state.views():  # views dropped or renamed in the project: remove what they left online
                if name not in self.registry.views:
                    run.views.append(self._remove(state, name))
            run.status = "withheld" if any(v.status == "withheld" for v in run.views) else "success"
        finally:
            state.close()

    def _sync_view(self, view: FeatureView, state: SyncState, store_id: str, full_refresh: bool, dry_run: bool,
                   progress: Callable[[str, str, int, int], None]) -> ViewResult:
        started = time.perf_counter()
        dialect = self.warehouse.dialect
        # Incremental: a view with a changed_at column, synced before under the same version and store, reads
        # only the entities with rows changed since; anything else (or --full-refresh) diffs every entity.
        synced = state.synced(view.name)
        since = (synced.watermark if self.incremental and view.changed_at and synced and not full_refresh
                 and synced.version == view.version and synced.store_id == store_id else None)
        watermark = None
        if view.changed_at:  # read before the rows, so rows changed meanwhile are read again next time
            table = self.warehouse.query(sql.render(sql.max_changed_us(view, dialect), dialect))
            watermark = table.column(0)[0].as_py() if table.num_rows else None
        query = sql.render(sql.online_payload(view, self.prefix, self.now, dialect, changed_since_us=since), dialect)
        schema = pa.schema([("key", pa.string()), ("value", pa.string()), ("ts_us", pa.int64())])
        progress(view.name, "staging", 0, 0)
        with closing(self.warehouse.stream(query)) as stream:
            state.stage(view.name, pa.RecordBatchReader.from_batches(schema, (_conform(b, schema) for b in stream)))
        expired_before = sql.to_us(self.now) - int(view.ttl.total_seconds() * 1_000_000)
        diff = state.diff(view.name, view.version, store_id, full_refresh,
                          partial_expired_before_us=expired_before if since is not None else None)
        result = ViewResult(view.name, "dry-run" if dry_run else "synced", version=view.version,
                            inserted=diff.inserted, updated=diff.updated, deleted=diff.deleted,
                            unchanged=diff.unchanged, skipped_older=diff.skipped_older,
                            incremental=since is not None)
        self._watermarks[view.name] = watermark
        if dry_run:
            result.seconds = round(time.perf_counter() - started, 3)
            return result
        progress(view.name, "writing", 0, diff.writes)
        with closing(state.upsert_commands(view.name, int(view.ttl.total_seconds() * 1000))) as commands:
            self.store.write_encoded(self._tracked(commands, view.name, diff.writes, progress))
        result.version_switch = diff.version_change
        if not diff.version_change:  # else the old keys are still served until the registry switches
            if since is None:  # an incremental sync saw only changed entities: none can be known to have left
                self._delete(state.departed(view.name))
            state.commit(view.name, view.version, store_id, watermark, partial=since is not None)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def _remove(self, state: SyncState, name: str) -> ViewResult:
        started = time.perf_counter()
        deleted = self._delete(state.keys(name))
        state.drop(name)
        return ViewResult(name, "removed", "no longer a feature view of the project", deleted=deleted,
                          seconds=round(time.perf_counter() - started, 3))

    def _delete(self, key_batches: Iterator[list[str]]) -> int:
        """Delete batches of keys read from the state; returns how many existed in Redis."""
        with closing(key_batches) as batches:
            return sum(self.store.delete(batch) for batch in batches)

    def _tracked(self, chunks, view: str, total: int, progress):
        """Pass write chunks through, reporting progress and stopping if the sync lost its lock."""
        done = 0
        for buffer, chunk_keys in chunks:
            self._alive.check()
            yield buffer, chunk_keys
            done += len(chunk_keys)
            progress(view, "writing", done, total)

    def _store_id(self, create: bool) -> str:
        """The identity of the online store's contents: a flushed or new Redis gets a new one (full rewrite)."""
        key = f"{self.prefix}:store_id"
        current = self.store.get_json(key)
        if current is None and create:
            self.store.set_json_nx(key, uuid.uuid4().hex)
            current = self.store.get_json(key)
        return current or "none"

    def _publish(self, published: dict[str, FeatureView]) -> None:
        """Switch readers to the views just synced; views skipped this time keep their last published entry."""
        previous = self.store.get_json(keys.registry_key(self.prefix)) or {}
        snapshot = self.registry.to_snapshot()
        views = dict(previous.get("views") or {})
        views.update({name: snapshot["views"][name] for name in published})
        snapshot["views"] = {name: views[name] for name in sorted(views) if name in self.registry.views}
        snapshot["services"] = {name: s for name, s in snapshot["services"].items()
                                if all(ref.split(".", 1)[0] in snapshot["views"] for ref in s["features"])}
        snapshot["published_at"] = _iso(datetime.now(timezone.utc))
        self.store.publish_registry(keys.registry_key(self.prefix), snapshot)

    def _record(self, run: SyncRun) -> None:
        record = json.dumps(run.to_json())
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "runs.jsonl", "a") as fh:
            fh.write(record + "\n")
        try:
            self.store.push_record(keys.runs_key(self.prefix), record, RUNS_KEPT)
        except FeaturemartError:
            pass  # the run already failed because the store went away; the local record says so


class _KeepAlive:
    """Renews the sync lock from a background thread, so that a long warehouse query never lets it expire,
    while a crashed sync's lock still expires quickly."""

    def __init__(self, lock, every: float):
        self.lock, self.every = lock, every
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="featuremart-lock", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.lock.refresh()
            except FeaturemartError as exc:
                self.error = exc
                return

    def check(self) -> None:
        """Raise if the lock was lost: another sync may be writing, so this one must stop."""
        if self.error is not None:
            raise self.error

    def __enter__(self) -> _KeepAlive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a warehouse batch to the payload schema (adapters may return large_string or decimals)."""
    if batch.schema.equals(schema):
        return batch
    return pa.RecordBatch.from_arrays([batch.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")

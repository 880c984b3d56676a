"""`featuremart sync`: publish the latest value per entity of every online feature view to the online store.

Boring on purpose: gated on the latest `dbt build`, incremental (a diff against the last sync's state), safe to
rerun and to interrupt, one at a time. The order of a run:

1. take the lock, read the store's identity (store_id, generation, server run_id); 2. per view: stage the
warehouse's latest values, diff against the state where it is trusted (else against a SCAN of the store),
withhold a view that would delete too much, write inserts and updates, delete entities that left, record the
state; 3. publish the registry snapshot (the switch to new view versions) if the store is still the one
written to and the snapshot loads; 4. delete the keys of versions no longer served; 5. seal: move the store's
and the state's generation together; 6. record the run.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from contextlib import closing
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol

import duckdb
import pyarrow as pa

from featuremart import sql
from featuremart.durable import DurableState, StatsHistory
from featuremart.errors import ConfigError, FeaturemartError, OnlineStoreError, StoreChangedError, WarehouseError
from featuremart.manifest import Manifest
from featuremart.monitoring import stats as feature_stats
from featuremart.online import keys
from featuremart.online.store import Fence, OnlineStore, StoreLock
from featuremart.registry import FeatureView, Registry, merge_snapshot
from featuremart.state import SyncState, described
from featuremart.warehouse import STAGE_BATCH_ROWS, STATE_FILE, DuckDBLimits, Prefetch, Warehouse, temp_directory

#: A crashed sync blocks the next for at most this long; a running one renews its lock every third of it.
LOCK_TTL_SECONDS = 30
RUNS_KEPT = 100
#: A sync withholds a view that would delete more than this share of its live entities (features.yml
#: `defaults.max_delete_fraction`, a model's `max_delete_fraction`, or `--allow-mass-delete` override it).
MAX_DELETE_FRACTION = 0.5
#: Encoded chunks (10,000 commands each) waiting for a writer: bounds the memory between encoding and writing.
QUEUE_CHUNKS = 4
#: Connections writing a view's chunks in parallel (`FEATUREMART_SYNC_WRITERS` overrides; bench/README.md).
WRITERS = 2


@dataclass
class ViewResult:
    view: str
    status: str  # "synced" | "withheld" (build gate, mass-delete guard) | "skipped" (online: false) | "dry-run" | "removed"
    reason: str = ""
    version: str = ""
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    version_switch: bool = False  # a new schema version: its old keys go after the registry switch
    incremental: bool = False  # only entities with rows changed since the last sync were read (changed_at)
    rebuilt: bool = False  # its state did not describe the store: rebuilt from a SCAN, every value rewritten
    restored: bool = False  # its local state was missing or stale: restored from the durable copy in the store
    streamed: bool = False  # nothing of it was online: written as the warehouse was read, without a diff
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
    notes: list[str] = field(default_factory=list)  # what the run did beyond the views (a state rebuilt, a sweep)

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
    """One sync of a project's registry from a warehouse to an online store.

    The online store mirrors the warehouse: after a run that ends `success`, every view it published holds
    exactly what a full refresh into an empty store would (same keys, values and expiry; nothing else). Where
    that cannot be guaranteed (the store restarted, was restored or failed over, the lock was lost), the run
    fails before publishing, and the next run rebuilds what it cannot trust (docs/operations.md).
    """

    def __init__(self, registry: Registry, manifest: Manifest, gate: Gate, warehouse: Warehouse,
                 store: OnlineStore, state_dir: Path, now: datetime | None = None,
                 lock_ttl: float = LOCK_TTL_SECONDS, *, allow_mass_delete: bool = False,
                 max_delete_fraction: float = MAX_DELETE_FRACTION, limits: DuckDBLimits | None = None,
                 writers: int | None = None, stats: bool | None = None,
                 prefetched: Mapping[str, Prefetch] | None = None):
        self.registry, self.manifest, self.gate = registry, manifest, gate
        self.warehouse, self.store, self.state_dir = warehouse, store, state_dir
        self.now = now or datetime.now(timezone.utc).replace(tzinfo=None)
        self.prefix = store.prefix
        self.lock_ttl = lock_ttl
        self.allow_mass_delete, self.max_delete_fraction = allow_mass_delete, max_delete_fraction
        self._watermarks: dict[str, int | None] = {}
        self._token = uuid.uuid4().hex  # this run's generation, the store's once the run completed
        self._scanned = self._published = False
        self._fence: Fence | None = None  # what identified the store when the run began
        self._durable = DurableState(store, manifest, self._token)  # the state's copy in the store (durable.py)
        self._committed: set[str] = set()  # views whose local state this run committed: uploaded before the seal
        self.limits = limits or DuckDBLimits.from_env()  # bounded memory whatever the entity count
        self.writers = writers or _writers_from_env()
        # Statistics of what each view publishes (featuremart.monitoring.stats): kept only once the run seals.
        self.stats = feature_stats.stats_enabled() if stats is None else stats
        self._history = StatsHistory(store)
        self._profiles: dict[str, dict] = {}
        self._stats_notes: list[str] = []
        self._profiling: list[threading.Thread] = []  # statistics queries running beside the sync (`_profile`)
        # Reads already started by the caller (FeatureStore.sync), by view: used if they are the ones this run
        # needs (`sql.view_reads`), else dropped; the caller closes what is left.
        self._prefetched = dict(prefetched or {})

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
                self._run_views(run, views, full_refresh, dry_run, progress, None)
            else:
                with self.store.lock("sync", self.lock_ttl) as lock, _KeepAlive(lock, self.lock_ttl / 3) as alive:
                    self._alive = alive
                    self._run_views(run, views, full_refresh, dry_run, progress, lock)
        except duckdb.Error as exc:
            if "out of memory" not in str(exc).lower():
                raise
            run.status = "failed"
            run.error = (f"DuckDB ran out of memory within its limit of {self.limits.memory_limit} per connection "
                         f"({str(exc).splitlines()[0]}). Raise FEATUREMART_DUCKDB_MEMORY_LIMIT (docs/operations.md"
                         "); the view being synced was not switched and keeps its previous values, and the next "
                         "sync redoes it.")
        except FeaturemartError as exc:
            exc = self._diagnosed(exc)
            run.status, run.error = "failed", str(exc)
            if isinstance(exc, StoreChangedError):
                run.error += (" The registry was switched before the change was noticed" if self._published else
                              " Nothing was published: readers keep the previous registry") + (
                              "; the next sync rebuilds every view it cannot trust.")
        finally:
            run.seconds = round(time.perf_counter() - started, 3)
            run.finished_at = _iso(datetime.now(timezone.utc))
            if not dry_run:
                self._record(run)
        return run

    def _run_views(self, run: SyncRun, views: list[FeatureView], full_refresh: bool, dry_run: bool,
                   progress: Callable[[str, str, int, int], None], lock: StoreLock | None) -> None:
        self.warehouse.bound_memory(self.limits, temp_directory(self.state_dir))
        state, note = SyncState.open(self.state_dir / STATE_FILE, rebuild=full_refresh and not dry_run,
                                     limits=self.limits)
        if note:
            run.notes.append(note)
        try:
            note = self._begin(lock, create=not dry_run)
            if note:
                run.notes.append(note)
            self._durable.begin(self.store_id, self.generation)
            if full_refresh and not dry_run:  # whatever the state says, every key nothing serves goes
                self._scan(state)
            published: dict[str, FeatureView] = {}
            withheld: dict[str, str] = {}
            retired: list[str] = []  # views whose old version's keys go after the registry switch
            for view in views:
                if not view.online:
                    run.views.append(ViewResult(view.name, "skipped", "online: false", view.version))
                    continue
                reason = self.gate.withheld_reason(view)
                if reason:
                    run.views.append(ViewResult(view.name, "withheld", reason, view.version))
                    withheld[view.name] = reason
                    continue
                try:
                    result = self._sync_view(view, state, full_refresh, dry_run, progress)
                except WarehouseError as exc:  # which view the warehouse refused: its model and table to look at
                    raise WarehouseError(f"{str(exc).rstrip('.')} (reading view {view.name}, table {view.relation})") from None
                run.views.append(result)
                if result.status == "withheld":
                    withheld[view.name] = result.reason
                    continue
                published[view.name] = view
                if result.version_switch:
                    retired.append(view.name)
            if dry_run:
                run.status = "dry-run"
                return
            snapshot = self._publish(published, withheld)
            for name in retired:
                self._delete(state.departed(name))
                view = published[name]
                state.commit(name, view.version, self.store_id, self._watermarks.get(name), generation=self._token,
                             ttl_ms=_ttl_ms(view))
                self._committed.add(name)
            for name in self._durable.recorded() - set(state.views()):  # known only to the durable state (a
                # fresh runner): restore it to remove it, or let the sweep below find its keys
                if name not in self.registry.views or not self.registry.views[name].online:
                    if self._durable.restore(state, name, "", 0):
                        continue  # removed by the loop below
                    self._scan(state)
                    self._durable.remove(name)
                    self._history.drop(name)
            for name in state.views():  # views dropped, renamed or turned offline: remove what they left online
                if name not in self.registry.views:
                    run.views.append(self._remove(state, name, "no longer a feature view of the project"))
                elif not self.registry.views[name].online:
                    run.views.append(self._remove(state, name, "online: false"))
            if self._scanned:  # the state did not describe the store: delete every key nothing serves
                swept = self._delete(state.unserved({n: v["version"] for n, v in snapshot["views"].items()}))
                if swept:
                    run.notes.append(f"deleted {swept} keys no published view serves (of views or versions no "
                                     "longer published, or left where the state did not describe the store)")
            # The durable copy of what changed (or is missing there) goes up before the seal, which makes it current.
            for name in described(state, self.store_id, (self.generation, self._token)):
                if name in self._committed or not self._durable.current(name):
                    self._durable.upload(state, name)
            # The seal: the store's generation and the state's move together, only if nothing changed meanwhile.
            seal = {keys.generation_key(self.prefix): json.dumps(self._token)}
            seal[keys.published_key(self.prefix)] = json.dumps(self._published_record(run, state, published,
                                                                                     snapshot))
            if self.store.cluster:  # which masters hold what this generation wrote (see _begin)
                seal[keys.masters_key(self.prefix)] = json.dumps(self.store.masters(), sort_keys=True)
            self.store.fenced(self._fence, seal)
            whole = self._scanned and set(snapshot["views"]) <= set(published)
            state.seal(self.store_id, self.generation, self._token, whole=whole)
            self._durable.seal(state, self.store_id, self._token, whole=whole)
            self._profiled()
            for name, record in self._profiles.items():  # a run that failed before the seal stores none
                if name in published:
                    self._history.append(name, {**record, "run_id": run.run_id})
            run.status = "withheld" if any(v.status == "withheld" for v in run.views) else "success"
        finally:
            self._profiled()
            run.notes.extend(self._durable.notes)  # what was restored or refused, also when the run failed
            run.notes.extend(self._stats_notes)
            state.close()

    def _published_record(self, run: SyncRun, state: SyncState, published: dict[str, FeatureView],
                          snapshot: dict) -> dict:
        """What each served view holds online, sealed with the generation (docs/redis-format.md): views this run
        published get its time, their newest event time and live entity count; views withheld keep their
        previous entry; views no longer served drop out. `featuremart status` and `/metrics` read it."""
        previous = self.store.get_json(keys.published_key(self.prefix))
        entries = previous.get("views") if isinstance(previous, dict) else None
        views = {name: entry for name, entry in (entries if isinstance(entries, dict) else {}).items()
                 if name in snapshot["views"] and name not in published}
        now_us = sql.to_us(self.now)
        for name, view in published.items():
            entities, newest_us = state.published(name, now_us - _ttl_ms(view) * 1000)
            views[name] = {"published_at": snapshot["published_at"], "run_id": run.run_id, "version": view.version,
                           "entities": entities, "newest_event_us": newest_us}
        return {"format": 1, "views": views}

    def _diagnosed(self, exc: FeaturemartError) -> FeaturemartError:
        """A store error (a lost lock, a failed write) caused by the store changing under the run is reported as
        that change, which says more (e.g. a restart, rather than a lock that seemed to expire)."""
        fence = self._fence
        if fence is None or not fence.lock_value or not isinstance(exc, OnlineStoreError) or isinstance(
                exc, StoreChangedError):
            return exc
        try:
            self.store.fenced(fence)
        except StoreChangedError as changed:
            return StoreChangedError(f"{changed} ({exc})")
        except FeaturemartError:
            pass  # the store is still unreachable: the original error says so
        return exc

    def _begin(self, lock: StoreLock | None, create: bool) -> str | None:
        """Read what identifies the store's contents now: its store_id (created if absent), generation, server.

        On a Redis Cluster the store_id lives on one master, so it cannot tell that another master restarted
        empty or failed over since the last sync: the seal records every master's run_id, and when they differ
        now the generation is dropped, so no view's state is trusted and each is rebuilt from a SCAN. Returns a
        note saying so."""
        server, note = self.store.server_id(), None  # first: on a cluster it also reads every master's run_id
        self.store_id = self._store_id(create)
        if create and self.store.cluster:
            recorded = self.store.get_json(keys.masters_key(self.prefix))
            if recorded is not None and recorded != self.store.masters():
                self.store.delete([keys.generation_key(self.prefix)])
                note = (f"a master of the cluster restarted, failed over or was added since the last sync (recorded "
                        f"{sorted(recorded)}, now {sorted(self.store.masters())}): its values may be gone, so every "
                        "view is rebuilt from a SCAN of the store")
        self.generation = self.store.get_json(keys.generation_key(self.prefix)) or ""
        self._fence = Fence(keys.store_id_key(self.prefix), json.dumps(self.store_id),
                            keys.generation_key(self.prefix), json.dumps(self.generation) if self.generation else "",
                            lock.key if lock else "", lock.value if lock else "", server)
        return note

    def _sync_view(self, view: FeatureView, state: SyncState, full_refresh: bool, dry_run: bool,
                   progress: Callable[[str, str, int, int], None]) -> ViewResult:
        started = time.perf_counter()
        self._profiled()  # the warehouse connection is used below: the previous view's statistics query is done
        dialect = self.warehouse.dialect
        ttl_ms = _ttl_ms(view)
        if ttl_ms <= 0:
            return ViewResult(view.name, "withheld", "its ttl is 0: every value would expire as it is written; set "
                              "a positive ttl in the model's featuremart meta", view.version)
        # Trusted state: diff against it; else restore it from its durable copy in the store if that describes
        # the store; else (or --full-refresh) rebuild it from a SCAN of the store.
        trusted = not full_refresh and state.trusted(view.name, self.store_id, self.generation)
        restored = False
        if not trusted and not full_refresh:
            restored = self._durable.restore(state, view.name, view.version, ttl_ms)
            trusted = restored and state.trusted(view.name, self.store_id, self.generation)
        synced = state.synced(view.name)
        version_change = trusted and synced is not None and synced.version != view.version
        rewrite = not trusted or (synced is not None and synced.ttl_ms != ttl_ms)  # a new ttl: a new expiry
        # Incremental: a view with a changed_at column whose trusted state is of the same version and ttl reads
        # only the entities with rows changed since; anything else diffs every entity.
        since = (synced.watermark if self.incremental and view.changed_at and synced and trusted and not rewrite
                 and not version_change else None)
        reads = sql.view_reads(view, self.prefix, self.now, dialect, changed_since_us=since)
        early = self._prefetched.pop(view.name).take(reads) if view.name in self._prefetched else None
        watermark = None
        if view.changed_at:  # read before the rows, so rows changed meanwhile are read again next time
            table = early[0][0] if early else self.warehouse.query(reads[0])
            watermark = table.column(0)[0].as_py() if table.num_rows else None
        schema = pa.schema([("key", pa.string()), ("value", pa.string()), ("ts_us", pa.int64())])
        if not trusted:  # before staging: whether anything of the view is online decides how it is written
            self._scan(state)
            state.adopt(view.name, view.version)
        result = ViewResult(view.name, "dry-run" if dry_run else "synced", version=view.version,
                            incremental=since is not None, rebuilt=not trusted, restored=restored)
        self._watermarks[view.name] = watermark
        progress(view.name, "staging", 0, 0)
        with closing(early[1] if early else self.warehouse.stream(reads[-1], STAGE_BATCH_ROWS)) as stream:
            payload = (_conform(b, schema) for b in stream)
            if not dry_run and state.empty(view.name):  # nothing online: write as the warehouse is read
                return self._first_sync(view, state, payload, ttl_ms, watermark, result, started, progress)
            state.stage(view.name, pa.RecordBatchReader.from_batches(schema, payload))
        diff = state.diff(view.name, view.version, rewrite=rewrite, version_change=version_change,
                          expired_before_us=sql.to_us(self.now) - ttl_ms * 1000, partial=since is not None)
        result.inserted, result.updated, result.deleted = diff.inserted, diff.updated, diff.deleted
        result.unchanged = diff.unchanged
        fraction = self.max_delete_fraction if view.max_delete_fraction is None else view.max_delete_fraction
        if not self.allow_mass_delete and diff.live_departed > fraction * diff.live_before:
            result.status = "withheld"
            result.reason = (f"would delete {diff.live_departed} of its {diff.live_before} entities online "
                             f"({diff.live_departed / diff.live_before:.0%}), more than max_delete_fraction "
                             f"{fraction:g}; its previous values stay. If the warehouse is right, rerun with "
                             "--allow-mass-delete (or set max_delete_fraction in the model's featuremart meta)")
        if dry_run or result.status == "withheld":
            result.seconds = round(time.perf_counter() - started, 3)
            return result
        if self.stats:  # an incremental diff saw only the changed entities: the count is then the last record's
            self._profile(view, None if since is not None else diff.inserted + diff.updated + diff.unchanged)
        state.mark(view.name, self._token)  # from here until the seal, the view's state is not trusted
        # Nor its durable copy, until this run uploads a new one: only if the view changes (an unchanged view's
        # durable copy still describes it, and is not uploaded again).
        changed = bool(diff.writes or diff.deleted or diff.version_change or synced is None
                       or synced.ttl_ms != ttl_ms)
        if changed:
            self._durable.mark(view.name)
        progress(view.name, "writing", 0, diff.writes)
        with closing(state.upsert_commands(view.name, ttl_ms)) as commands:
            self._write(commands, view.name, diff.writes, progress)
        result.version_switch = diff.version_change
        if not diff.version_change:  # else the old keys are still served until the registry switches
            if since is None:  # an incremental sync saw only changed entities: none can be known to have left
                self._delete(state.departed(view.name))
            state.commit(view.name, view.version, self.store_id, watermark, partial=since is not None,
                         generation=self._token, ttl_ms=ttl_ms)
            if changed:
                self._committed.add(view.name)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def _profile(self, view: FeatureView, entities: int | None) -> None:
        """The statistics of what the view publishes (one warehouse query), in a background thread: it overlaps
        the work that follows on the state and the store (writes, the durable upload; about 0.5 s of a 1M sync's
        tail otherwise), and `_profiled` waits for it before the warehouse is used again and before the seal. A
        failure there never stops the publish: the run's notes say the view has no statistics this time."""
        def run() -> None:
            try:
                self._profiles[view.name] = feature_stats.profile_view(self.warehouse, self._history, view,
                                                                       self.now, entities)
            except Exception as exc:  # noqa: BLE001 (DuckDB's, or a dbt adapter's driver's, own error types)
                first = (str(exc).splitlines() or [""])[0]
                self._stats_notes.append(f"view {view.name}: statistics not computed this run "
                                         f"({type(exc).__name__}: {first})")

        self._profiled()
        thread = threading.Thread(target=run, name=f"featuremart-stats-{view.name}", daemon=True)
        thread.start()
        self._profiling.append(thread)

    def _profiled(self) -> None:
        """Wait for the statistics queries `_profile` started: the warehouse connection is free again."""
        while self._profiling:
            self._profiling.pop().join()

    def _first_sync(self, view: FeatureView, state: SyncState, payload: Iterator[pa.RecordBatch], ttl_ms: int,
                    watermark: int | None, result: ViewResult, started: float,
                    progress: Callable[[str, str, int, int], None]) -> ViewResult:
        """A view with nothing online (a first sync, a full refresh, a store that lost it): every row is an insert
        and nothing departs, so the mass-delete guard has nothing to weigh and no diff needs the whole staged
        view. Each warehouse batch is recorded in the state and written at once: the warehouse read, encoding
        and writes overlap. The state commits only after every write was acknowledged; until then the view is
        marked, so a failed or killed run leaves it untrusted and the next run rebuilds it."""
        state.mark(view.name, self._token)
        self._durable.mark(view.name)
        written = [0]

        def counted(chunks: Iterator[tuple[memoryview, pa.Array]]) -> Iterator[tuple[memoryview, pa.Array]]:
            for chunk in chunks:
                written[0] += len(chunk[1])
                yield chunk

        progress(view.name, "writing", 0, 0)
        with state.first_sync(view.name):
            with closing(state.record_commands(view.name, payload, ttl_ms)) as commands:
                self._write(counted(commands), view.name, 0, progress)
            state.commit_first(view.name, view.version, self.store_id, watermark, generation=self._token,
                               ttl_ms=ttl_ms)
        self._committed.add(view.name)
        if self.stats:  # every entity was written: the count is what was published
            self._profile(view, written[0])
        result.inserted, result.streamed = written[0], True
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def _scan(self, state: SyncState) -> None:
        """Once per run, where some state is not trusted: every featuremart value key in the store, by SCAN."""
        if self._scanned:
            return

        def found() -> Iterator[tuple[list[str], list[str], list[str]]]:
            batch: tuple[list[str], list[str], list[str]] = ([], [], [])
            for raw in self.store.scan(keys.row_key_pattern(self.prefix), count=10_000):
                try:
                    key = raw.decode()
                except UnicodeDecodeError:  # featuremart writes UTF-8 keys only: not one of ours
                    continue
                parsed = keys.parse_row_key(self.prefix, key)
                if parsed:
                    for column, item in zip(batch, (key, *parsed)):
                        column.append(item)
                if len(batch[0]) >= 50_000:
                    yield batch
                    batch = ([], [], [])
            if batch[0]:
                yield batch

        state.stage_scan(found())
        self._scanned = True

    def _remove(self, state: SyncState, name: str, reason: str) -> ViewResult:
        started = time.perf_counter()
        deleted = self._delete(state.keys(name))
        state.drop(name)
        self._durable.remove(name)
        self._history.drop(name)  # it described values no longer served; a view added back starts afresh
        return ViewResult(name, "removed", reason, deleted=deleted, seconds=round(time.perf_counter() - started, 3))

    def _delete(self, key_batches: Iterator[list[str]]) -> int:
        """Delete batches of keys read from the state; returns how many existed in Redis."""
        with closing(key_batches) as batches:
            return sum(self.store.delete(batch) for batch in batches)

    def _write(self, chunks: Iterator[tuple[memoryview, pa.Array]], view: str, total: int,
               progress: Callable[[str, str, int, int], None]) -> None:
        """Write encoded chunks while the next ones are encoded: this thread runs the encoding query (DuckDB)
        and feeds a small queue; `self.writers` threads, each on its own connection, send the chunks and check
        every reply. Memory holds at most the queue's chunks. The first error (a rejected write, a lost lock, a
        changed store) stops every thread and is raised here, so the view stays marked untrusted."""
        feed: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        failed: list[BaseException] = []
        done = [0]
        counting = threading.Lock()

        def drained() -> Iterator[tuple[memoryview, pa.Array]]:
            while not failed:
                item = feed.get()
                if item is None:
                    return
                self._alive.check()
                yield item
                with counting:
                    done[0] += len(item[1])
                    progress(view, "writing", done[0], total)

        def writer() -> None:
            try:
                self.store.write_encoded(drained(), server=self._fence.server)
            except BaseException as exc:  # noqa: BLE001 (handed to the sync's thread, which raises it)
                failed.append(exc)

        threads = [threading.Thread(target=writer, name=f"featuremart-writer-{i}", daemon=True)
                   for i in range(self.writers)]
        for thread in threads:
            thread.start()
        try:
            for chunk in chunks:
                while not failed:
                    try:
                        feed.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if failed:
                    break
        finally:
            for _ in threads:  # one end mark per writer; a writer that stopped early leaves its mark unread
                while any(t.is_alive() for t in threads):
                    try:
                        feed.put(None, timeout=0.1)
                        break
                    except queue.Full:
                        if failed:
                            _empty(feed)
            for thread in threads:
                thread.join()
        if failed:
            raise failed[0]

    def _store_id(self, create: bool) -> str:
        """The identity of the online store's contents: a flushed or new Redis gets a new one (full rewrite)."""
        key = keys.store_id_key(self.prefix)
        current = self.store.get_json(key)
        if current is None and create:
            self.store.set_json_nx(key, uuid.uuid4().hex)
            current = self.store.get_json(key)
        return current or "none"

    def _publish(self, published: dict[str, FeatureView], withheld: dict[str, str]) -> dict:
        """Switch readers to the views just synced (views withheld keep their last published entry), only if the
        snapshot loads and the store is still the one written to. Returns the snapshot published."""
        previous = self.store.get_json(keys.registry_key(self.prefix))
        snapshot = merge_snapshot(self.registry, previous, published, withheld)
        snapshot["published_at"] = _iso(datetime.now(timezone.utc))
        try:
            Registry.from_snapshot(snapshot)
        except (FeaturemartError, KeyError, TypeError, ValueError) as exc:  # a bug, never a reader's problem
            raise FeaturemartError(f"the registry snapshot this sync would publish does not load ({exc}); nothing "
                                   "was published and readers keep the previous one. Please report this.") from None
        self.store.publish_registry(keys.registry_key(self.prefix), snapshot, fence=self._fence)
        self._published = True
        return snapshot

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


def _empty(feed: queue.Queue) -> None:
    """Discard what is queued (after a writer failed: nothing more may be written)."""
    try:
        while True:
            feed.get_nowait()
    except queue.Empty:
        pass


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a warehouse batch to the payload schema (adapters may return large_string or decimals)."""
    if batch.schema.equals(schema):
        return batch
    return pa.RecordBatch.from_arrays([batch.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


def _writers_from_env() -> int:
    value = os.environ.get("FEATUREMART_SYNC_WRITERS", "").strip() or str(WRITERS)
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise ConfigError(f"FEATUREMART_SYNC_WRITERS={value!r} is not a whole number from 1 to 64 (the connections "
                          f"a sync writes on in parallel; default {WRITERS})")
    return int(value)


def _ttl_ms(view: FeatureView) -> int:
    return int(view.ttl.total_seconds() * 1000)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")

"""The durable copy of the sync state, kept in the online store itself, so that a sync on a fresh runner (a new
checkout, `dbt clean`, a scheduled container) is as incremental as one in the directory that synced last.

Why the online store: the team already operates it, the state describes nothing but its contents, and a
restore of Redis from a snapshot brings the state back consistent with the values. (The warehouse's DuckDB
file is locked by every `dbt build` and featuremart opens it read-only.) The local DuckDB file under
target/featuremart is a cache: a view whose local state is missing or not trusted is restored from here.

Keys (docs/redis-format.md, built by featuremart.online.keys):

    <prefix>:state                        the index (JSON): the store_id and generation it describes, and the
                                          token of each view's current record
    <prefix>:state:{<view>}               a view's record (JSON): version, ttl, watermark, rows, parts, sha256,
                                          project, prefix, manifest
    <prefix>:state:{<view>}:<token>:<n>   part n of the view's state exported as zstd Parquet by run <token>

The protocol rides on the sync's generation/seal protocol (featuremart.sync):

- mark: before a sync writes a view's values, the view's record gets `pending` (the run's token): from then on
  it is never trusted, whatever happens to the run, until an upload replaces it.
- upload: once the view's local state is committed: the parts under the run's token, then the record
  (`pending` cleared), then the previous token's parts are deleted. Only views this run changed, or whose
  durable copy is not current, are uploaded.
- seal: once the store's generation moved to the run's token, the index is rewritten with that generation.
- trust: a view's record is restored only when the index is this project's and prefix's, describes the store's
  current store_id and generation, and names the record's token, the record is not pending, and its parts'
  sha256 matches. Anything else is said in the run's notes, and the view is rebuilt from a SCAN as before.

Each key is written on its own: no operation needs two keys to change together (Redis Cluster safe).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from featuremart.manifest import Manifest
from featuremart.online import keys
from featuremart.online.store import OnlineStore

if TYPE_CHECKING:  # pragma: no cover - featuremart.state loads pyarrow: imported where used, so that
    # `featuremart status` (which reads only StatsHistory) starts without it
    from featuremart.state import SyncState

#: The record and index format this version writes and reads; another one is refused (rebuild).
FORMAT = 1
#: Bytes per part key: large enough for few round trips, small enough that one SET never stalls Redis.
PART_BYTES = 4 << 20


class DurableState:
    """One sync run's view of the durable state: restore views into the local state, mark, upload, seal."""

    def __init__(self, store: OnlineStore, manifest: Manifest, token: str):
        self.store, self.prefix = store, store.prefix
        self.project = manifest.project_name
        self.manifest = manifest
        self.token = token  # this run's generation, the chunk token of what it uploads
        self.notes: list[str] = []
        self._index: dict[str, Any] | None = None  # the index, if it describes the store now
        self._why_not = "no durable sync state in the online store yet"
        self._recorded: set[str] = set()  # views with a record key, as far as the index knows
        self._touched: set[str] = set()  # views marked or removed by this run: their old record no longer holds
        self._removed: set[str] = set()
        self._uploaded: dict[str, str] = {}

    # ---- reading ------------------------------------------------------------------------------------------------

    def begin(self, store_id: str, generation: str) -> None:
        """Read the index; keep it only if it is this project's and describes the store's contents now."""
        self.store_id, self.generation = store_id, generation
        key = keys.state_index_key(self.prefix)
        index = self._read(key)
        if index is None:
            return
        refused = self._refused(key, index)
        if refused:
            self._why_not = refused
            self.notes.append(refused)
            return
        views = index.get("views") if isinstance(index.get("views"), dict) else {}
        self._recorded = set(views) | set(index.get("records") or [])
        if (index.get("store_id"), index.get("generation")) != (store_id, generation) or not generation:
            self._why_not = (f"the durable sync state describes generation {index.get('generation')!r} of store "
                             f"{index.get('store_id')!r}, but the store is at {generation!r} of {store_id!r} "
                             "(a sync failed or was interrupted after it, or the store was replaced)")
            return
        self._index = {**index, "views": views}

    def recorded(self) -> set[str]:
        """Views that have (or had at the last seal) a durable record."""
        return set(self._recorded)

    def restore(self, state: SyncState, view: str, version: str, ttl_ms: int) -> bool:
        """Restore a view's state into the local state if its durable copy describes the store; else note why
        not and return False (the caller rebuilds it from a SCAN). `version`, `ttl_ms`: the view's now, recorded
        for a view that the index says has no keys online."""
        from featuremart.state import Synced, restore_view

        if self._index is None:
            return self._refuse(view, self._why_not)
        token = self._index["views"].get(view)
        if token is None:
            if self._index.get("whole"):  # the index covers every view: this one has no keys online
                restore_view(state, view, None, Synced(version, self.store_id, None, self.generation, ttl_ms))
                return True
            return self._refuse(view, "the durable sync state has no record of it")
        key = keys.view_state_key(self.prefix, view)
        record = self._read(key)
        if record is None:
            return self._refuse(view, f"its durable record {key} is missing")
        refused = self._refused(key, record)
        if refused:
            self.notes.append(refused)
            return False
        if record.get("pending") or record.get("token") != token:
            return self._refuse(view, f"its durable record {key} was being rewritten by a sync that did not "
                                "complete")
        newer = _newer(record.get("manifest", {}).get("generated_at", ""), self.manifest.generated_at)
        with tempfile.TemporaryDirectory(prefix="featuremart-state-") as tmp:
            path = Path(tmp) / "state.parquet"
            digest, size = hashlib.sha256(), 0
            with open(path, "wb") as fh:
                for part in range(int(record.get("parts") or 0)):
                    data = self.store.get_bytes(keys.view_state_part_key(self.prefix, view, token, part))
                    if data is None:
                        return self._refuse(view, f"part {part} of its durable state is missing")
                    digest.update(data)
                    size += len(data)
                    fh.write(data)
            if digest.hexdigest() != record.get("sha256") or size != record.get("bytes"):
                return self._refuse(view, f"its durable state's parts under {key} do not match the record's sha256 "
                                    "(corrupt or truncated); ignored")
            synced = Synced(str(record.get("version") or ""), self.store_id, record.get("watermark"),
                            self.generation, record.get("ttl_ms"))
            try:
                restore_view(state, view, path, synced)
            except duckdb.Error as exc:
                return self._refuse(view, f"its durable state under {key} does not load ({exc}); ignored")
        if record.get("duckdb") != duckdb.__version__:
            self.notes.append(
                f"view {view}: its durable state was exported by DuckDB {record.get('duckdb')}, this is "
                f"{duckdb.__version__}; if their value hashes differ, this sync rewrites the view's values once")
        if newer:
            self.notes.append(
                f"view {view}: its durable state was written by a sync of a newer manifest (generated "
                f"{record['manifest']['generated_at']}, this one {self.manifest.generated_at}); used as it is, "
                "since it describes what is online, and this sync publishes this manifest's definitions over it")
        return True

    def current(self, view: str) -> bool:
        """Whether the view's durable record is current (the index names it and nothing touched it since)."""
        if self._index is None or view in self._touched or view not in self._index["views"]:
            return False
        record = self._read(keys.view_state_key(self.prefix, view))
        return (record is not None and not self._refused("", record) and not record.get("pending")
                and record.get("token") == self._index["views"][view])

    # ---- writing ------------------------------------------------------------------------------------------------

    def mark(self, view: str) -> None:
        """Before a sync writes the view's values: its record is not to be trusted until the next upload."""
        key = keys.view_state_key(self.prefix, view)
        record = self._read(key) or {}
        pending = record.get("pending")
        if pending and pending != self.token:  # parts of an upload that never completed
            self._delete_parts(view, str(pending))
        record = {**record, "format": FORMAT, "project": self.project, "prefix": self.prefix, "view": view,
                  "pending": self.token}
        self.store.set_json(key, record)
        self._touched.add(view)
        self._recorded.add(view)

    def upload(self, state: SyncState, view: str) -> None:
        """Export the view's committed local state and put it in the store; the previous parts then go."""
        from featuremart.state import export_view

        if view not in self._touched or self._read(keys.view_state_key(self.prefix, view)) is None:
            self.mark(view)
        synced = state.synced(view)
        with tempfile.TemporaryDirectory(prefix="featuremart-state-") as tmp:
            path = Path(tmp) / "state.parquet"
            rows = export_view(state, view, path)
            digest, size, parts = hashlib.sha256(), 0, 0
            with open(path, "rb") as fh:
                while data := fh.read(PART_BYTES):
                    self.store.set_bytes(keys.view_state_part_key(self.prefix, view, self.token, parts), data)
                    digest.update(data)
                    size += len(data)
                    parts += 1
        key = keys.view_state_key(self.prefix, view)
        previous = self._read(key) or {}
        self.store.set_json(key, {
            "format": FORMAT, "project": self.project, "prefix": self.prefix, "view": view,
            "token": self.token, "pending": None, "version": synced.version, "ttl_ms": synced.ttl_ms,
            "watermark": synced.watermark, "rows": rows, "parts": parts, "bytes": size,
            "sha256": digest.hexdigest(), "duckdb": duckdb.__version__, "written_at": _now(),
            "manifest": {"checksum": self.manifest.checksum, "generated_at": self.manifest.generated_at}})
        old = previous.get("token")
        if old and old != self.token:
            self._delete_parts(view, str(old))
        self._uploaded[view] = self.token

    def remove(self, view: str) -> None:
        """A view left the project (or went offline): delete its record and every part it references."""
        key = keys.view_state_key(self.prefix, view)
        record = self._read(key) or {}
        for token in {record.get("token"), record.get("pending")} - {None}:
            self._delete_parts(view, str(token))
        self.store.delete([key])
        self._touched.add(view)
        self._removed.add(view)
        self._recorded.discard(view)
        self._uploaded.pop(view, None)

    def seal(self, state: SyncState, store_id: str, new: str, *, whole: bool) -> None:
        """After the store's generation moved to `new` (the run's token): write the index describing it.

        Views this run did not touch keep their records (they still describe the store); those it uploaded
        get the new token. `whole`: every key online belongs to a view in the index (a view without a record
        then has none online); it holds only if no view with keys online lacks a current record."""
        from featuremart.state import described

        base = self._index
        views = {v: t for v, t in (base["views"].items() if base else ()) if v not in self._touched}
        views.update(self._uploaded)
        with_keys = set(described(state, store_id, (new,))) | set(base["views"] if base else ())
        dropped = with_keys - set(views) - self._removed
        whole = (whole or bool(base and base.get("whole"))) and not dropped
        self.store.set_json(keys.state_index_key(self.prefix), {
            "format": FORMAT, "project": self.project, "prefix": self.prefix, "store_id": store_id,
            "generation": new, "whole": whole, "views": views, "records": sorted(self._recorded | set(views)),
            "sealed_at": _now(), "manifest": {"checksum": self.manifest.checksum,
                                              "generated_at": self.manifest.generated_at}})

    # ---- helpers ------------------------------------------------------------------------------------------------

    def _read(self, key: str) -> dict[str, Any] | None:
        """A JSON record, or None if absent; a value that is not a JSON object is noted and treated as absent."""
        raw = self.store.get_bytes(key)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self.notes.append(f"ignored {key}: it does not hold a featuremart state record (not a JSON object)")
            return None
        return value

    def _refused(self, key: str, record: dict[str, Any]) -> str:
        """Why a record or index must not be trusted by this project under this prefix ('' if it may)."""
        if record.get("format") != FORMAT:
            return (f"refused the durable sync state at {key}: format {record.get('format')!r}, this featuremart "
                    f"reads format {FORMAT}; the views it covers are rebuilt from a SCAN of the store")
        if (record.get("project"), record.get("prefix")) != (self.project, self.prefix):
            return (f"refused the durable sync state at {key}: it was written by project "
                    f"{record.get('project')!r} under prefix {record.get('prefix')!r}, not by this project "
                    f"{self.project!r} under prefix {self.prefix!r}. Two projects sharing one key prefix on one "
                    "Redis overwrite each other's keys: give each its own online_store.key_prefix in "
                    "features.yml. The views it covers are rebuilt from a SCAN of the store, never from it")
        return ""

    def _refuse(self, view: str, why: str) -> bool:
        self.notes.append(f"view {view}: not restored from the durable sync state ({why}); rebuilt from a SCAN "
                          "of the store")
        return False

    def _delete_parts(self, view: str, token: str, batch: int = 16) -> None:
        """Delete parts 0, 1, ... of `token` (written in order, so they end at the first one missing)."""
        start = 0
        while True:
            removed = self.store.delete([keys.view_state_part_key(self.prefix, view, token, n)
                                         for n in range(start, start + batch)])
            if removed < batch:
                return
            start += batch


def _newer(written: str, ours: str) -> bool:
    """Whether manifest time `written` is later than `ours` (ISO strings; False when either does not parse)."""
    try:
        return _utc(written) > _utc(ours)
    except ValueError:
        return False


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: Statistics records kept per view (docs/monitoring.md): a sync a day keeps about seven weeks.
STATS_KEPT = 50


class StatsHistory:
    """Each view's statistics history, in the online store beside the sync state (so a fresh runner sees it):
    a list `<prefix>:stats:{<view>}` of JSON records, newest first, at most STATS_KEPT. Only a sync that
    completed appends to it (featuremart.sync)."""

    def __init__(self, store: OnlineStore, kept: int | None = None):
        self.store, self.kept = store, kept or STATS_KEPT

    def append(self, view: str, record: dict[str, Any]) -> None:
        self.store.push_record(keys.stats_key(self.store.prefix, view), json.dumps(record, default=str), self.kept)

    def drop(self, view: str) -> None:
        """Delete the view's history (the sync does when the view leaves the project or goes offline)."""
        self.store.delete([keys.stats_key(self.store.prefix, view)])

    def read(self, view: str, count: int = STATS_KEPT) -> list[dict[str, Any]]:
        """The view's newest `count` records, newest first (a record that is not JSON is skipped)."""
        out = []
        for raw in self.store.records(keys.stats_key(self.store.prefix, view), count):
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

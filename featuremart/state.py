"""Sync state: what the last successful sync wrote for each view, the base of the next sync's diff.

A DuckDB file under the dbt target directory holds, per view, the key, a hash of the value and the event
time of every entity online. A sync stages the warehouse's latest values beside it, diffs in SQL, writes only
the difference, and replaces a view's state only after that view's writes completed, so an interrupted sync
is simply redone by the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from featuremart.errors import WarehouseError
from featuremart.warehouse import batches

_VIEWS_DDL = """
create table if not exists fm_views (
    view varchar primary key,
    version varchar not null,
    store_id varchar not null,
    synced_at timestamp not null,
    entities bigint not null
)
"""
# Added after the first release of the state file: the newest `changed_at` seen by the view's last sync.
_VIEWS_MIGRATE = "alter table fm_views add column if not exists watermark bigint"


@dataclass(frozen=True)
class Synced:
    """What the state records of a view's last completed sync."""

    version: str
    store_id: str
    watermark: int | None  # newest changed_at (µs) it read, for views that declare one


@dataclass(frozen=True)
class Diff:
    """The changes one view's sync makes. Counts are of entities."""

    view: str
    inserted: int
    updated: int
    deleted: int
    unchanged: int
    skipped_older: int  # rows older than what is online: never written over a newer value
    version_change: bool

    @property
    def writes(self) -> int:
        return self.inserted + self.updated


_CRLF = "chr(13) || chr(10)"  # RESP line ending; strlen() counts bytes, as RESP lengths must


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SyncState:
    """The local record of what is online, per view (a DuckDB file, one table per view)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(path))
        except duckdb.IOException as exc:
            raise WarehouseError(f"sync state {path} is in use by another process ({exc}); is another "
                                 "`featuremart sync` running against this project?") from None
        self.con.execute(_VIEWS_DDL)
        self.con.execute(_VIEWS_MIGRATE)

    def close(self) -> None:
        self.con.close()

    def synced(self, view: str) -> Synced | None:
        """The view's last completed sync, or None."""
        rows = self.con.execute("select version, store_id, watermark from fm_views where view = ?", [view]).fetchall()
        return Synced(*rows[0]) if rows else None

    def stage(self, view: str, payload: pa.RecordBatchReader) -> int:
        """Load the warehouse's latest (key, value, ts_us) rows of a view next to its state; returns the row count."""
        self.con.register("__fm_payload", payload)
        try:
            self.con.execute(
                f"create or replace temp table {_q('new__' + view)} as "
                "select key, value, ts_us, hash(value) as h from __fm_payload"
            )
        finally:
            self.con.unregister("__fm_payload")
        return self._scalar(f"select count(*) from {_q('new__' + view)}")

    def _scalar(self, query: str) -> int:
        # fetchall: DuckDB 2 refuses new work on a connection with a half-read result.
        return self.con.execute(query).fetchall()[0][0]

    def _ensure_state(self, view: str) -> str:
        table = _q("state__" + view)
        self.con.execute(f"create table if not exists {table} (key varchar, h ubigint, ts_us bigint)")
        return table

    def diff(self, view: str, version: str, store_id: str, full_refresh: bool, *,
             partial_expired_before_us: int | None = None) -> Diff:
        """Compare the staged rows with the view's state. A new version or another store means a full rewrite.

        `partial_expired_before_us` marks an incremental sync: only some entities were staged, so nothing
        counts as departed, and state older than that time (its key expired in Redis) counts as absent.
        """
        state, new = self._ensure_state(view), _q("new__" + view)
        synced = self.synced(view)
        version_change = synced is not None and synced.version != version
        rewrite = full_refresh or synced is None or version_change or synced.store_id != store_id
        partial = partial_expired_before_us is not None
        absent = f"s.key is null or s.ts_us < {int(partial_expired_before_us)}" if partial else "s.key is null"
        self.con.execute(f"""
            create or replace temp table {_q('plan__' + view)} as
            select n.key, n.value, n.ts_us,
                   case when {absent} then 'insert'
                        when {'true' if rewrite else 'false'} then 'update'
                        when n.h = s.h then 'unchanged'
                        when n.ts_us < s.ts_us then 'older'
                        else 'update' end as action
            from {new} n left join {state} s on s.key = n.key
        """)
        counts = dict(self.con.execute(
            f"select action, count(*) from {_q('plan__' + view)} group by action").fetchall())
        deleted = 0 if partial else self._scalar(f"select count(*) from {state} s anti join {new} n on s.key = n.key")
        return Diff(view, counts.get("insert", 0), counts.get("update", 0), deleted, counts.get("unchanged", 0),
                    counts.get("older", 0), version_change)

    def upsert_commands(self, view: str, ttl_ms: int, batch_rows: int = 10_000) -> Iterator[tuple[memoryview, pa.Array]]:
        """The rows to write as ready-to-send Redis commands: (RESP bytes of `SET key value PXAT ms` for a batch,
        the batch's keys). Encoding in DuckDB keeps per-row Python out of the sync's hot path."""
        reader = self.con.sql(f"""
            with rows as (
                select key, value, (ts_us // 1000 + {int(ttl_ms)})::varchar as pxat
                from {_q('plan__' + view)} where action in ('insert', 'update')
            )
            select key, encode(concat('*5', {_CRLF}, '$3', {_CRLF}, 'SET', {_CRLF},
                                      '$', strlen(key), {_CRLF}, key, {_CRLF},
                                      '$', strlen(value), {_CRLF}, value, {_CRLF},
                                      '$4', {_CRLF}, 'PXAT', {_CRLF}, '$', strlen(pxat), {_CRLF}, pxat, {_CRLF})) as cmd
            from rows
        """).to_arrow_reader(batch_rows)
        for batch in batches(reader):
            cmd = batch.column("cmd").cast(pa.large_binary())
            _, offsets, data = cmd.buffers()
            bounds = pa.Array.from_buffers(pa.int64(), len(cmd) + 1, [None, offsets], offset=cmd.offset)
            start, end = bounds[0].as_py(), bounds[-1].as_py()
            yield memoryview(data)[start:end], batch.column("key")

    def departed(self, view: str, batch_rows: int = 50_000) -> Iterator[list[str]]:
        """Keys online that the view no longer has (entities that left, expired, or an old version's keys)."""
        reader = self.con.sql(
            f"select s.key from {_q('state__' + view)} s anti join {_q('new__' + view)} n on s.key = n.key"
        ).to_arrow_reader(batch_rows)
        for batch in batches(reader):
            yield batch.column(0).to_pylist()

    def commit(self, view: str, version: str, store_id: str, watermark: int | None = None,
               partial: bool = False) -> None:
        """Record the staged rows as what is online (keeping newer values that were not overwritten).

        `partial`: only some entities were staged (an incremental sync); the others keep their state."""
        state = self._ensure_state(view)
        plan = _q("plan__" + view)
        self.con.execute("begin")
        try:
            # Change only what changed: an unchanged rerun or a small diff must not rewrite a million rows.
            departed = "false" if partial else f"key not in (select key from {_q('new__' + view)})"
            self.con.execute(f"delete from {state} where {departed} "
                             f"or key in (select key from {plan} where action in ('insert', 'update'))")
            self.con.execute(f"insert into {state} select key, hash(value), ts_us from {plan} "
                             "where action in ('insert', 'update')")
            self.con.execute(
                "insert or replace into fm_views (view, version, store_id, synced_at, entities, watermark) "
                f"values (?, ?, ?, now()::timestamp, (select count(*) from {state}), ?)",
                [view, version, store_id, watermark])
            self.con.execute("commit")
        except Exception:
            self.con.execute("rollback")
            raise
        for prefix in ("new__", "plan__"):
            self.con.execute(f"drop table if exists {_q(prefix + view)}")

    def views(self) -> list[str]:
        """Every view with recorded state."""
        return [r[0] for r in self.con.execute("select view from fm_views order by view").fetchall()]

    def keys(self, view: str, batch_rows: int = 50_000) -> Iterator[list[str]]:
        """Every key recorded for a view."""
        for batch in batches(self.con.sql(f"select key from {_q('state__' + view)}").to_arrow_reader(batch_rows)):
            yield batch.column(0).to_pylist()

    def drop(self, view: str) -> None:
        """Forget a view entirely (after its keys were deleted)."""
        self.con.execute("delete from fm_views where view = ?", [view])
        self.con.execute(f"drop table if exists {_q('state__' + view)}")


"""The served-feature log's writer process: records in, Parquet files out (run by `ServedLog`, never by hand).

`python -m featuremart.servedlog.sink FD DIRECTORY MAX_ROWS FLUSH_SECONDS idle|normal`: FD is this end of a stream socket
pair carrying length-prefixed messages, one per record or control message, marshalled by the serving process
(`writer.ServedLog`). A receiver thread only moves what arrived off the socket (all of it, in one call), so the
serving process finds room in it; the main thread turns them into file rows (`FILE_COLUMNS`) and writes one
Parquet file per UTC date every FLUSH_SECONDS, under a temporary name, fsynced and renamed: a reader of the
directory never sees half a file, and no row is written twice. It answers with its counters (a line of JSON)
after every write and every flush request. It stops when the socket closes (the serving process closed the log, or died), after a last write.

It runs in its own process so that its Python work never holds the serving process's GIL (docs/flywheel.md has
the measurement behind this). With `ServedLog(idle_writer=True)` it runs under SCHED_IDLE while it keeps up
(`_Priority`): a read waking up (or Redis answering it) takes the core from it at once, instead of waiting out a
batch's Arrow and Parquet work, which is where the reads' p99 tail comes from; not the default, since on a loaded
machine it was not shown to help and dropped rows (docs/flywheel.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import marshal
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timedelta
from array import array
from pathlib import Path
from typing import Any, Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featuremart.servedlog.writer import _LENGTH, FILE_COLUMNS, SOCKET_BYTES, set_policy

#: Rows built into one Arrow batch at a time.
CHUNK_ROWS = 65_536
#: Behind: at least this many bytes arrived at once (16 of the serving process's 64 KB sends), or a wait that
#: ended this many seconds late, or the serving process put it back at normal priority (its socket full); the
#: writer then runs at normal priority until one wake-up finds at most
#: CAUGHT_UP_BYTES waiting, and not before BEHIND_HOLD_SECONDS (on a busy machine, an idle writer that went
#: back to SCHED_IDLE at once fell behind again and dropped rows: 254,400 at load 14, bench/README.md).
BEHIND_BYTES, BEHIND_SECONDS, CAUGHT_UP_BYTES, BEHIND_HOLD_SECONDS = 1 << 20, 0.25, 128 << 10, 5.0
_EPOCH = datetime(1970, 1, 1)
_DAY_US = 86_400_000_000
_NAMES = [name for name, _ in FILE_COLUMNS]
_CLOSE = object()  # in the inbox: the socket was closed


class Sink:
    """The writer: file rows accumulated per UTC date, written by `write`, counted for the serving process."""

    def __init__(self, sock: socket.socket, directory: Path, max_rows: int, idle: bool = False):
        self.sock, self.directory, self.max_rows = sock, directory, max_rows
        self.inbox: deque[Any] = deque()
        self.rest = b""  # the start of a message whose end has not arrived yet
        self.arrived = threading.Event()
        self.days: dict[int, _Day] = {}  # by UTC day (epoch days)
        #: every distinct (view, version, features) of the records seen: file rows point into it
        self.specs: dict[tuple, int] = {}
        self.spec_columns: tuple[list[str], list[str], list[str]] = ([], [], [])
        self.pending: list[tuple[str, pa.Table, int]] = []  # tables whose write failed, retried at the next write
        self.held = 0  # log rows received, not yet written or dropped
        self.counts = dict.fromkeys(("written", "dropped", "files", "errors", "behind"), 0)
        self.last_error: str | None = None
        self.failing = False
        self.seq = 0
        self.taken = 0  # bytes turned into messages at the last wake-up
        self.behind, self.behind_until = False, 0.0
        self.priority = _Priority(idle)

    # -- receiving --------------------------------------------------------------------------------------------
    def receive(self) -> None:
        """The receiver thread: what arrived off the socket into the inbox, and _CLOSE once it is closed."""
        try:
            while True:
                chunk = self.sock.recv(SOCKET_BYTES)
                if not chunk:
                    break
                self.inbox.append(chunk)
                self.arrived.set()
        except OSError:
            pass
        self.inbox.append(_CLOSE)
        self.arrived.set()

    def take(self) -> tuple[bool, list[int]]:
        """Turn what arrived into rows; (closed, flush tokens asked for)."""
        closed, tokens = False, []
        for item in self.messages():
            if item is None:
                closed = True
                continue
            if item[0] == "flush":
                tokens.append(item[1])
                continue
            rows = item[-1]
            self.held += rows
            day = self.days.get(item[0] // _DAY_US)
            if day is None:
                day = self.days[item[0] // _DAY_US] = _Day()
            try:
                day.add(item, self.spec_rows(item[5]))
            except Exception as exc:  # a record this code cannot log: count it, keep the others
                self.held -= rows
                self.counts["dropped"] += rows
                self.last_error = f"rows: {exc!r}"
                day.undo()
                continue
            day.rows += rows
            if len(day.status) >= CHUNK_ROWS:
                day.finish(self.spec_table())
        return closed, tokens

    def messages(self) -> Iterator[tuple | None]:
        """The messages whole in the inbox, unmarshalled, then None if the socket was closed."""
        chunks, closed = [self.rest], False
        while self.inbox:
            chunk = self.inbox.popleft()
            if chunk is _CLOSE:
                closed = True
            else:
                chunks.append(chunk)
        data = b"".join(chunks)
        view, position, size = memoryview(data), 0, len(data)
        self.taken = size
        while size - position >= _LENGTH.size:
            length = _LENGTH.unpack_from(data, position)[0]
            start = position + _LENGTH.size
            if size - start < length:
                break
            position = start + length
            yield marshal.loads(view[start:position])
        self.rest = data[position:]
        if closed:
            yield None

    def spec_rows(self, specs: tuple[tuple[str, str, str], ...]) -> int:
        """Where the (view, version, features) of a record's views start in the spec table."""
        base = self.specs.get(specs)
        if base is None:
            base = self.specs[specs] = len(self.spec_columns[0])
            for column, values in zip(self.spec_columns, zip(*specs)):
                column.extend(values)
        return base

    def spec_table(self) -> tuple[pa.Array, pa.Array, pa.Array]:
        return tuple(pa.array(column, pa.string()) for column in self.spec_columns)  # type: ignore[return-value]

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self) -> None:
        """Write every UTC date's rows as one new file each; a failed write keeps its table for the next."""
        table = self.spec_table()
        for day, rows in self.days.items():
            rows.finish(table)
            date = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
            self.pending.append((date, pa.Table.from_batches(rows.batches), rows.rows))
        self.days.clear()
        waiting, self.pending = self.pending, []
        for i, (date, table, rows) in enumerate(waiting):
            error = self.write_file(date, table)
            if error is not None:
                self.counts["errors"] += 1
                if not self.failing:  # once per outage, not once per write
                    self.report(warn=f"{error} (rows kept for the next write, within the buffer; see stats() or "
                                     "/metrics for drops)")
                self.failing = True
                self.last_error = error
                self.pending = waiting[i:]
                while self.pending and self.held > self.max_rows:  # over budget: the oldest go, counted
                    _, _, lost = self.pending.pop(0)
                    self.held -= lost
                    self.counts["dropped"] += lost
                return
            if self.failing:
                self.report(warn=f"writing again to {self.directory}")
                self.failing = False
            self.held -= rows
            self.counts["written"] += rows
            self.counts["files"] += 1

    def write_file(self, date: str, table: pa.Table) -> str | None:
        """Write `table` as one new file of partition `date`, whole or not at all; an error message or None."""
        self.seq += 1
        folder = self.directory / f"date={date}"
        name = f"part-{time.time_ns() // 1000}-{os.getpid()}-{self.seq}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp, store_schema=False)  # read back as FILE_COLUMNS: strings, not dictionaries
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, folder / name)
            return None
        except Exception as exc:  # OSError (read-only, full, gone) or an Arrow error: the rows wait
            with contextlib.suppress(OSError):
                tmp.unlink()
            return f"cannot write {folder / name}: {exc}"

    def report(self, flushed: int | None = None, warn: str | None = None) -> None:
        """The counters to the serving process (its status thread reads them)."""
        status = {**self.counts, "held": self.held, "last_error": self.last_error, "flushed": flushed, "warn": warn}
        with contextlib.suppress(OSError):
            self.sock.sendall(orjson.dumps(status) + b"\n")

    def run(self, flush_seconds: float) -> None:
        threading.Thread(target=self.receive, name="featuremart-served-log-receive", daemon=True).start()
        deadline = time.monotonic() + flush_seconds
        while True:
            self.arrived.wait(max(0.0, deadline - time.monotonic()))
            late = time.monotonic() - deadline  # > 0: woken after the deadline it waited for (starved of CPU)
            self.arrived.clear()
            closed, tokens = self.take()
            now = time.monotonic()
            if self.taken >= BEHIND_BYTES or late >= BEHIND_SECONDS or self.priority.lifted():
                self.counts["behind"] += not self.behind
                self.behind, self.behind_until = True, now + BEHIND_HOLD_SECONDS
            elif self.taken <= CAUGHT_UP_BYTES and now >= self.behind_until:
                self.behind = False
            self.priority.set(idle=not self.behind)
            # on time, and whenever it holds half the budget: rows waiting for the clock count against the
            # serving process's budget, which a full-speed reader filled in about 2 s at 100 entities
            if closed or tokens or time.monotonic() >= deadline or self.held >= self.max_rows // 2:
                if self.days or self.pending:
                    self.write()
                self.report(flushed=max(tokens) if tokens else None)
                deadline = time.monotonic() + flush_seconds
            if closed:
                return


class _Priority:
    """The writer process's threads (its own, Arrow's, jemalloc's) under SCHED_IDLE (`set(idle=True)`), so that
    any read or Redis waking up preempts it, and back at normal priority while it is behind (`set(idle=False)`),
    so that a busy machine does not starve it into dropping rows; one starved too long to notice is put back at
    normal priority by the serving process (`ServedLog._listen`, when a read finds the socket full). Linux only,
    and only where a thread may leave SCHED_IDLE again (root, or RLIMIT_NICE of 20 or more: probed once by a
    thread of its own); elsewhere the writer stays at normal priority."""

    def __init__(self, wanted: bool) -> None:
        self.idle = False
        self.able = wanted and _can_leave_idle()

    def set(self, idle: bool) -> None:
        if not self.able or idle == self.idle:
            return
        self.idle = idle
        try:
            set_policy("self", "IDLE" if idle else "OTHER")
        except OSError:  # refused after all: normal priority (as far as allowed) from now on
            self.able = self.idle = False
            with contextlib.suppress(OSError):
                set_policy("self", "OTHER")

    def lifted(self) -> bool:
        """Whether the serving process put this idle writer back at normal priority (it found the socket full)."""
        return self.idle and os.sched_getscheduler(0) != os.SCHED_IDLE


def _can_leave_idle() -> bool:
    """Whether a thread of this process may go to SCHED_IDLE and back (tried by a short-lived thread)."""
    able: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: the calling thread
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            able.append(True)
        except (AttributeError, OSError):  # not Linux, or not allowed back
            pass

    thread = threading.Thread(target=probe, name="featuremart-served-log-probe")
    thread.start()
    thread.join()
    return bool(able)


class _Day:
    """The file rows of one UTC date, kept column-wise so that Arrow builds them with few Python objects: values
    per record and per entity once, with index arrays (filled by C-level `extend`) that `take` expands."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.rows = 0  # log rows (one per feature) held, for the counters
        self.clear()

    def clear(self) -> None:
        # per record: request id, request time (µs), service, requested, registry id
        self.ids: list[str] = []
        self.times = array("q")
        self.services: list[str | None] = []
        self.requested: list[str | None] = []
        self.registries: list[str | None] = []
        self.firsts = array("i")  # per record: its first entity in `keys`
        self.keys: list[str] = []  # per entity: its keys as a JSON object
        # per file row: its record, its entity within the record, its spec row; its status and value
        self.record_of, self.entity_in, self.spec_of = array("i"), array("i"), array("i")
        self.status: list[str] = []
        self.stored: list[bytes | None] = []

    def add(self, item: tuple, base: int) -> None:
        """One record (or a slice of one): a file row per entity and view, entity-major (the MGET reply's order)."""
        now_us, given_id, service, requested, registry_id, specs, keys, status, stored, _ = item
        stored = stored[1:]  # the MGET reply: the registry id, then a value per entity and view
        if isinstance(keys, bytes):  # the entities as one JSON array: one object text each
            keys = list(map(bytes.decode, map(orjson.dumps, orjson.loads(keys))))
        n, nv = len(keys), len(specs)
        if len(status) != n * nv or len(stored) != n * nv:
            raise ValueError(f"{n} entities x {nv} views, but {len(status)} statuses and {len(stored)} values")
        self.mark = (len(self.ids), len(self.keys), len(self.status))
        record, first = len(self.ids), len(self.keys)
        self.ids.append(given_id or uuid.uuid4().hex)
        self.times.append(now_us)
        self.services.append(service)
        self.requested.append(requested)
        self.registries.append(registry_id)
        self.firsts.append(first)
        self.keys += keys
        self.record_of += array("i", (record,)) * (n * nv)  # sequence repetition and concatenation: memcpy
        self.entity_in += _entity_pattern(n, nv)
        self.spec_of += array("i", range(base, base + nv)) * n
        self.status += status
        self.stored += stored

    def undo(self) -> None:
        """Forget what `add` appended for a record it failed on."""
        records, entities, rows = getattr(self, "mark", (len(self.ids), len(self.keys), len(self.status)))
        for column in (self.ids, self.services, self.requested, self.registries, self.times, self.firsts):
            del column[records:]
        del self.keys[entities:]
        for column in (self.record_of, self.entity_in, self.spec_of, self.status, self.stored):
            del column[rows:]

    def finish(self, specs: tuple[pa.Array, pa.Array, pa.Array]) -> None:
        """The rows held as one Arrow batch (FILE_COLUMNS), then start again. A value repeated on many rows (the
        request's, the entity's, the view's) is a dictionary column: indices into one copy of each value, which
        Parquet writes as its dictionary encoding and readers read as plain strings. Expanding them (Arrow
        `take`) was half the writer's CPU at 100 entities."""
        if not self.status:
            return
        record_of, spec_of, entity_in = _ints(self.record_of), _ints(self.spec_of), _ints(self.entity_in)
        times = pa.Array.from_buffers(pa.timestamp("us"), len(self.times), [None, pa.py_buffer(self.times)])
        coded = _coded
        columns = [coded(record_of, pa.array(self.ids, pa.string())), times.take(record_of)]
        columns += [coded(record_of, pa.array(values, pa.string()))
                    for values in (self.services, self.requested, self.registries)]
        entity = pc.add(entity_in, _ints(self.firsts).take(record_of))
        columns += [entity_in, coded(entity, pa.array(self.keys, pa.string()))]
        columns += [coded(spec_of, values) for values in specs]
        columns += [pa.array(self.status, pa.string()), pa.array(self.stored, pa.binary()).cast(pa.string())]
        self.batches.append(pa.RecordBatch.from_arrays(columns, names=_NAMES))
        self.clear()


@functools.lru_cache(maxsize=256)
def _entity_pattern(n: int, nv: int) -> array:
    """0 (nv times), 1 (nv times), ..., n - 1: each file row's entity within a record of n entities x nv views."""
    return array("i", [i for i in range(n) for _ in range(nv)])


def _coded(indices: pa.Array, values: pa.Array) -> pa.DictionaryArray:
    """values[indices] as a dictionary column; a null value becomes a null index (Parquet's writer refuses nulls
    inside a dictionary)."""
    if values.null_count:
        indices = pc.if_else(values.is_valid().take(indices), indices, pa.scalar(None, pa.int32()))
        values = values.fill_null("")
    return pa.DictionaryArray.from_arrays(indices, values)


def _ints(values: array) -> pa.Array:
    """An array('i') as an Arrow int32 array, without copying."""
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


def main(argv: list[str]) -> int:
    fd, directory, max_rows, flush_seconds, priority = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server closes us
    sock = socket.socket(fileno=int(fd))
    sock.setblocking(True)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BYTES)
    Sink(sock, Path(directory), int(max_rows), idle=priority == "idle").run(float(flush_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

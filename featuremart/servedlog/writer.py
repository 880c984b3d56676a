"""Logging served feature values without slowing or failing the read that served them.

The read path (`OnlineReader.read`, through its one-line hook) calls `ServedLog.record`, which only appends
the finished `OnlineResult` and its MGET reply to a bounded deque: no formatting, no I/O. A background thread
drains the deque into file rows (one per request x entity x feature view, the view's value as Redis stored it:
`FILE_COLUMNS`) and writes them as Parquet under `<directory>/date=YYYY-MM-DD/` (the request's UTC date), each
file written under a temporary name, fsynced and renamed: a reader of the directory never sees half a file, and
no row is written twice. dbt's `featuremart.served_log()` expands them to one row per feature (`LOG_COLUMNS`).

When the buffer is full the read goes on and its rows are counted in `dropped_rows`; when a write fails (the
directory became read-only, the disk is full or gone) the rows wait for the next flush, bounded by the same
budget, and what exceeds it is dropped and counted. `stats()` gives the counters; `featuremart serve` exposes
them on /metrics (docs/flywheel.md).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timedelta
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

import orjson

from featuremart.errors import ServedLogError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

    from featuremart.online.reader import OnlineReader, OnlineResult

#: Where logs go unless told otherwise; relative paths are relative to the dbt project directory. The dbt side
#: reads the same variable (macros/flywheel/served_log.sql, models/flywheel/served_features.sql).
LOG_DIR_ENV, DEFAULT_LOG_DIR = "FEATUREMART_SERVED_LOG_DIR", "data/served_log"
#: The columns of a log file, in order, with their Arrow types: one row per request x entity x feature view, the
#: view's stored value as read from Redis (docs/redis-format.md), so that the read path's thread does almost
#: nothing per value. `featuremart.served_log()` (dbt) expands them into LOG_COLUMNS, one row per feature.
FILE_COLUMNS = (
    ("request_id", "string"), ("request_ts", "timestamp"), ("service", "string"), ("requested", "string"),
    ("registry_id", "string"), ("entity_index", "int32"), ("entity_keys", "string"), ("view", "string"),
    ("view_version", "string"), ("features", "string"), ("status", "string"), ("stored", "string"),
)
#: The columns of the log as dbt reads it (`featuremart.served_log()`): one row per request x entity x feature.
LOG_COLUMNS = (
    ("request_id", "string"), ("request_ts", "timestamp"), ("service", "string"), ("requested", "string"),
    ("registry_id", "string"), ("entity_index", "int32"), ("entity_keys", "string"), ("feature", "string"),
    ("output_name", "string"), ("dtype", "string"), ("view_version", "string"), ("value", "string"),
    ("event_ts", "timestamp"), ("status", "string"),
)
#: Rows built into one Arrow batch at a time by the background thread (a short hold of the GIL each).
CHUNK_ROWS = 4096
_EPOCH = datetime(1970, 1, 1)
_DAY_US = 86_400_000_000
_log = logging.getLogger("featuremart.servedlog")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("featuremart_request_id", default=None)


def default_log_dir(project_dir: Path) -> Path:
    """$FEATUREMART_SERVED_LOG_DIR, else data/served_log; a relative path is taken from `project_dir`."""
    return project_dir / (os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)


#: How `featuremart serve --log-dir/--log-services` reaches its --workers processes (the environment).
SERVICES_ENV = "FEATUREMART_SERVED_LOG_SERVICES"


def services_option(text: str | None) -> str | list[str] | None:
    """--log-services / $FEATUREMART_SERVED_LOG_SERVICES: unset -> None (exposures with `log: true`), "all",
    or comma-separated service names."""
    if not text:
        return None
    return "all" if text.strip() == "all" else [s.strip() for s in text.split(",") if s.strip()]


def attach_from_env(reader: OnlineReader) -> ServedLog | None:
    """In a server worker process: log its reads when $FEATUREMART_SERVED_LOG_DIR is set (by `featuremart serve
    --log-dir`), else nothing."""
    directory = os.environ.get(LOG_DIR_ENV)
    if not directory:
        return None
    return ServedLog(directory, services=services_option(os.environ.get(SERVICES_ENV))).attach(reader)


@contextlib.contextmanager
def request_id(value: Any) -> Iterator[None]:
    """Log the reads made inside this block under `value` as their request id (e.g. the transaction id that
    labels will carry later), instead of a generated one.

    Example:
        >>> with request_id("T000123"):                                     # doctest: +SKIP
        ...     fs.get_online_features([{"customer_id": "C1", "merchant_id": "M1"}], service="fraud_model")
    """
    token = _request_id.set(str(value))
    try:
        yield
    finally:
        _request_id.reset(token)


@functools.lru_cache(maxsize=None)
def log_schema() -> pa.Schema:
    """`FILE_COLUMNS` as an Arrow schema (times are UTC, stored without a zone as featuremart's event times are)."""
    import pyarrow as pa

    kinds = {"string": pa.string(), "timestamp": pa.timestamp("us"), "int32": pa.int32()}
    return pa.schema([pa.field(name, kinds[kind]) for name, kind in FILE_COLUMNS])


class LogStats(NamedTuple):
    """Counters of a ServedLog since it started (rows: one per request x entity x feature)."""

    logged_rows: int  # accepted into the buffer
    written_rows: int  # in Parquet files on disk
    dropped_rows: int  # never written: buffer full, or a failed write beyond the buffer's budget
    buffered_rows: int  # accepted, not yet written (in the buffer or waiting to retry a failed write)
    files: int
    write_errors: int
    clock_regressions: int  # reads whose request time was earlier than the previous read's
    last_error: str | None


class _Record(NamedTuple):
    result: OnlineResult
    stored: list[bytes | None]  # the MGET reply: the registry id, then one stored value per entity and view
    service: str | None
    features: tuple[str, ...] | None
    now_us: int
    request_id: str | None
    rows: int


class ServedLog:
    """A served-feature log writing Parquet under `directory`.

    Args:
        directory: created if absent; must be writable now (ServedLogError otherwise: a wrong path is a setup
            error, reported at once; a directory that becomes unwritable later only drops, counted).
        services: which reads to log. None (default): reads of the feature services whose exposure sets
            `config.meta.featuremart.log: true`; "all": every read, feature lists included; or a list of
            service names.
        max_buffered_rows: the memory budget: rows accepted but not yet written, beyond which reads are not
            logged (and counted in `dropped_rows`).
        flush_seconds: how often the background thread writes what it holds.

    Example:
        >>> log = ServedLog("data/served_log", services="all").attach(fs.reader)   # doctest: +SKIP
        >>> fs.get_online_features([{"customer_id": "C1"}], features=["customer_spend.*"])  # doctest: +SKIP
        >>> log.flush(); log.stats().written_rows                                  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, *, services: str | Iterable[str] | None = None,
                 max_buffered_rows: int = 1_000_000, flush_seconds: float = 2.0):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServedLogError(f"served-feature log directory {self.directory}: cannot create it ({exc.strerror}); "
                                 "pass a writable --log-dir (or set " + LOG_DIR_ENV + ")") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ServedLogError(f"served-feature log directory {self.directory} is not writable by this process: "
                                 "fix its permissions or pass another --log-dir (or set " + LOG_DIR_ENV + ")")
        if isinstance(services, str) and services != "all":
            raise ServedLogError(f"services={services!r}: pass None (services whose exposure sets log: true), "
                                 "'all', or a list of service names")
        self.services = services if services is None or services == "all" else frozenset(services)
        self.max_buffered_rows = max_buffered_rows
        self.flush_seconds = flush_seconds
        self._queue: deque[_Record] = deque()
        self._queued_rows = 0  # changed under _count_lock (reads may come from many threads)
        self._count_lock = threading.Lock()
        #: (date, table, log rows it holds) whose write failed, retried at the next flush
        self._pending: list[tuple[str, pa.Table, int]] = []
        self._drain_lock = threading.Lock()
        self._wanted: dict[tuple[str | None, str | None], bool] = {}
        self._specs: dict[int, tuple[Any, tuple[tuple[str, str, str], ...]]] = {}
        self._reader: OnlineReader | None = None
        self._last_us = 0
        self._counts = dict.fromkeys(("logged", "written", "dropped", "files", "errors", "regressions"), 0)
        self._last_error: str | None = None
        self._failing = False
        self._seq = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="featuremart-served-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the read path ------------------------------------------------------------------------------------
    def attach(self, reader: OnlineReader) -> ServedLog:
        """Log the reads of `reader` (through its `served_log` hook); returns self."""
        self._reader = reader
        reader.served_log = self
        return self

    def record(self, result: OnlineResult, stored: list[bytes | None], service: str | None, features: Any,
               now_us: int) -> None:
        """Called by the reader after each read with its result and MGET reply: queue them, or count them
        dropped. Never raises."""
        try:
            wanted = self._wanted.get((result.registry_id, service))
            if wanted is None:
                wanted = self._decide(result.registry_id, service)
            if not wanted:
                return
            rows = len(result) * len(result.names)
            with self._count_lock:
                if self._queued_rows + rows > self.max_buffered_rows:
                    self._counts["dropped"] += rows
                    return
                self._queued_rows += rows
                self._counts["logged"] += rows
                if now_us < self._last_us:
                    self._counts["regressions"] += 1
                self._last_us = now_us
            self._queue.append(_Record(result, stored, service, None if features is None else tuple(features),
                                       now_us, _request_id.get(), rows))
        except Exception as exc:  # logging must never fail a read
            self._last_error = f"record: {exc!r}"

    def _decide(self, registry_id: str | None, service: str | None) -> bool:
        if self.services == "all":
            wanted = True
        elif service is None:
            wanted = False
        elif self.services is None:
            found = self._reader.registry.services.get(service) if self._reader is not None else None
            wanted = bool(found is not None and found.log)
        else:
            wanted = service in self.services
        self._wanted[(registry_id, service)] = wanted
        return wanted

    # -- the background thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self._drain()
            except Exception as exc:  # pragma: no cover - a bug here must not kill the thread silently
                self._last_error = f"drain: {exc!r}"
                _log.exception("served-feature log: drain failed")

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything accepted so far; True when nothing is left waiting (False: a write failed)."""
        deadline = time.monotonic() + timeout
        while True:
            self._drain()
            if not self._queue and not self._pending:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the thread after a last flush (what cannot be written is counted dropped)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self._drain()
        with self._count_lock:
            lost = sum(rows for _, _, rows in self._pending)
            self._pending.clear()
            self._counts["dropped"] += lost
            self._queued_rows -= lost
        atexit.unregister(self.close)

    def stats(self) -> LogStats:
        c = self._counts
        return LogStats(c["logged"], c["written"], c["dropped"], self._queued_rows, c["files"], c["errors"],
                        c["regressions"], self._last_error)

    def prometheus(self) -> str:
        """The counters in Prometheus text format (appended to the server's /metrics)."""
        s = self.stats()
        lines = []
        for name, value, kind, text in (
                ("logged_rows_total", s.logged_rows, "counter", "Served-feature log rows accepted."),
                ("written_rows_total", s.written_rows, "counter", "Served-feature log rows written to Parquet."),
                ("dropped_rows_total", s.dropped_rows, "counter",
                 "Served-feature log rows dropped (buffer full or sink unavailable)."),
                ("buffered_rows", s.buffered_rows, "gauge", "Served-feature log rows waiting to be written."),
                ("write_errors_total", s.write_errors, "counter", "Failed served-feature log writes.")):
            lines += [f"# HELP featuremart_served_log_{name} {text}", f"# TYPE featuremart_served_log_{name} {kind}",
                      f"featuremart_served_log_{name} {value}"]
        return "\n".join(lines) + "\n"

    def _drain(self) -> None:
        with self._drain_lock:
            import pyarrow as pa

            by_date: dict[int, tuple[list[list[Any]], list[pa.RecordBatch], list[int]]] = {}
            while self._queue:
                record = self._queue.popleft()
                day = record.now_us // _DAY_US
                columns, batches, counted = by_date.setdefault(day, ([[] for _ in FILE_COLUMNS], [], [0]))
                mark = len(columns[0])
                try:
                    self._rows(record, columns)
                except Exception as exc:  # a record this code cannot log: count it, keep the others
                    with self._count_lock:
                        self._queued_rows -= record.rows
                        self._counts["dropped"] += record.rows
                    self._last_error = f"rows: {exc!r}"
                    for column in columns:  # undo what was appended for it
                        del column[mark:]
                    continue
                counted[0] += record.rows
                if len(columns[0]) >= CHUNK_ROWS:
                    batches.append(_batch(columns, pa))
                    for column in columns:
                        column.clear()
                time.sleep(0)  # let a waiting read take the GIL between records
            for day, (columns, batches, counted) in by_date.items():
                if columns[0]:
                    batches.append(_batch(columns, pa))
                date = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
                self._pending.append((date, pa.Table.from_batches(batches, log_schema()), counted[0]))
            if not self._pending:
                return
            waiting, self._pending = self._pending, []
            for i, (date, table, rows) in enumerate(waiting):
                error = self._write(date, table)
                if error is not None:
                    self._counts["errors"] += 1
                    if not self._failing:  # once per outage, not once per flush
                        _log.warning("served-feature log: %s (rows kept for the next flush, within the buffer; "
                                     "see stats() or /metrics for drops)", error)
                    self._failing = True
                    self._last_error = error
                    self._pending = waiting[i:]
                    self._trim_pending()
                    return
                if self._failing:
                    _log.warning("served-feature log: writing again to %s", self.directory)
                    self._failing = False
                with self._count_lock:
                    self._queued_rows -= rows
                    self._counts["written"] += rows
                    self._counts["files"] += 1

    def _trim_pending(self) -> None:
        """Drop the oldest waiting rows while the buffer is over its budget (counted)."""
        with self._count_lock:
            while self._pending and self._queued_rows > self.max_buffered_rows:
                _, _, rows = self._pending.pop(0)
                self._queued_rows -= rows
                self._counts["dropped"] += rows

    def _write(self, date: str, table: pa.Table) -> str | None:
        """Write `table` as one new file of partition `date`, whole or not at all; an error message or None."""
        import pyarrow.parquet as pq

        self._seq += 1
        folder = self.directory / f"date={date}"
        name = f"part-{time.time_ns() // 1000}-{os.getpid()}-{self._seq}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, folder / name)
            return None
        except Exception as exc:  # OSError (read-only, full, gone) or an Arrow error: the rows wait
            with contextlib.suppress(OSError):
                tmp.unlink()
            return f"cannot write {folder / name}: {exc}"

    # -- a result as log rows -----------------------------------------------------------------------------
    def _rows(self, record: _Record, columns: list[list[Any]]) -> None:
        """Append the file rows of one read (FILE_COLUMNS) to `columns`: one per entity and view (entity-major,
        the order of the MGET reply), with C-level list operations; the values stay as Redis stored them."""
        result = record.result
        plan = result._plan
        n, nv = len(result), len(plan.views)
        total = n * nv
        specs = self._view_specs(result.registry_id, plan)
        try:  # the entities as given (plain dicts of their keys: one C-level pass)
            keys = list(map(bytes.decode, map(orjson.dumps, result._entities)))
        except TypeError:  # numpy scalars, a Mapping that is not a dict: only the join keys, made JSON-able
            keys = [orjson.dumps({k: e[k] for k in plan.key_names}, option=orjson.OPT_SERIALIZE_NUMPY,
                                 default=str).decode() for e in result._entities]
        (request_id, request_ts, service, requested, registry_id, entity_index, entity_keys, view, version,
         features, status, stored) = columns
        request_id += repeat(record.request_id or uuid.uuid4().hex, total)
        request_ts += repeat(record.now_us, total)
        service += repeat(record.service, total)
        requested += repeat(None if record.features is None else ",".join(record.features), total)
        registry_id += repeat(result.registry_id, total)
        entity_index += [i for i in range(n) for _ in specs]
        entity_keys += [k for k in keys for _ in specs]
        view += [v for v, _, _ in specs] * n
        version += [v for _, v, _ in specs] * n
        features += [f for _, _, f in specs] * n
        status += result._status
        stored += record.stored[1:]

    def _view_specs(self, registry_id: str | None, plan: Any) -> tuple[tuple[str, str, str], ...]:
        """Per view of a request plan: (view, version, the JSON list of [feature, output name, position in the
        stored array, type] of the features requested), cached per plan."""
        cached = self._specs.get(id(plan))
        if cached is not None and cached[0] is plan:  # the plan is held here, so its id is not reused meanwhile
            return cached[1]
        specs = tuple((v.name, v.version, orjson.dumps([[name, out, position, plan.dtypes[out]] for name, (out, position)
                                                        in zip(self._feature_names(registry_id, v), v.columns)]).decode())
                      for v in plan.views)
        if len(self._specs) > 1024:
            self._specs.clear()
        self._specs[id(plan)] = (plan, specs)
        return specs

    def _feature_names(self, registry_id: str | None, view: Any) -> tuple[str, ...]:
        """The feature names (not output names) of a view plan's columns, from the registry they were read with."""
        registry = self._reader.registry if self._reader is not None else None
        found = registry.views.get(view.name) if registry is not None else None
        if found is not None and found.version == view.version:
            return tuple(found.features[p - 1].name for _, p in view.columns)
        # a sync replaced the registry since this read: the output name is the feature's name, unprefixed
        return tuple(out.split("__", 1)[1] if out.startswith(view.name + "__") else out for out in view.out_names)


def _batch(columns: list[list[Any]], pa: Any) -> pa.RecordBatch:
    """One Arrow batch of accumulated file rows (request times from epoch microseconds, stored values as text)."""
    arrays = []
    for (name, kind), values in zip(FILE_COLUMNS, columns):
        if name == "stored":
            arrays.append(pa.array(values, pa.binary()).cast(pa.string()))
        else:
            arrays.append(pa.array(values, log_schema().field(name).type))
    return pa.RecordBatch.from_arrays(arrays, schema=log_schema())

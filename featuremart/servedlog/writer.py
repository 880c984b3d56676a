"""Logging served feature values without slowing or failing the read that served them.

The read path (`OnlineReader.read`, through its one-line hook) calls `ServedLog.record`, which marshals what the
read already holds (its MGET reply and statuses, the entities as one JSON text: C-level calls, nothing per
value) and appends it, length-prefixed, to an in-memory buffer. A background thread of the serving process
appends that buffer, as it is, to a new spool segment under `<directory>/spool/` every `flush_seconds` (or
sooner when a quarter of the budget waits): one large `writev` and `fsync` every few seconds, both made
without the GIL, so the reads are not preempted by a process of the log's own (docs/flywheel.md has the
measurements). `featuremart logs export` (`featuremart.servedlog.export`) turns the segments into Parquet
files partitioned by the request's UTC date (`FILE_COLUMNS`); `featuremart skew` exports first. dbt's
`featuremart.served_log()` expands the files to one row per feature (`LOG_COLUMNS`).

When the buffer budget is spent (the disk is slow, full, read-only or gone), the read goes on and its rows are
counted in `dropped_rows`; a failed segment write keeps its rows, within the same budget, for the next try.
`stats()` gives the counters; `featuremart serve` exposes them on /metrics.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import marshal
import os
import struct
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple

import orjson

from featuremart.errors import ServedLogError

if TYPE_CHECKING:  # pragma: no cover
    from featuremart.online.reader import OnlineReader, OnlineResult

#: Where logs go unless told otherwise; relative paths are relative to the dbt project directory. The dbt side
#: reads the same variable (macros/flywheel/served_log.sql, models/flywheel/served_features.sql).
LOG_DIR_ENV, DEFAULT_LOG_DIR = "FEATUREMART_SERVED_LOG_DIR", "data/served_log"
#: The columns of a log file, in order, with their Arrow types: one row per request x entity x feature view, the
#: view's stored value as read from Redis (docs/redis-format.md), so that the read path does almost nothing per
#: value. `featuremart.served_log()` (dbt) expands them into LOG_COLUMNS, one row per feature.
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
#: The spool: segments of length-prefixed records under `<directory>/spool/`, each written whole (a temporary
#: name, fsynced, renamed) and never changed after; `featuremart logs export` turns them into Parquet and
#: removes them. A segment starts with SEGMENT_MAGIC; each record is its length (4 bytes, little-endian), then a
#: marshal (version 4) of the read's objects, which took 0.6x the CPU of a pickle of the same record. Marshal's
#: format belongs to the Python version: export with the Python that served (the magic names its version).
SPOOL_DIR, SEGMENT_SUFFIX = "spool", ".spool"
SEGMENT_MAGIC = b"FMSPOOL1 %d.%d\n" % sys.version_info[:2]
#: The length prefix of each record in a segment
RECORD_LENGTH = struct.Struct("<I")
#: writev takes at most IOV_MAX (1024 on Linux) buffers: what waits through a long outage is joined first
_MAX_BUFFERS = 512
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


class LogStats(NamedTuple):
    """Counters of a ServedLog since it started (rows: one per request x entity x feature)."""

    logged_rows: int  # accepted into the buffer
    written_rows: int  # in spool segments on disk (fsynced), for `featuremart logs export`
    dropped_rows: int  # never written: the buffer budget was spent, or a record could not be encoded
    buffered_rows: int  # accepted, not yet written (waiting for the next segment, or to retry a failed write)
    files: int  # spool segments written
    write_errors: int
    clock_regressions: int  # reads whose request time was earlier than the previous read's
    last_error: str | None


class ServedLog:
    """A served-feature log spooling under `directory` from a background thread (`featuremart logs export`
    writes the Parquet files).

    Args:
        directory: created if absent; must be writable now (ServedLogError otherwise: a wrong path is a setup
            error, reported at once; a directory that becomes unwritable later only drops, counted).
        services: which reads to log. None (default): reads of the feature services whose exposure sets
            `config.meta.featuremart.log: true`; "all": every read, feature lists included; or a list of
            service names.
        max_buffered_rows: the memory budget: rows accepted but not yet written, beyond which reads are not
            logged (and counted in `dropped_rows`).
        flush_seconds: how often the buffer is written as a spool segment (sooner when a quarter of the budget
            waits).

    Example:
        >>> log = ServedLog("data/served_log", services="all").attach(fs.reader)   # doctest: +SKIP
        >>> fs.get_online_features([{"customer_id": "C1"}], features=["customer_spend.*"])  # doctest: +SKIP
        >>> log.flush(); log.stats().written_rows                                  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, *, services: str | Iterable[str] | None = None,
                 max_buffered_rows: int = 1_000_000, flush_seconds: float = 2.0):
        self.directory = Path(directory).absolute()
        try:
            (self.directory / SPOOL_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServedLogError(f"served-feature log directory {self.directory}: cannot create it ({exc.strerror}); "
                                 "pass a writable --log-dir (or set " + LOG_DIR_ENV + ")") from None
        if not os.access(self.directory / SPOOL_DIR, os.W_OK | os.X_OK):
            raise ServedLogError(f"served-feature log directory {self.directory} is not writable by this process: "
                                 "fix its permissions or pass another --log-dir (or set " + LOG_DIR_ENV + ")")
        if isinstance(services, str) and services != "all":
            raise ServedLogError(f"services={services!r}: pass None (services whose exposure sets log: true), "
                                 "'all', or a list of service names")
        self.services = services if services is None or services == "all" else frozenset(services)
        self.max_buffered_rows = max_buffered_rows
        self.flush_seconds = flush_seconds
        self._wake_rows = max(1, max_buffered_rows // 4)
        self._lock = threading.Lock()  # reads may come from many threads: guards the buffer and the counters
        self._counts = dict.fromkeys(("logged", "dropped", "regressions", "written", "files", "errors"), 0)
        self._outbox, self._outbox_rows, self._held = bytearray(), 0, 0
        self._pending: list[bytearray] = []  # taken from the outbox, not written yet (the spool thread's)
        self._pending_rows = 0
        self._last_error: str | None = None
        self._wanted: dict[tuple[str | None, str | None], bool] = {}
        self._specs: dict[int, tuple[Any, tuple[tuple[str, str, str], ...]]] = {}
        self._reader: OnlineReader | None = None
        self._last_us = 0
        self._seq = 0
        self._asked = self._done = 0  # flush requests made, and answered by a spool pass begun after them
        self._done_ok = True
        self._passes = threading.Condition()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._spool_loop, name="featuremart-served-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the read path ------------------------------------------------------------------------------------
    def attach(self, reader: OnlineReader) -> ServedLog:
        """Log the reads of `reader` (through its `served_log` hook); returns self."""
        self._reader = reader
        reader.served_log = self
        return self

    def record(self, result: OnlineResult, stored: list[bytes | None], service: str | None, features: Any,
               now_us: int, request_id: str | None = None) -> None:
        """Called by the reader after each read with its result and MGET reply: append them as they are (one
        marshal of objects the read already holds) to the buffer, or count them dropped when the budget is
        spent. Never blocks (beyond a short lock), never raises."""
        rows = 0
        try:
            wanted = self._wanted.get((result.registry_id, service))
            if wanted is None:
                wanted = self._decide(result.registry_id, service)
            if not wanted:
                return
            rows = len(result) * len(result.names)
            plan = result._plan
            message = marshal.dumps((
                now_us, request_id or _request_id.get(), service, None if features is None else ",".join(features),
                result.registry_id, self._view_specs(result.registry_id, plan), _entity_keys(result._entities, plan),
                result._status, stored, rows), 4)
            with self._lock:
                if self._held + rows > self.max_buffered_rows:
                    self._counts["dropped"] += rows
                    return
                if now_us < self._last_us:
                    self._counts["regressions"] += 1
                self._last_us = now_us
                self._counts["logged"] += rows
                self._held += rows
                self._outbox += RECORD_LENGTH.pack(len(message))
                self._outbox += message
                self._outbox_rows += rows
                if self._outbox_rows >= self._wake_rows and not self._wake.is_set():
                    self._wake.set()
        except Exception as exc:  # logging must never fail a read: the record is counted dropped
            with self._lock:
                self._counts["dropped"] += rows
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

    # -- the spool thread -----------------------------------------------------------------------------------
    def _spool_loop(self) -> None:
        """Every flush_seconds, or when woken (a quarter of the budget waits, a flush, close): write what waits."""
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            closing = self._closed
            with self._passes:
                asked = self._asked
            try:
                ok = self._spool()
            except Exception as exc:  # pragma: no cover - a bug here must not stop the thread: rows wait, counted
                ok, self._last_error = False, f"spool: {exc!r}"
            with self._passes:
                self._done, self._done_ok = asked, ok
                self._passes.notify_all()
            if closing:
                return

    def _spool(self) -> bool:
        """Take the buffer and write it, with what a failed write left, as one new segment; False if that failed
        (the rows stay held, within the budget, for the next pass)."""
        with self._lock:
            if self._outbox:
                self._pending.append(self._outbox)
                self._pending_rows += self._outbox_rows
                self._outbox, self._outbox_rows = bytearray(), 0
        if not self._pending:
            return True
        if len(self._pending) > _MAX_BUFFERS:
            self._pending = [bytearray().join(self._pending)]
        spool = self.directory / SPOOL_DIR
        self._seq += 1
        name = f"{time.time_ns()}-{os.getpid()}-{self._seq}{SEGMENT_SUFFIX}"
        tmp = spool / f".{name}.tmp"
        try:
            spool.mkdir(parents=True, exist_ok=True)
            _write_whole(tmp, [SEGMENT_MAGIC, *self._pending])
            os.replace(tmp, spool / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            error = f"cannot write {spool / name}: {exc}"
            with self._lock:
                self._counts["errors"] += 1
            if self._last_error is None or not self._last_error.startswith("cannot write"):  # once per outage
                _log.warning("served-feature log: %s (rows kept for the next write, within the buffer; see "
                             "stats() or /metrics for drops)", error)
            self._last_error = error
            return False
        with contextlib.suppress(OSError):  # the rename survives a power loss too (the segment is in place either way)
            fsync_directory(spool)
        if self._last_error is not None and self._last_error.startswith("cannot write"):
            _log.warning("served-feature log: writing again to %s", spool)
            self._last_error = None
        with self._lock:
            self._held -= self._pending_rows
            self._counts["written"] += self._pending_rows
            self._counts["files"] += 1
        self._pending, self._pending_rows = [], 0
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything accepted so far as a spool segment now; True when it was (False: the write failed,
        or `timeout` passed first)."""
        with self._passes:
            self._asked += 1
            token = self._asked
            self._wake.set()
            done = self._passes.wait_for(lambda: self._done >= token or not self._thread.is_alive(), timeout)
            return bool(done and self._done >= token and self._done_ok)

    def close(self) -> None:
        """Write what waits, then stop the spool thread (what cannot be written is counted dropped)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=60)
        with self._lock:  # nothing will write them now
            self._counts["dropped"] += self._held
            self._held = 0
        atexit.unregister(self.close)

    def stats(self) -> LogStats:
        c = self._counts
        return LogStats(c["logged"], c["written"], c["dropped"], self._held, c["files"], c["errors"],
                        c["regressions"], self._last_error)

    def prometheus(self) -> str:
        """The counters in Prometheus text format (appended to the server's /metrics)."""
        s = self.stats()
        lines = []
        for name, value, kind, text in (
                ("logged_rows_total", s.logged_rows, "counter", "Served-feature log rows accepted."),
                ("written_rows_total", s.written_rows, "counter", "Served-feature log rows written to the spool."),
                ("dropped_rows_total", s.dropped_rows, "counter",
                 "Served-feature log rows dropped (buffer budget spent while the disk was slow or unavailable)."),
                ("buffered_rows", s.buffered_rows, "gauge", "Served-feature log rows waiting to be written."),
                ("write_errors_total", s.write_errors, "counter", "Failed served-feature log spool writes.")):
            lines += [f"# HELP featuremart_served_log_{name} {text}", f"# TYPE featuremart_served_log_{name} {kind}",
                      f"featuremart_served_log_{name} {value}"]
        return "\n".join(lines) + "\n"

    # -- a read as log file columns -----------------------------------------------------------------
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


def _entity_keys(entities: Any, plan: Any) -> bytes | list[str]:
    """The entities as given, as one JSON array (plain dicts of their keys: one C-level pass), else (numpy
    scalars, a Mapping that is not a dict) each one's join keys as a JSON object text."""
    try:
        return orjson.dumps(entities)
    except TypeError:
        return [orjson.dumps({k: e[k] for k in plan.key_names}, option=orjson.OPT_SERIALIZE_NUMPY,
                             default=str).decode() for e in entities]


def fsync_directory(path: Path) -> None:
    """Make the entries of directory `path` (a rename into it, a removal) durable, as fsync does a file's bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_whole(path: Path, buffers: list) -> None:
    """`buffers` as the new file `path`, fsynced (writev and fsync run without the GIL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        total, done = sum(len(b) for b in buffers), os.writev(fd, buffers)
        if done < total:  # a short write (rare on a regular file): the rest, in order
            rest = memoryview(b"".join(buffers))[done:]
            while rest:
                rest = rest[os.write(fd, rest):]
        os.fsync(fd)
    finally:
        os.close(fd)

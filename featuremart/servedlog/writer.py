"""Logging served feature values without slowing or failing the read that served them.

The read path (`OnlineReader.read`, through its one-line hook) calls `ServedLog.record`, which marshals what the
read already holds (its MGET reply and statuses, the entities as one JSON text: C-level calls, nothing per
value) and appends it to the bytes waiting for a writer process (`featuremart.servedlog.sink`), sent in batches
by non-blocking sends on a stream socket pair (length-prefixed messages). That process turns records into file rows (one per request x entity x feature view,
the view's value as Redis stored it: `FILE_COLUMNS`) and writes them as Parquet under
`<directory>/date=YYYY-MM-DD/` (the request's UTC date). It is a process, not a thread, because a thread doing
that work held the GIL the reads were waiting for (docs/flywheel.md has the measurements). dbt's
`featuremart.served_log()` expands the files to one row per feature (`LOG_COLUMNS`).

When the buffer budget is spent, the socket is full (the writer is behind) or the writer process is gone, the
read goes on and its rows are counted in `dropped_rows`; a writer process that dies is started again (at once,
or after a growing pause while new ones die young), what it held counted dropped; when a write fails (the directory became read-only, the
disk is full or gone) the writer keeps the rows for its next write, within the same budget, and drops and counts
what exceeds it. `stats()` gives the counters; `featuremart serve` exposes them on /metrics.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import marshal
import os
import select
import socket
import struct
import subprocess
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
#: Kernel buffers of the stream socket to the writer process, what may be in flight while it writes (capped by
#: the kernel at net.core.wmem_max / rmem_max). A stream, not SOCK_SEQPACKET: the kernel queues at most
#: net.unix.max_dgram_qlen (10) packets, so a writer a few milliseconds late made full-speed reads drop.
SOCKET_BYTES = 4 << 20
#: Each message to the writer process: its length (4 bytes, little-endian), then a marshal (version 4: the
#: writer runs this same interpreter), which took 0.6x the CPU of a pickle of the same record. Messages are sent
#: in batches of SEND_BYTES, or after SEND_SECONDS: one syscall and one wake-up of the writer for many reads.
_LENGTH = struct.Struct("<I")
SEND_BYTES, SEND_SECONDS = 64 << 10, 0.05
#: The counters of a writer process's report (`sink.Sink.report`) summed over the writer processes of a log.
_SUMMED = ("written", "dropped", "files", "errors", "behind")
_NO_REPORT = {**dict.fromkeys(_SUMMED, 0), "held": 0, "last_error": None}
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

    logged_rows: int  # accepted (handed to the writer process)
    written_rows: int  # in Parquet files on disk
    dropped_rows: int  # never written: buffer full, writer behind or gone, or a failed write beyond the budget
    buffered_rows: int  # accepted, not yet written (in flight, or waiting to retry a failed write)
    files: int
    write_errors: int
    clock_regressions: int  # reads whose request time was earlier than the previous read's
    writer_restarts: int  # writer processes started again after one died
    writer_behind: int  # times a writer process fell behind the reads (and left SCHED_IDLE: docs/flywheel.md)
    last_error: str | None


class ServedLog:
    """A served-feature log writing Parquet under `directory`, through a writer process of its own.

    Args:
        directory: created if absent; must be writable now (ServedLogError otherwise: a wrong path is a setup
            error, reported at once; a directory that becomes unwritable later only drops, counted).
        services: which reads to log. None (default): reads of the feature services whose exposure sets
            `config.meta.featuremart.log: true`; "all": every read, feature lists included; or a list of
            service names.
        max_buffered_rows: the memory budget: rows accepted but not yet written, beyond which reads are not
            logged (and counted in `dropped_rows`).
        flush_seconds: how often the writer process writes what it holds.
        idle_writer: run the writer process under SCHED_IDLE while it keeps up (Linux, where allowed): an
            experiment against the reads' p99 tail, not shown to help on a loaded machine, where it can fall
            behind and drop rows (docs/flywheel.md); off by default.

    Example:
        >>> log = ServedLog("data/served_log", services="all").attach(fs.reader)   # doctest: +SKIP
        >>> fs.get_online_features([{"customer_id": "C1"}], features=["customer_spend.*"])  # doctest: +SKIP
        >>> log.flush(); log.stats().written_rows                                  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path, *, services: str | Iterable[str] | None = None,
                 max_buffered_rows: int = 1_000_000, flush_seconds: float = 2.0, idle_writer: bool = False):
        self.directory = Path(directory).absolute()
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
        self.idle_writer = idle_writer
        self._count_lock = threading.Lock()  # reads may come from many threads; also guards the socket
        self._counts = dict.fromkeys(("logged", "dropped", "regressions"), 0)
        #: the current writer process's last report (rows written, dropped and held there, files, write errors),
        #: replaced whole by its listener thread; `_gone` sums the reports of the writer processes before it
        self._sink: dict[str, Any] = dict(_NO_REPORT, flushed=0)
        self._gone = dict.fromkeys(_SUMMED, 0)
        self._reported = threading.Condition()
        self._last_error: str | None = None
        self._wanted: dict[tuple[str | None, str | None], bool] = {}
        self._specs: dict[int, tuple[Any, tuple[tuple[str, str, str], ...]]] = {}
        self._reader: OnlineReader | None = None
        self._last_us = 0
        self._flushes = 0
        self._closed = False
        self._restarts = self._young_deaths = self._generation = 0
        self._closing = threading.Event()
        self._start_writer()
        atexit.register(self.close)

    #: the module run as the writer process (bench/logging_discard_sink.py swaps in one that writes nothing)
    sink_module = "featuremart.servedlog.sink"

    def _start_writer(self) -> None:
        """Start a writer process and its listener thread, and send to it from now on."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (ours, theirs):
            with contextlib.suppress(OSError):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BYTES)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BYTES)
        ours.setblocking(False)
        root = str(Path(__file__).resolve().parents[2])  # the child imports this featuremart, however we did
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))}
        process = subprocess.Popen(
            [sys.executable, "-m", self.sink_module, str(theirs.fileno()), str(self.directory),
             str(self.max_buffered_rows), str(self.flush_seconds), "idle" if self.idle_writer else "normal"],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        with self._count_lock:
            self._sock, self._process, self._outbox, self._sent_at = ours, process, bytearray(), time.monotonic()
            self._generation += 1
            self._dead = False
        self._listener = threading.Thread(target=self._listen, args=(ours, process), name="featuremart-served-log",
                                          daemon=True)
        self._listener.start()

    # -- the read path ------------------------------------------------------------------------------------
    def attach(self, reader: OnlineReader) -> ServedLog:
        """Log the reads of `reader` (through its `served_log` hook); returns self."""
        self._reader = reader
        reader.served_log = self
        return self

    def record(self, result: OnlineResult, stored: list[bytes | None], service: str | None, features: Any,
               now_us: int, request_id: str | None = None) -> None:
        """Called by the reader after each read with its result and MGET reply: append them as they are (one
        marshal of objects the read already holds) to the bytes for the writer process, sent without blocking
        every SEND_BYTES or SEND_SECONDS; or count them dropped. Never blocks, never raises."""
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
            with self._count_lock:
                if self._dead or self._in_flight() + rows > self.max_buffered_rows:
                    self._counts["dropped"] += rows
                    return
                if now_us < self._last_us:
                    self._counts["regressions"] += 1
                self._last_us = now_us
                self._counts["logged"] += rows
                self._outbox += _LENGTH.pack(len(message))
                self._outbox += message
                if len(self._outbox) >= SEND_BYTES or time.monotonic() - self._sent_at >= SEND_SECONDS:
                    self._push()
        except Exception as exc:  # logging must never fail a read: the record is counted dropped
            with self._count_lock:
                self._counts["dropped"] += rows
            self._last_error = f"record: {exc!r}"

    def _in_flight(self) -> int:
        """Rows accepted and neither written nor dropped yet (waiting here, in the socket or in the writer)."""
        sink, gone = self._sink, self._gone
        return self._counts["logged"] - gone["written"] - gone["dropped"] - sink["written"] - sink["dropped"]

    def _push(self) -> None:
        """Send what waits for the writer process, as much as its socket takes without blocking (under
        `_count_lock`). The rest waits within the buffer budget; a writer gone is the listener's to count."""
        with contextlib.suppress(OSError):
            del self._outbox[:self._sock.send(self._outbox)]
        self._sent_at = time.monotonic()

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

    # -- the writer process's reports and its restart --------------------------------------------------------
    def _listen(self, sock: socket.socket, process: subprocess.Popen) -> None:
        """Take in a writer process's counters as it sends them (one JSON per line; a thread waiting in select,
        off the GIL). When it is gone, count what it had not written as dropped and, unless the log is closed,
        start another."""
        started, pending = time.monotonic(), b""
        while True:
            try:
                if not select.select([sock], [], [], SEND_SECONDS * 2)[0]:
                    with self._count_lock:  # no read sent what waits since: the reads have stopped
                        if self._outbox and time.monotonic() - self._sent_at >= SEND_SECONDS:
                            self._push()
                        behind = len(self._outbox) >= SEND_BYTES  # a read's send found the socket full
                    if behind and self.idle_writer:  # starved under SCHED_IDLE: it runs at normal priority
                        with contextlib.suppress(OSError):  # until it caught up (featuremart.servedlog.sink)
                            set_policy(process.pid, "OTHER")
                    continue
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._take_report(orjson.loads(line))
        code = process.wait()
        with self._count_lock, self._reported:  # nothing more will be written by it: what was in flight is lost
            sink, lost = self._sink, self._in_flight()
            for name in _SUMMED:
                self._gone[name] += sink[name]
            self._gone["dropped"] += lost
            self._sink = dict(_NO_REPORT, flushed=sink["flushed"])
            self._generation += 1  # flushes waiting on this process give up
            self._dead, self._outbox = True, bytearray()
            self._reported.notify_all()
            restart = not self._closed
            if restart:
                self._last_error = f"the writer process exited (code {code}): restarted; what it held is lost"
                _log.warning("served-feature log: %s", self._last_error)
        if restart:  # at once after a writer that had run a while; after a growing pause while they die young
            self._young_deaths = 0 if time.monotonic() - started > 5 else self._young_deaths + 1
            self._closing.wait(0.0 if not self._young_deaths else min(30.0, 0.25 * 2 ** self._young_deaths))
            with self._reported:
                try:
                    if not self._closed:
                        self._start_writer()
                        self._restarts += 1
                except Exception as exc:  # e.g. out of processes: reads go on, unlogged and counted dropped
                    self._last_error = f"the writer process exited (code {code}) and cannot be restarted: {exc}"
                    _log.warning("served-feature log: %s", self._last_error)
        sock.close()

    def _take_report(self, status: dict[str, Any]) -> None:
        warn = status.pop("warn")
        if warn:  # a write failed (once per outage), or writing works again
            _log.warning("served-feature log: %s", warn)
        with self._reported:
            status["flushed"] = max(status["flushed"] or 0, self._sink["flushed"])
            self._sink = status
            self._reported.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Have the writer process write everything accepted so far; True when it did (False: a write failed,
        the writer process died meanwhile, or `timeout` passed first)."""
        deadline = time.monotonic() + timeout
        with self._reported:
            self._flushes += 1
            token = self._flushes
        message = marshal.dumps(("flush", token), 4)
        with self._count_lock:
            generation = self._generation
            self._outbox += _LENGTH.pack(len(message)) + message
        if not self._send_all(generation, deadline):
            return False
        with self._reported:
            self._reported.wait_for(lambda: self._sink["flushed"] >= token or self._generation != generation,
                                    max(0.0, deadline - time.monotonic()))
            return (self._generation == generation and self._sink["flushed"] >= token
                    and self.stats().buffered_rows == 0)

    def _send_all(self, generation: int, deadline: float) -> bool:
        """Send everything waiting to the writer process of `generation`; False if it died or `deadline` passed."""
        while True:
            with self._count_lock:
                if self._generation != generation:
                    return False
                self._push()
                if not self._outbox:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def close(self) -> None:
        """Stop the writer process after its last write (what cannot be written is counted dropped)."""
        if self._closed:
            return
        with self._reported:  # no restart begins after this
            self._closed = True
            self._closing.set()
        self._send_all(self._generation, time.monotonic() + 30)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)  # the writer reads to the end, writes, reports, and exits
        self._listener.join(timeout=60)
        if self._listener.is_alive():  # pragma: no cover - a writer stuck on a dead disk
            self._process.kill()
            self._listener.join(timeout=10)
        atexit.unregister(self.close)

    def stats(self) -> LogStats:
        c, sink, gone = self._counts, self._sink, self._gone
        return LogStats(c["logged"], gone["written"] + sink["written"], c["dropped"] + gone["dropped"] + sink["dropped"],
                        self._in_flight(), gone["files"] + sink["files"], gone["errors"] + sink["errors"],
                        c["regressions"], self._restarts, gone["behind"] + sink["behind"],
                        self._last_error or sink["last_error"])

    def prometheus(self) -> str:
        """The counters in Prometheus text format (appended to the server's /metrics)."""
        s = self.stats()
        lines = []
        for name, value, kind, text in (
                ("logged_rows_total", s.logged_rows, "counter", "Served-feature log rows accepted."),
                ("written_rows_total", s.written_rows, "counter", "Served-feature log rows written to Parquet."),
                ("dropped_rows_total", s.dropped_rows, "counter",
                 "Served-feature log rows dropped (buffer full, writer behind or gone, sink unavailable)."),
                ("buffered_rows", s.buffered_rows, "gauge", "Served-feature log rows waiting to be written."),
                ("write_errors_total", s.write_errors, "counter", "Failed served-feature log writes."),
                ("writer_restarts_total", s.writer_restarts, "counter",
                 "Served-feature log writer processes restarted after dying."),
                ("writer_behind_total", s.writer_behind, "counter",
                 "Times the served-feature log writer fell behind the reads (and ran at normal priority).")):
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


def set_policy(pid: int | str, policy: str) -> None:
    """Every thread of process `pid` ("self": this one) under scheduling policy `policy` ("IDLE" or "OTHER");
    OSError if refused. A policy is per thread on Linux (new threads inherit their maker's); elsewhere nothing."""
    value = getattr(os, f"SCHED_{policy}", None)
    if value is None or not os.path.isdir(f"/proc/{pid}/task"):
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setscheduler(int(tid), value, os.sched_param(0))


def _entity_keys(entities: Any, plan: Any) -> bytes | list[str]:
    """The entities as given, as one JSON array (plain dicts of their keys: one C-level pass), else (numpy
    scalars, a Mapping that is not a dict) each one's join keys as a JSON object text."""
    try:
        return orjson.dumps(entities)
    except TypeError:
        return [orjson.dumps({k: e[k] for k in plan.key_names}, option=orjson.OPT_SERIALIZE_NUMPY,
                             default=str).decode() for e in entities]

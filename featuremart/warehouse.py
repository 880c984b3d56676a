"""Warehouses: where feature models live and where featuremart's SQL runs.

DuckDB (the embedded default) is read through its native Arrow API. Any other dbt adapter is reached through
dbt itself, with the user's own profiles.yml, and its DB-API cursor is read in batches into Arrow. Spark (dbt-spark's
session mode) is read through the SparkSession dbt configures: small results in Arrow, streamed ones through the
Parquet files Spark writes (featuremart.sparkresult).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from featuremart.config import DbtProject
from featuremart.errors import ConfigError, WarehouseError
from featuremart.registry import Relation

if TYPE_CHECKING:  # pragma: no cover - imported where used: `status` reads its few rows with `records`, and a
    # DuckDB Parquet training set never loads pyarrow
    import pyarrow as pa

BATCH_ROWS = 100_000


@dataclass(frozen=True)
class DuckDBLimits:
    """The resource limits of the DuckDB connections a sync opens (the warehouse read and the sync state).

    DuckDB's own defaults (80% of RAM, a thread per core) let a sync's memory grow with the entity count; with a
    `memory_limit` it spills to `temp_directory` instead, so a sync of 10M entities needs about what one of 1M
    does. `preserve_insertion_order` is off: no query of the sync depends on row order, and keeping it buffers
    results. The one place to change them is the environment: `FEATUREMART_DUCKDB_MEMORY_LIMIT` (per
    connection, DuckDB's syntax: `512MB`, `2GB`) and `FEATUREMART_DUCKDB_THREADS` (docs/operations.md).
    """

    memory_limit: str = "128MB"
    threads: int = 2

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DuckDBLimits:
        """The defaults, overridden by FEATUREMART_DUCKDB_MEMORY_LIMIT / FEATUREMART_DUCKDB_THREADS."""
        env = os.environ if environ is None else environ
        memory = env.get("FEATUREMART_DUCKDB_MEMORY_LIMIT", "").strip() or cls.memory_limit
        if not re.fullmatch(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", memory, re.IGNORECASE):
            raise ConfigError(f"FEATUREMART_DUCKDB_MEMORY_LIMIT={memory!r} is not a size: write a number and a unit, "
                              "e.g. 512MB or 2GB")
        threads = env.get("FEATUREMART_DUCKDB_THREADS", "").strip() or str(cls.threads)
        if not threads.isdigit() or int(threads) < 1:
            raise ConfigError(f"FEATUREMART_DUCKDB_THREADS={threads!r} is not a positive whole number, e.g. 2")
        return cls(memory, int(threads))

    def apply(self, con, temp_directory: Path | None = None) -> None:
        """Set the limits on a DuckDB connection; `temp_directory` is where it spills (default: beside its file)."""
        con.execute("set memory_limit = ?", [self.memory_limit])
        con.execute("set threads = ?", [self.threads])
        con.execute("set preserve_insertion_order = false")
        if temp_directory is not None:  # DuckDB creates it, not its parents (a fresh runner has no target/featuremart)
            temp_directory.parent.mkdir(parents=True, exist_ok=True)
            con.execute("set temp_directory = ?", [str(temp_directory)])


#: The sync state's file in the state directory (target/featuremart/; featuremart.state).
STATE_FILE = "sync_state.duckdb"
#: Rows per Arrow batch a sync reads from the warehouse: a few MB, well inside the DuckDB memory limit.
STAGE_BATCH_ROWS = 20_000


def temp_directory(state_dir: Path) -> Path:
    """Where the sync's DuckDB connections spill what exceeds their memory limit (emptied by DuckDB on close)."""
    return state_dir / "duckdb_tmp"


class Warehouse(ABC):
    """The few operations featuremart needs of a warehouse."""

    dialect: str

    @abstractmethod
    def columns(self, relations: Iterable[Relation]) -> dict[Relation, dict[str, str]]:
        """Output columns and their warehouse types of each relation that exists (missing ones are absent)."""

    @abstractmethod
    def stream(self, sql: str, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Run a query and yield its result in Arrow record batches: memory stays bounded by one batch."""

    def query(self, sql: str) -> pa.Table:
        import pyarrow as pa

        batches = list(self.stream(sql))
        return pa.Table.from_batches(batches) if batches else pa.table({})

    def records(self, sql: str) -> list[dict[str, Any]]:
        """A small result as one dict per row (Python values): for the few rows of `status` and the build gate."""
        return self.query(sql).to_pylist()

    def bound_memory(self, limits: DuckDBLimits, temp_directory: Path) -> None:
        """Bound the memory of what this warehouse runs in-process (DuckDB); a server warehouse's queries run
        on the server, and its client holds one batch at a time, so by default this does nothing."""

    def prefetch(self, queries: tuple[str, ...], batch_rows: int = BATCH_ROWS) -> Prefetch | None:
        """Start `queries` now, in order, on a connection of their own beside this one, for a caller to `take`
        later (Prefetch); None where the warehouse cannot (by default: the queries run when they are asked)."""
        return None

    def close(self) -> None:
        """Release the connection (DuckDB: the file lock, so that `dbt build` can run)."""

    def release(self) -> None:
        """Release the connection without making the caller wait for it where that is slow (DuckDB); by default
        the same as `close`. Whatever opens the warehouse again, or `wait_released`, waits for it first."""
        self.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DuckDBWarehouse(Warehouse):
    """A DuckDB file, opened read-only and only while featuremart uses it."""

    dialect = "duckdb"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._con = None
        self._limits: tuple[DuckDBLimits, Path] | None = None

    @property
    def con(self):
        if self._con is None:
            import duckdb

            if not self.path.exists():
                raise WarehouseError(f"DuckDB file {self.path} does not exist: run `dbt build` first")
            wait_released(self.path)
            try:
                self._con = duckdb.connect(str(self.path), read_only=True)
            except duckdb.IOException as exc:
                raise WarehouseError(_lock_message(self.path, str(exc))) from None
            # Time is UTC: timestamptz values come out as UTC Arrow timestamps, whatever the process's TZ.
            self._con.execute("set TimeZone = 'UTC'")
            # DuckDB draws a progress bar on stdout for queries over 2 s: it would mix into a command's output
            # (and a piped `featuremart training-set`'s), and drawing it costs time.
            self._con.execute("set enable_progress_bar = false")
            if self._limits:
                self._limits[0].apply(self._con, self._limits[1])
        return self._con

    def bound_memory(self, limits: DuckDBLimits, temp_directory: Path) -> None:
        if self._limits == (limits, temp_directory):
            return  # already bounded (a prefetched read first): DuckDB refuses a temp directory it spilled to
        self._limits = (limits, temp_directory)
        if self._con is not None:
            limits.apply(self._con, temp_directory)

    def prefetch(self, queries: tuple[str, ...], batch_rows: int = BATCH_ROWS) -> Prefetch | None:
        return Prefetch(self.con, queries, batch_rows)

    def columns(self, relations: Iterable[Relation]) -> dict[Relation, dict[str, str]]:
        wanted = list(relations)
        if not wanted:
            return {}
        # DuckDB's own catalog, only the tables asked for (information_schema.columns is a view over every
        # column of every attached database); the same data_type strings, views included, DuckDB's own not.
        rows = self.con.execute(
            "select schema_name, table_name, column_name, data_type from duckdb_columns() "
            "where not internal and lower(table_name) in (select unnest(?)) "
            "order by database_name, schema_name, table_name, column_index",
            [sorted({r.identifier.lower() for r in wanted})]).fetchall()
        by_name: dict[tuple[str, str], dict[str, str]] = {}
        for schema, name, column, dtype in rows:
            by_name.setdefault((schema.lower(), name.lower()), {})[column] = dtype
        found = {}
        for rel in wanted:
            cols = by_name.get((rel.schema.lower(), rel.identifier.lower()))
            if cols:
                found[rel] = cols
        return found

    def stream(self, sql: str, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        yield from batches(self.con.sql(sql).to_arrow_reader(batch_rows))

    def records(self, sql: str) -> list[dict[str, Any]]:
        cursor = self.con.execute(sql)  # no Arrow: `featuremart status` then never loads pyarrow (0.18 s CPU)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        wait_released(self.path)

    def release(self) -> None:
        """Close the connection on a helper thread: DuckDB frees the query's buffers on close (0.1-0.5 s after a
        1M-row training set), time the caller need not wait for. Until it has, the file stays locked: opening
        it again here, `close`, and `FeatureStore.close` wait for it (`wait_released`)."""
        con, self._con = self._con, None
        if con is not None:
            thread = threading.Thread(target=con.close, name=f"featuremart-close-{self.path.name}")
            with _RELEASING_LOCK:
                _RELEASING.setdefault(self.path, []).append(thread)
            thread.start()


class Prefetch:
    """Queries started ahead of the code that reads them: on a DuckDB connection of their own (a cursor of the
    warehouse's: same database, same limits) in a thread, up to the first batch of the last query's result.

    A sync's first query is a blocking aggregate (the latest row per entity: no row before the whole history is
    read) that DuckDB computes without holding the GIL, so the rest of the process's start-up (imports, Redis,
    the build gate, the sync state) runs beside it instead of before it. Every query but the last is read
    whole (a watermark read before the rows, as the sync does). `take` hands the results over only to a caller
    that needs exactly these queries; otherwise, and on `close`, they are interrupted and dropped: reading
    nothing that was not asked for, and publishing nothing by itself.
    """

    def __init__(self, con, queries: tuple[str, ...], batch_rows: int):
        self.queries = queries
        self._cur = con.cursor()
        self._cur.execute("set TimeZone = 'UTC'")  # session settings, as DuckDBWarehouse.con sets them
        self._cur.execute("set enable_progress_bar = false")
        self._whole: list[pa.Table] = []
        self._reader: pa.RecordBatchReader | None = None
        self._first: pa.RecordBatch | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(batch_rows,), name="featuremart-prefetch",
                                        daemon=True)
        self._thread.start()

    def _run(self, batch_rows: int) -> None:
        try:
            *whole, last = self.queries
            self._whole = [self._cur.sql(q).to_arrow_table() for q in whole]
            self._reader = self._cur.sql(last).to_arrow_reader(batch_rows)
            self._first = self._reader.read_next_batch()  # the aggregate runs here, the GIL released
        except StopIteration:
            pass  # an empty result
        except BaseException as exc:  # noqa: BLE001 (raised by `take` in the caller's thread, or dropped)
            self._error = exc

    def take(self, queries: tuple[str, ...]) -> tuple[list[pa.Table], Iterator[pa.RecordBatch]] | None:
        """The whole results of all queries but the last, and the last's batches (closing the connection when
        read to the end or closed), if `queries` are the ones started; else None, and these are dropped. A
        query's error is raised here, as the caller's own query would have raised it."""
        if queries != self.queries or self._cur is None:
            self.close()
            return None
        self._thread.join()
        if self._error is not None:
            error = self._error
            self.close()
            raise error
        return self._whole, self._batches()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        try:
            if self._first is not None:
                yield self._first
                yield from self._reader
        finally:
            self.close()

    def close(self) -> None:
        """Interrupt what still runs and release the connection (idempotent)."""
        cur, self._cur = self._cur, None
        if cur is None:
            return
        while self._thread.is_alive():  # again until it stops: an interrupt before the query began is lost
            cur.interrupt()
            self._thread.join(0.05)
        if self._reader is not None:
            self._reader.close()
        cur.close()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Connections being closed on a helper thread (DuckDBWarehouse.release), by DuckDB file.
_RELEASING: dict[Path, list[threading.Thread]] = {}
_RELEASING_LOCK = threading.Lock()


def wait_released(path: Path | None = None) -> None:
    """Wait until the connections `release` is closing (of the DuckDB file `path`, else of every file) are closed:
    until then the file is locked, for this process's next connection, dbt, and other processes."""
    with _RELEASING_LOCK:
        threads = [t for p in ([path] if path is not None else list(_RELEASING)) for t in _RELEASING.pop(p, [])]
    for thread in threads:
        thread.join()


def batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """A reader's batches, closing it however iteration ends: an open reader keeps its DuckDB database alive,
    and opening that file again then waits for it (a hang, not an error)."""
    try:
        yield from reader
    finally:
        reader.close()


def _lock_message(path: Path, detail: str) -> str:
    pid = re.search(r"PID (\d+)", detail)
    holder = f" (PID {pid.group(1)})" if pid else ""
    if "lock" in detail.lower():
        return (f"DuckDB file {path} is locked by another process{holder}, most likely a running `dbt build`: "
                "wait for it to finish, then rerun. featuremart only opens the file while it reads it.")
    return f"cannot open DuckDB file {path}: {detail}"


def open_warehouse(project: DbtProject) -> Warehouse:
    """The warehouse of the project's active dbt target."""
    kind = project.adapter_type
    if kind == "duckdb":
        path = Path(str(project.target.get("path", "")))
        if str(path) in ("", ":memory:"):
            raise WarehouseError(f"target {project.target_name!r} is an in-memory DuckDB: nothing to read; "
                                 "set a file path in profiles.yml")
        return DuckDBWarehouse(path if path.is_absolute() else project.project_dir / path)
    if kind == "spark":
        return SparkWarehouse(project)
    return DbtAdapterWarehouse(project)


class DbtAdapterWarehouse(Warehouse):
    """Any warehouse dbt reaches, through dbt's own adapter and the user's profiles.yml.

    dbt opens the connection (so credentials, SSL and every profile option work as they do for `dbt build`);
    featuremart then reads through the adapter's DB-API handle, with a server-side cursor where the driver has
    one, so memory holds one batch at a time.
    """

    def __init__(self, project: DbtProject):
        self.project = project
        self.dialect = _SQLGLOT_DIALECTS.get(project.adapter_type, project.adapter_type)
        if self.dialect not in SUPPORTED_DIALECTS:
            raise WarehouseError(
                f"target {project.target_name!r} is a {project.adapter_type} warehouse; featuremart's SQL is "
                f"written for {', '.join(SUPPORTED_DIALECTS)} so far"
            )
        self._adapter = None
        self._context = None
        self._handle = None

    @property
    def handle(self):
        if self._handle is None:
            from featuremart.dbtcore import open_adapter

            if self._adapter is None:  # built once: dbt's adapter start-up walks the stack (~0.1 s and up)
                self._adapter = open_adapter(self.project)
            self._context = self._adapter.connection_named("featuremart")
            self._context.__enter__()
            try:
                self._handle = self._adapter.connections.get_thread_connection().handle
                with self._handle.cursor() as cur:  # timestamptz values read in UTC, whatever PGTZ says
                    cur.execute("set time zone 'UTC'")
                self._handle.commit()
            except Exception as exc:  # the driver's own error type: say which target failed
                self.close()
                raise WarehouseError(f"cannot connect to target {self.project.target_name!r} "
                                     f"({self.project.adapter_type}): {exc}") from None
        return self._handle

    def columns(self, relations: Iterable[Relation]) -> dict[Relation, dict[str, str]]:
        wanted = list(relations)
        schemas = sorted({r.schema for r in wanted})
        if not schemas:
            return {}
        cur = self.handle.cursor()
        try:
            marks = ", ".join(["%s"] * len(schemas))
            cur.execute(
                "select table_schema, table_name, column_name, data_type, udt_name from information_schema.columns "
                f"where table_schema in ({marks}) order by table_schema, table_name, ordinal_position", schemas)
            rows = cur.fetchall()
        finally:
            cur.close()
        by_name: dict[tuple[str, str], dict[str, str]] = {}
        for schema, name, column, dtype, udt in rows:
            # Postgres reports every array as ARRAY; its udt_name (_float8, _text, ...) says of what.
            by_name.setdefault((schema.lower(), name.lower()), {})[column] = udt if dtype == "ARRAY" else dtype
        return {r: by_name[(r.schema.lower(), r.identifier.lower())] for r in wanted
                if (r.schema.lower(), r.identifier.lower()) in by_name}

    def stream(self, sql: str, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        try:
            cur = self.handle.cursor(name=f"featuremart_{id(sql):x}")  # server-side (psycopg2)
            cur.itersize = batch_rows
        except TypeError:
            cur = self.handle.cursor()
        import pyarrow as pa

        try:
            cur.execute(sql)
            names = None
            while True:
                rows = cur.fetchmany(batch_rows)
                if names is None:
                    names = [d[0] for d in cur.description]
                if not rows:
                    break
                yield pa.RecordBatch.from_arrays([pa.array(list(col)) for col in zip(*rows)], names=names)
        finally:
            cur.close()
            self.handle.rollback()  # read-only work: end the transaction the named cursor needed

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
        self._context = self._handle = None
        if self._adapter is not None:  # the connection goes; the adapter stays for the next use
            self._adapter.cleanup_connections()


class SparkWarehouse(DbtAdapterWarehouse):
    """Apache Spark through dbt-spark's `session` method: a SparkSession in this process, configured as the
    profile says (its `server_side_parameters`: warehouse directory, metastore), so featuremart sees the tables
    `dbt build` wrote. Results come back in Arrow; the session's time zone is set to UTC (featuremart's SQL
    reads timestamps without zone as UTC). Other dbt-spark methods (thrift, http, odbc) are not supported yet:
    docs/warehouses.md.
    """

    def __init__(self, project: DbtProject):
        super().__init__(project)
        method = str(project.target.get("method", ""))
        if method != "session":
            raise WarehouseError(f"target {project.target_name!r} is a spark warehouse with method {method!r}; "
                                 "featuremart reads Spark through method: session only so far (docs/warehouses.md)")
        self._session = None

    @property
    def session(self):
        """The SparkSession of the profile (started on first use; one per process, as Spark allows)."""
        if self._session is None:
            try:
                from pyspark.sql import SparkSession
            except ImportError:
                raise WarehouseError(f"target {self.project.target_name!r} is Spark: install featuremart[spark] "
                                     "(dbt-spark[session], pyspark)") from None
            builder = SparkSession.builder.enableHiveSupport()
            params = spark_parameters(self.project.target.get("server_side_parameters") or {}, self.project.project_dir)
            for key, value in params.items():
                builder = builder.config(key, value)
            try:
                session = builder.getOrCreate()
            except Exception as exc:  # pyspark's PySparkRuntimeError, py4j errors: the JVM did not start
                raise WarehouseError(
                    f"cannot start Spark for target {self.project.target_name!r}: "
                    f"{str(exc).strip().splitlines()[0].rstrip('.')}. "
                    f"Spark needs a Java 17 runtime: install one, or point JAVA_HOME at it "
                    f"(JAVA_HOME={os.environ.get('JAVA_HOME', '(unset)')})") from None
            session.conf.set("spark.sql.session.timeZone", "UTC")
            self._session = session
        return self._session

    def columns(self, relations: Iterable[Relation]) -> dict[Relation, dict[str, str]]:
        found = {}
        for rel in relations:
            name = f"`{rel.schema.replace('`', '``')}`.`{rel.identifier.replace('`', '``')}`"
            if self.session.catalog.tableExists(name):
                found[rel] = {f.name: f.dataType.simpleString() for f in self.session.table(name).schema.fields}
        return found

    def query(self, sql: str) -> pa.Table:
        """The whole result, by Spark's Arrow collect: for the small results a caller holds whole anyway."""
        with self._refusals():
            return self.session.sql(sql).toArrow()

    def stream(self, sql: str, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The result in Arrow batches, in bounded memory: Spark writes it as Parquet into a fresh directory under
        target/spark/results/, read back one row group at a time in the query's order, and removed once the
        batches are read or the stream is closed (featuremart.sparkresult). The query runs at this call, not at
        the first batch: a refusal then reaches the sync as featuremart's error, not inside the reader it hands
        batches to."""
        from featuremart.sparkresult import ParquetResult, result_directory, write_result

        directory = result_directory(self.project.target_dir)
        try:
            with self._refusals():
                schema = write_result(self.session.sql(sql), directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)  # what a failed write left
            raise
        return ParquetResult(directory, schema, batch_rows)

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[None]:
        """Spark's own errors, and the JVM's (a file it cannot read), as WarehouseError naming the target."""
        from py4j.protocol import Py4JError, Py4JJavaError
        from pyspark.errors import PySparkException

        try:
            yield
        except (PySparkException, Py4JError) as exc:
            detail = _java_reason(exc.java_exception) if isinstance(exc, Py4JJavaError) else str(exc)
            raise WarehouseError(f"Spark (target {self.project.target_name!r}) refused a query: "
                                 f"{(detail.strip().splitlines() or [type(exc).__name__])[0]}") from None

    def close(self) -> None:
        """The SparkSession stays: Spark runs one per process, and starting one takes seconds."""


def _java_reason(error) -> str:
    """The first line of a Java exception that says something: Spark wraps a task's failure in
    `Exception thrown in awaitResult`; its causes name the error class and the file."""
    lines = []
    while error is not None and len(lines) < 10:
        lines.append((str(error.toString()).splitlines() or [""])[0])
        error = error.getCause()
    useful = [line for line in lines if not line.rstrip().endswith("awaitResult:")]
    return (useful or lines or [""])[0]


_DERBY_HOME = re.compile(r"(-Dderby\.system\.home=)(\S+)")


def spark_parameters(params: dict, project_dir: Path) -> dict[str, str]:
    """The profile's Spark settings, with a relative warehouse directory and Derby home (where a relative
    metastore `databaseName` lives) anchored at the project directory, as featuremart reads a relative DuckDB
    path: Spark would take them relative to the working directory, and featuremart may run from another one
    than `dbt build` did.

    >>> spark_parameters({"spark.sql.warehouse.dir": "target/spark/warehouse",
    ...                   "spark.driver.extraJavaOptions": "-Xss4m -Dderby.system.home=target/spark"}, Path("/p"))
    {'spark.sql.warehouse.dir': '/p/target/spark/warehouse', 'spark.driver.extraJavaOptions': '-Xss4m -Dderby.system.home=/p/target/spark'}
    """
    def anchored(path: str) -> str:
        return path if Path(path).is_absolute() or ":" in path else str(project_dir / path)

    out = {str(k): str(v) for k, v in params.items()}
    if "spark.sql.warehouse.dir" in out:
        out["spark.sql.warehouse.dir"] = anchored(out["spark.sql.warehouse.dir"])
    if "spark.driver.extraJavaOptions" in out:
        out["spark.driver.extraJavaOptions"] = _DERBY_HOME.sub(lambda m: m.group(1) + anchored(m.group(2)),
                                                               out["spark.driver.extraJavaOptions"])
    return out


#: dbt adapter type -> sqlglot dialect, where the names differ.
_SQLGLOT_DIALECTS = {"postgres": "postgres", "duckdb": "duckdb", "spark": "spark"}
#: The dialects featuremart's generated SQL is written and tested for.
SUPPORTED_DIALECTS = ("duckdb", "postgres", "spark")

"""Training sets from Python: the SQL of the dbt macro `featuremart.training_set`, compiled by dbt, run here.

There is one implementation of the point-in-time join, the dbt macros under `macros/training/`. Python does
not rebuild it: it asks dbt to render `{{ featuremart.training_set(...) }}` for the active target
(`dbt compile --inline`, in-process, through `featuremart.dbtcore`, which caches the rendered SQL), then runs
the rendered SQL on the warehouse and streams the result into Arrow. A dbt model built with the same macro
and this function therefore return the same table.

Spines: a dbt model name, a table name, a SQL query (text starting with `select` or `with`), a Parquet file
path, or a pandas / Arrow frame. Frames and Parquet files need the embedded DuckDB warehouse (the spine is
read by the same DuckDB connection that reads the features); other warehouses take models, tables and SQL.

Example:
    >>> from featuremart.config import load_dbt_project
    >>> from featuremart.warehouse import open_warehouse
    >>> project = load_dbt_project(Path("."))
    >>> with open_warehouse(project) as warehouse:  # doctest: +SKIP
    ...     table = training_set(project, warehouse, "fraud_labels", "label_ts", service="fraud_model")
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from featuremart.config import DbtProject
from featuremart.dbtcore import cached_compile, compile_inline, depends_on, jinja_literal
from featuremart.errors import TrainingSetError
from featuremart.manifest import Manifest, load_manifest
from featuremart.warehouse import BATCH_ROWS, DuckDBWarehouse, Warehouse

if TYPE_CHECKING:  # pragma: no cover - imported where used: DuckDB writes a Parquet training set without pyarrow
    import pyarrow as pa

#: The name a frame or Parquet spine is registered under on the DuckDB connection while the join runs.
SPINE_RELATION = "_fm_training_spine"

#: The macro's `ordered` value for a result put in the spine's order here (`in_spine_order`): the join's own
#: order, the spine's row number (from 0) as a last column, `ROW_COLUMN`.
ROW_NUMBER = "row_number"
ROW_COLUMN = "_fm_row"


@dataclass(frozen=True)
class CompiledTrainingSet:
    """The SQL dbt rendered for one request, and how long dbt took to render it."""

    sql: str
    compile_seconds: float


def training_set(project: DbtProject, warehouse: Warehouse, spine: Any, timestamp: str, *,
                 service: str | None = None, features: Sequence[str] | None = None, ordered: bool = True) -> pa.Table:
    """The point-in-time training set of `spine` with a service's features (or a list of features).

    For each spine row and each feature view: the values of the view's latest row with
    `spine[timestamp] - ttl <= event_ts <= spine[timestamp]`, else nulls. Every spine row comes out once, in
    the spine's order as read, its columns untouched, followed by the features (named as in online reads,
    see `featuremart.registry.output_names`). A `timestamptz` spine timestamp is compared in UTC.

    Args:
        project: the dbt project (its target decides the warehouse and the macro's dialect).
        warehouse: an open warehouse of that target; its connection is closed while dbt compiles.
        spine: a dbt model name, a table name, a SQL query, a Parquet path, or a pandas/Arrow frame.
        timestamp: the spine's timestamp column.
        service: a feature service (a dbt exposure of type ml), or
        features: a list of `view.feature` / `view.*`; give exactly one of the two.
        ordered: False returns the same rows in the join's own order, skipping the step that puts them in
            the spine's (on DuckDB a permutation by row number, elsewhere the SQL's sort; see
            docs/training-sets.md).

    Raises:
        TrainingSetError: a frame/Parquet spine on a warehouse other than DuckDB, an unknown name, or a dbt
            compile error (its message says what is wrong: missing column, unknown feature, ...).
    """
    compiled, frame = compile_training_set(project, warehouse, spine, timestamp, service=service,
                                           features=features, ordered=arrow_order(warehouse, ordered))
    return in_spine_order(run_training_set(warehouse, compiled.sql, frame))


def arrow_order(warehouse: Warehouse, ordered: bool) -> bool | str:
    """The macro's `ordered` for a result fetched whole into Arrow: in the spine's order, on DuckDB the join's
    own order with the spine's row number (then placed by `in_spine_order`: a permutation, no sort); elsewhere
    the SQL's `order by`."""
    return ROW_NUMBER if ordered and isinstance(warehouse, DuckDBWarehouse) else ordered


def compile_training_set(project: DbtProject, warehouse: Warehouse, spine: Any, timestamp: str, *,
                         service: str | None = None, features: Sequence[str] | None = None,
                         ordered: bool | str = True, manifest: Callable[[], Manifest] | None = None
                         ) -> tuple[CompiledTrainingSet, pa.Table | None]:
    """The SQL of `featuremart.training_set` for this request, and the frame to register as its spine (or
    None when the spine is already in the warehouse). `ordered` is the macro's (True, False or `ROW_NUMBER`).
    `manifest` returns the project's parsed manifest (a FeatureStore keeps it parsed); by default it is read
    once, when needed."""
    if (service is None) == (features is None):
        raise TrainingSetError("name either a feature service (service=...) or a list of features "
                               "(features=['view.feature', ...]), not both or neither")
    if features is not None and (isinstance(features, str) or not list(features)):
        raise TrainingSetError(f"features must be a non-empty list of 'view.feature' strings, got {features!r}")
    if not isinstance(timestamp, str) or not timestamp:
        raise TrainingSetError(f"timestamp must be the name of the spine's timestamp column, got {timestamp!r}")

    # Read once for both uses below (a dbt manifest is megabytes of JSON: parsing it was a visible part of a call)
    manifest = manifest or functools.cache(lambda: load_manifest(project.target_dir))
    spine_arg, spine_columns, frame = _spine(project, warehouse, spine, manifest)
    args = [spine_arg, jinja_literal(timestamp)]
    args.append(f"service={jinja_literal(service)}" if service is not None
                else f"features={jinja_literal(list(features))}")
    if spine_columns is not None:
        args.append(f"spine_columns={jinja_literal(spine_columns)}")
    if ordered is not True:
        args.append(f"ordered={jinja_literal(ordered)}")
    # dbt records refs while parsing, before it knows a service's views: declare them (see training_set.sql).
    inline = (depends_on(_view_names(manifest, service, features))
              + "{{ featuremart.training_set(" + ", ".join(args) + ") }}")

    started = time.perf_counter()
    # The rendered SQL depends on the project, the target and the columns dbt reads from the warehouse: those
    # of dbt models change only with a new manifest (part of the cache key), a table or query spine's may not.
    cacheable = spine_columns is not None or spine_arg.startswith("ref(")
    sql = cached_compile(project, inline) if cacheable else None
    if sql is None:
        warehouse.close()  # DuckDB: dbt opens the file itself; the warehouse reopens it lazily afterwards
        sql = compile_inline(project, inline, cache=cacheable)
    return CompiledTrainingSet(sql, time.perf_counter() - started), frame


def run_training_set(warehouse: Warehouse, sql: str, frame: pa.Table | None = None) -> pa.Table:
    """Run compiled training-set SQL, with `frame` registered as the spine relation (DuckDB only)."""
    with training_set_batches(warehouse, sql, frame) as reader:
        return reader.read_all()


def in_spine_order(table: pa.Table) -> pa.Table:
    """A result of `ordered=ROW_NUMBER` SQL (its last column the spine's row number, 0 to n - 1) with its rows
    placed by that number, which is dropped; any other table as it is.

    Each fixed-width column (numbers, times, dates) is scattered batch by batch by numpy, every value straight
    to its row: no sort, no concatenation. numpy releases the GIL while it scatters, so the columns go on a
    thread per core. At 1M rows x 13 columns this costs 0.05-0.06 s, where Arrow's `take` into its default
    allocator (mimalloc, which asks for huge pages) cost 0.05-0.27 s from one run to the next
    (docs/training-sets.md). Other columns (strings, booleans, decimals, lists) are gathered by Arrow's `take`.

    Raises:
        TrainingSetError: the numbers are not each row number once (not the SQL of `ordered=ROW_NUMBER`).
    """
    if table.column_names[-1:] != [ROW_COLUMN]:
        return table
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa
    from pyarrow._compute import call_function  # pyarrow.compute's own; importing that module costs 0.05 s

    rows = table.num_rows
    batches = [batch for batch in table.to_batches() if batch.num_rows]  # every column cut at the same rows
    spots = [_fixed_width(batch.column(ROW_COLUMN), np.dtype(np.int64)) for batch in batches]
    # Each row written once: n numbers all in range and covering 0..n-1 (a row left unwritten would hold
    # garbage). The range is checked apart because numpy would count a negative index from the end.
    placed = np.zeros(rows, np.bool_)
    in_range = all(spot.min() >= 0 and spot.max() < rows for spot in spots)
    if in_range:
        for spot in spots:
            placed[spot] = True
    if table.column(ROW_COLUMN).null_count or not in_range or not placed.all():
        raise TrainingSetError(f"the result's {ROW_COLUMN} is not each number from 0 to {rows - 1} once: "
                               "in_spine_order places the result of the ordered='row_number' SQL only")
    table = table.drop_columns([ROW_COLUMN])
    # malloc's memory, not numpy's (large arrays there ask for huge pages: the kernel's compaction to find them
    # made the placement take 0.04-0.15 s from one run to the next) nor Arrow's default (mimalloc, the same)
    memory = pa.system_memory_pool()
    order = None  # where each spine row is in the result, for the columns Arrow's take gathers
    if any(_scatter_type(field.type) is None for field in table.schema):
        order = np.empty(rows, np.int64)
        for start, spot in zip(itertools.accumulate((len(spot) for spot in spots), initial=0), spots):
            order[spot] = np.arange(start, start + len(spot))
        order = pa.array(order)

    def place(index: int) -> pa.ChunkedArray:
        kind = table.schema.field(index).type
        dtype = _scatter_type(kind)
        if dtype is None:
            return call_function("take", [table.column(index), order], None, memory)
        buffer = pa.allocate_buffer(rows * kind.bit_width // 8, memory_pool=memory)
        values = np.frombuffer(buffer, dtype)
        valid = np.empty(rows, np.bool_) if table.column(index).null_count else None
        for batch, spot in zip(batches, spots):
            chunk = batch.column(index)
            values[spot] = _fixed_width(chunk, values.dtype)
            if valid is not None:
                valid[spot] = _validity(chunk)
        bits = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.chunked_array([pa.Array.from_buffers(kind, rows, [bits, buffer])], kind)

    with ThreadPoolExecutor(os.cpu_count()) as threads:
        columns = list(threads.map(place, range(table.num_columns)))
    return pa.Table.from_arrays(columns, schema=table.schema)


def _scatter_type(kind: pa.DataType) -> str | None:
    """numpy's type for the values of a fixed-width Arrow type (numbers, times, dates); None for the others
    (booleans are bits, decimals 16 bytes, strings and lists not fixed-width)."""
    import pyarrow as pa

    return {8: "u1", 16: "u2", 32: "u4", 64: "u8"}.get(kind.bit_width) if pa.types.is_primitive(kind) else None


def _fixed_width(chunk: pa.Array, dtype: Any) -> Any:
    """The values of a fixed-width array as numpy's `dtype` (a view of its buffer: no copy)."""
    import numpy as np

    dtype = np.dtype(dtype)
    return np.frombuffer(chunk.buffers()[1], dtype, len(chunk), chunk.offset * dtype.itemsize)


def _validity(chunk: pa.Array) -> Any:
    """A bool per value of `chunk`: present or null."""
    import numpy as np

    bitmap = chunk.buffers()[0]
    if bitmap is None:
        return True
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), count=chunk.offset + len(chunk), bitorder="little")
    return bits[chunk.offset:].view(np.bool_)


@contextlib.contextmanager
def training_set_batches(warehouse: Warehouse, sql: str,
                         frame: pa.Table | None = None) -> Iterator[pa.RecordBatchReader]:
    """The result of compiled training-set SQL as a stream of record batches (so a file can be written
    without holding the whole table), with `frame` registered as the spine relation (DuckDB only) until the
    stream is closed. An empty result keeps its columns and types on DuckDB (other warehouses: no columns)."""
    if frame is not None:
        con = warehouse.con  # type: ignore[attr-defined]  # checked by _spine: a DuckDBWarehouse
        con.register(SPINE_RELATION, frame)
    stream = None
    try:
        if isinstance(warehouse, DuckDBWarehouse):
            reader = warehouse.con.sql(sql).to_arrow_reader(BATCH_ROWS)
        else:
            import pyarrow as pa

            stream = warehouse.stream(sql)
            first = next(stream, None)
            reader = (pa.RecordBatchReader.from_batches(pa.schema([]), iter(())) if first is None else
                      pa.RecordBatchReader.from_batches(first.schema, itertools.chain([first], stream)))
        try:
            yield reader
        finally:
            reader.close()  # an open DuckDB reader keeps the database alive (see warehouse.batches)
    finally:
        if stream is not None:  # what it holds goes now (Spark: its result's files), read to the end or not
            stream.close()  # type: ignore[attr-defined]
        if frame is not None:
            con.unregister(SPINE_RELATION)


# --- writing it -------------------------------------------------------------------------------------------

#: The file formats `write_training_set` writes, by suffix.
OUTPUT_SUFFIXES = (".parquet", ".csv")


def write_training_set(data: pa.Table | pa.RecordBatchReader, path: str | Path) -> tuple[int, int]:
    """Write a training set (a table, or a stream of batches) to a .parquet or .csv file, whole or not at
    all; returns its (rows, columns).

    The file is written beside its destination under a temporary name and renamed over it once complete, so
    a failure leaves no partial file (and an earlier file of that name untouched). A Parquet file is written
    batch by batch as they come (memory: one batch, not the table). CSV has no arrays or structs: such a cell
    is written as JSON text (`[0.25,-1.5,null]`, null cells empty), which `json.loads` reads back exactly
    (floats are written in their shortest round-trip form).
    """
    import pyarrow as pa

    def write(tmp: str, parquet: bool) -> int:
        if parquet:
            import pyarrow.parquet as pq

            rows = 0
            with pq.ParquetWriter(tmp, data.schema) as writer:
                for batch in (data.to_batches() if isinstance(data, pa.Table) else data):
                    writer.write_batch(batch)
                    rows += batch.num_rows
            return rows
        import pyarrow.csv as pacsv

        table = data if isinstance(data, pa.Table) else data.read_all()
        pacsv.write_csv(_csv_ready(table), tmp)
        return table.num_rows

    return _write_whole(path, write, pa.ArrowException), len(data.schema)


def write_training_set_query(warehouse: Warehouse, sql: str, frame: pa.Table | None,
                             path: str | Path) -> tuple[int, int]:
    """Run compiled training-set SQL into a .parquet or .csv file, whole or not at all; returns (rows, columns).

    On DuckDB a Parquet file is written by DuckDB itself (`DuckDBPyRelation.write_parquet`: parallel and
    streaming, 2-3x faster than fetching Arrow batches into pyarrow's writer, and no table held in memory).
    Elsewhere the warehouse's batches are streamed into `write_training_set`."""
    if isinstance(warehouse, DuckDBWarehouse) and Path(path).suffix.lower() == ".parquet":
        import duckdb

        con = warehouse.con
        if frame is not None:
            con.register(SPINE_RELATION, frame)
        try:
            relation = con.sql(sql)
            columns = len(relation.columns)

            def write(tmp: str, parquet: bool) -> int:
                relation.write_parquet(tmp)
                # The footer's count, read by DuckDB: pyarrow (and numpy) would cost a CLI process 0.3 s to import
                return con.execute("select num_rows from parquet_file_metadata(?)", [tmp]).fetchone()[0]

            return _write_whole(path, write, duckdb.Error), columns
        finally:
            if frame is not None:
                con.unregister(SPINE_RELATION)
    with training_set_batches(warehouse, sql, frame) as batches:
        return write_training_set(batches, path)


def _write_whole(path: str | Path, write: Callable[[str, bool], int],
                 *errors: type[BaseException]) -> int:
    """`write(temporary path, is_parquet)` beside `path`, then renamed over it: all or nothing. Returns what
    `write` returns; an OSError or one of `errors` (an Arrow error, DuckDB's) becomes a TrainingSetError naming
    the file."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise TrainingSetError(f"--output {str(path)!r}: write a .parquet or .csv file")
    if not path.parent.is_dir():
        raise TrainingSetError(f"--output {str(path)!r}: the directory {path.parent} does not exist")
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        result = write(tmp, path.suffix.lower() == ".parquet")
        os.replace(tmp, path)
    except (OSError, *errors) as exc:  # a full disk, a type the format cannot hold, a query
        Path(tmp).unlink(missing_ok=True)
        raise TrainingSetError(f"could not write {path}: {exc}; nothing was written") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def _csv_ready(table: pa.Table) -> pa.Table:
    """The table with every nested column (list, struct, map) as JSON text, which CSV can hold."""
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            cells = [None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                     for v in table.column(i).to_pylist()]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(cells, pa.string()))
    return table


# --- the spine --------------------------------------------------------------------------------------------

def _spine(project: DbtProject, warehouse: Warehouse, spine: Any,
           manifest: Callable[[], Manifest]) -> tuple[str, dict | None, pa.Table | None]:
    """(the macro's `spine` argument as Jinja, the spine's columns when dbt cannot read them, a frame)."""
    frame = _as_arrow(spine)
    if frame is not None or _is_parquet(spine):
        if not isinstance(warehouse, DuckDBWarehouse):
            raise TrainingSetError(
                f"a {'Parquet file' if frame is None else type(spine).__name__} spine needs the DuckDB warehouse; "
                f"target {project.target_name!r} is {project.adapter_type}: load the spine into a table there "
                "and pass its name (or a SQL query) instead")
        if frame is not None:
            return jinja_literal(f"select * from {SPINE_RELATION}"), _column_types(frame.schema), frame
        import pyarrow.parquet as pq

        path = Path(spine).resolve()
        if not path.exists():
            raise TrainingSetError(f"spine file {path} does not exist")
        literal = "'" + str(path).replace("'", "''") + "'"
        return (jinja_literal(f"select * from read_parquet({literal})"), _column_types(pq.read_schema(path)), None)
    if not isinstance(spine, str) or not spine.strip():
        raise TrainingSetError(f"spine must be a model or table name, a SQL query, a Parquet path or a frame, "
                               f"got {type(spine).__name__}")
    text = spine.strip()
    if text.split(None, 1)[0].lower() in ("select", "with") or text.startswith("("):
        return jinja_literal(text), None, None
    manifest_path = project.target_dir / "manifest.json"
    if manifest_path.exists() and manifest().model_named(text) is not None:
        return f"ref({jinja_literal(text)})", None, None
    return jinja_literal(f"select * from {text}"), None, None


def _as_arrow(spine: Any) -> pa.Table | None:
    if type(spine).__module__.split(".")[0] not in ("pyarrow", "pandas"):
        return None
    import pyarrow as pa

    if isinstance(spine, pa.Table):
        return spine
    if isinstance(spine, pa.RecordBatch):
        return pa.Table.from_batches([spine])
    if type(spine).__module__.split(".")[0] == "pandas" and hasattr(spine, "columns"):
        return pa.Table.from_pandas(spine, preserve_index=False)
    return None


def _is_parquet(spine: Any) -> bool:
    return isinstance(spine, Path) or (isinstance(spine, str) and spine.strip().lower().endswith(".parquet"))


def _column_types(schema: pa.Schema) -> dict[str, str]:
    """The spine's columns and the SQL type names the macro needs (only the timestamp's matters to it)."""
    import pyarrow as pa

    def sql_type(t: pa.DataType) -> str:
        if pa.types.is_timestamp(t):
            return "timestamp with time zone" if t.tz else "timestamp"
        if pa.types.is_date(t):
            return "date"
        return str(t)

    return {field.name: sql_type(field.type) for field in schema}


# --- dbt --------------------------------------------------------------------------------------------------

def _view_names(manifest: Callable[[], Manifest], service: str | None, features: Sequence[str] | None) -> list[str]:
    """The feature views a request reads, from the manifest (unknown names are left for the macro to report)."""
    if features is not None:
        refs = [str(f) for f in features]
    else:
        read = manifest()
        exposure = read.exposures.get(service or "")
        if exposure is None:
            services = sorted(e.name for e in read.exposures.values() if e.type == "ml")
            raise TrainingSetError(f"no feature service {service!r} in {read.path}; services (dbt exposures "
                                   f"of type ml): {', '.join(services) or 'none'}")
        refs = [str(f) for f in exposure.meta.get("features") or []]
    names = dict.fromkeys(r.partition(".")[0] for r in refs if r.partition(".")[0])
    return list(names)

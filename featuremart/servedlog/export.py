"""`featuremart logs export`: the served-feature log's spool segments into Parquet files, once each.

`ServedLog` (featuremart.servedlog.writer) appends each read's record, as marshalled on the read path, to spool
segments under `<directory>/spool/`. This turns them into file rows (`FILE_COLUMNS`: one per request x entity x
view) and writes one Parquet file per UTC date under `<directory>/date=YYYY-MM-DD/`, for dbt
(`featuremart.served_log()`), the skew report (which exports first) and any other reader of the directory.

No record is lost or written twice, whatever step an export is interrupted at: one export at a time (a lock
file); a batch of segments is first named in a claim file, its Parquet files are named after the claim and
each written whole (temporary name, fsync, rename, fsync of the directory), and the segments are removed only once all of them are in
place (the claim renamed "done" first, removed last). An export that finds a claim finishes it first: not done,
it writes the same files again from its segments (replacing any written before the interruption); done, it
only removes the segments left.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import marshal
import os
import time
import uuid
from array import array
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featuremart.errors import ServedLogError
from featuremart.servedlog.writer import (FILE_COLUMNS, RECORD_LENGTH, SEGMENT_MAGIC, SEGMENT_SUFFIX, SPOOL_DIR,
                                          fsync_directory)

#: Rows built into one Arrow batch at a time.
CHUNK_ROWS = 65_536
#: Spool bytes exported per claim (a bound on the export's memory: the Arrow rows of one batch are held).
BATCH_BYTES = 64 << 20
_EPOCH = datetime(1970, 1, 1)
_DAY_US = 86_400_000_000
_NAMES = [name for name, _ in FILE_COLUMNS]
#: a batch's claim: named before its Parquet files are written, renamed to _DONE once they all are
_LOCK, _CLAIM, _DONE = ".export.lock", "claim-", "done-"


class Exported(NamedTuple):
    """What an export did."""

    rows: int  # log rows (one per request x entity x feature) written to Parquet
    records: int  # reads
    segments: int  # spool segments consumed
    files: int  # Parquet files written
    skipped: int = 0  # log rows of records that could not be turned into file rows (`problem` says why)
    problem: str | None = None


def export_logs(directory: str | Path) -> Exported:
    """Turn every spool segment under `directory` into Parquet (see the module docstring); nothing to do is
    fine (Exported of zeros). ServedLogError names a segment that cannot be read, or a directory that cannot
    be written."""
    directory = Path(directory).absolute()
    spool = directory / SPOOL_DIR
    if not spool.is_dir():
        return Exported(0, 0, 0, 0)
    total = Exported(0, 0, 0, 0)
    try:
        with _locked(spool / _LOCK):
            for claim in sorted(spool.glob(_DONE + "*.json")) + sorted(spool.glob(_CLAIM + "*.json")):
                total = _add(total, _finish(directory, claim))  # an export interrupted: finish it first
            while True:
                segments, size = [], 0
                for path in sorted(spool.glob("*" + SEGMENT_SUFFIX), key=_segment_order):
                    if segments and size + path.stat().st_size > BATCH_BYTES:
                        break
                    segments.append(path.name)
                    size += path.stat().st_size
                if not segments:
                    return total
                claim = spool / f"{_CLAIM}{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
                _write_file(claim, lambda tmp: tmp.write_bytes(orjson.dumps(segments)))
                total = _add(total, _finish(directory, claim))
    except OSError as exc:
        raise ServedLogError(f"served-feature log export under {directory}: {exc}; fix the directory's "
                             "permissions or free space and run `featuremart logs export` again (nothing is lost: "
                             "the spool segments are removed only after their Parquet files are written)") from None


def _add(a: Exported, b: Exported) -> Exported:
    return Exported(*(x + y for x, y in zip(a[:5], b[:5])), b.problem or a.problem)


def _segment_order(path: Path) -> tuple:
    """Segments by the time they were written (their names: nanoseconds-pid-sequence), others after them."""
    try:
        return 0, tuple(int(part) for part in path.name.removesuffix(SEGMENT_SUFFIX).split("-"))
    except ValueError:
        return 1, path.name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One export at a time on a log directory (a lock the kernel frees when an export dies)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _finish(directory: Path, claim: Path) -> Exported:
    """Export the segments a claim names that are there (not if it is done already: all its Parquet files were
    written, and some segments may be removed), mark it done, then remove them and it."""
    spool = claim.parent
    present = [spool / name for name in orjson.loads(claim.read_bytes()) if (spool / name).exists()]
    done = Exported(0, 0, 0, 0)
    if claim.name.startswith(_CLAIM):
        done = _write_parquet(directory, claim.stem.removeprefix(_CLAIM), present)
        claim = claim.rename(claim.with_name(_DONE + claim.name.removeprefix(_CLAIM)))
        fsync_directory(spool)  # "done" is on disk before any segment goes
    for path in present:  # every Parquet file of the claim is in place: the segments can go
        _remove(path)
    _remove(claim)
    return done


def _remove(path: Path) -> None:
    path.unlink()


def _write_parquet(directory: Path, claim_id: str, segments: list[Path]) -> Exported:
    """The segments' records as one Parquet file per UTC date, named after the claim (so a retry replaces it)."""
    rows = _Rows()
    for path in segments:
        rows.add_segment(path)
    files = 0
    for day, table in rows.tables():
        date = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
        folder = directory / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        # read back as FILE_COLUMNS: strings, not dictionaries
        _write_file(folder / f"part-{claim_id}.parquet", lambda tmp: pq.write_table(table, tmp, store_schema=False))
        files += 1
    return Exported(rows.rows, rows.records, len(segments), files, rows.skipped, rows.problem)


def _write_file(path: Path, write: Any) -> None:
    """A new file `path`, whole or not at all: `write(temporary path)`, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class _Rows:
    """File rows accumulated per UTC date from the records of spool segments."""

    def __init__(self) -> None:
        self.days: dict[int, _Day] = {}  # by UTC day (epoch days)
        #: every distinct (view, version, features) of the records seen: file rows point into it
        self.specs: dict[tuple, int] = {}
        self.spec_columns: tuple[list[str], list[str], list[str]] = ([], [], [])
        self.rows = self.records = self.skipped = 0
        self.problem: str | None = None

    def add_segment(self, path: Path) -> None:
        data = path.read_bytes()
        if not data.startswith(SEGMENT_MAGIC):
            raise ServedLogError(f"{path}: not a served-feature log spool segment of this Python (it starts with "
                                 f"{data[:24]!r}, expected {SEGMENT_MAGIC!r}): export it with the Python that "
                                 "served, or move it out of the spool directory to export the others")
        view, position, size = memoryview(data), len(SEGMENT_MAGIC), len(data)
        while position < size:
            start = position + RECORD_LENGTH.size
            length = RECORD_LENGTH.unpack_from(data, position)[0] if start <= size else size
            if start + length > size:
                raise ServedLogError(f"{path}: truncated at byte {position} (the disk lost part of it?): move it out "
                                     "of the spool directory to export the others")
            position = start + length
            self.add(marshal.loads(view[start:position]))

    def add(self, item: tuple) -> None:
        """One record: a file row per entity and view."""
        day = self.days.get(item[0] // _DAY_US)
        if day is None:
            day = self.days[item[0] // _DAY_US] = _Day()
        try:
            day.add(item, self.spec_rows(item[5]))
        except Exception as exc:  # a record this code cannot turn into rows: counted, the others exported
            day.undo()
            self.skipped += item[-1] if isinstance(item, tuple) and isinstance(item[-1], int) else 0
            self.problem = f"a record of {len(item)} fields: {exc!r}"
            return
        self.rows += item[-1]
        self.records += 1
        if len(day.status) >= CHUNK_ROWS:
            day.finish(self.spec_table())

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

    def tables(self) -> Iterator[tuple[int, pa.Table]]:
        """(UTC epoch day, its rows as one table), by day."""
        table = self.spec_table()
        for day in sorted(self.days):
            rows = self.days[day]
            rows.finish(table)
            yield day, pa.Table.from_batches(rows.batches)


class _Day:
    """The file rows of one UTC date, kept column-wise so that Arrow builds them with few Python objects: values
    per record and per entity once, with index arrays (filled by C-level `extend`) that `take` expands."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
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



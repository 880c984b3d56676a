"""A Spark query's result streamed in bounded memory, through Parquet files Spark writes.

Spark's Arrow collect (`DataFrame.toArrow`) hands a result's partitions over in the order they finish and their
order only at the end, so it gathers the whole result in the Python process. Written as Parquet instead, the
result stays on disk, and is read back one row group at a time: the process holds one batch, whatever the
result's size. An ORDER BY range-partitions its result and every task writes its partition to its own file
(`part-00000-…`, `part-00001-…`), so the files read in partition order give the query's order.
"""

from __future__ import annotations

import shutil
import uuid
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover - loaded with Spark
    import pyarrow as pa

#: Parquet's `parquet.block.size` for the files Spark writes: it counts encoded bytes, so 4 MB makes row groups of
#: about 14 MB decoded, the most the reader holds of a file at once beside one batch (Spark's default, 128 MB,
#: would be a whole 1M-entity result in one row group).
ROW_GROUP_BYTES = 4 * 1024 * 1024


def write_result(frame, directory: Path) -> pa.Schema:
    """Run the query of a Spark DataFrame, writing its result as Parquet files into `directory` (which must not
    exist); returns the Arrow schema `toArrow` would give it (timestamps UTC, decimals, lists), which the batches
    read back take. Columns are written under positional names: Parquet refuses two names that differ only in
    case, and leaves out a column of type void (a bare `null`)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    large = frame.sparkSession.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false") == "true"
    schema = to_arrow_schema(frame.schema, error_on_duplicated_field_names_in_struct=True, timezone="UTC",
                             prefers_large_types=large)
    positional = frame.toDF(*(_column(i) for i in range(len(frame.columns))))
    positional.write.option("parquet.block.size", ROW_GROUP_BYTES).parquet(str(directory))
    return schema


class ParquetResult:
    """The record batches of a result `write_result` wrote, file by file in partition order; the directory is
    removed when the batches are exhausted, on `close`, on a read error, or at the latest when this iterator is
    garbage collected (or the process exits)."""

    def __init__(self, directory: Path, schema: pa.Schema, batch_rows: int):
        self.directory = directory
        self._removed = weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        self._batches = _read(directory, schema, batch_rows)

    def __iter__(self) -> ParquetResult:
        return self

    def __next__(self) -> pa.RecordBatch:
        try:
            return next(self._batches)
        except BaseException:  # StopIteration, or a file that cannot be read
            self.close()
            raise

    def close(self) -> None:
        self._batches.close()
        self._removed()


def result_directory(target_dir: Path) -> Path:
    """A fresh directory for one result: target/spark/results/<uuid>."""
    return target_dir / "spark" / "results" / uuid.uuid4().hex


def _read(directory: Path, schema: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = sorted(directory.glob("part-*"), key=lambda p: (int(p.name.split("-")[1]), p.name))
    for part in parts:
        # Spark writes `timestamp` as INT96 (its default outputTimestampType): UTC instants, read as microseconds
        with pq.ParquetFile(part, coerce_int96_timestamp_unit="us") as file:
            # decoded on this thread: pyarrow's allocator (mimalloc) then reuses what the last batch freed; decoded
            # on its pool's threads, the process grew with every row group read (245 vs 218 MB at 1M rows)
            for batch in file.iter_batches(batch_size=batch_rows, use_threads=False):
                arrays = [batch.column(_column(i)).cast(field.type) if _column(i) in batch.schema.names
                          else pa.nulls(batch.num_rows, field.type)  # a void column: not written
                          for i, field in enumerate(schema)]
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _column(position: int) -> str:
    return f"_{position}"

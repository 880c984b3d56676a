"""Warehouses: where feature models live and where featuremart's SQL runs.

DuckDB (the embedded default) is read through its native Arrow API. Any other dbt adapter is reached through
dbt itself, with the user's own profiles.yml, and its DB-API cursor is read in batches into Arrow.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from featuremart.config import DbtProject
from featuremart.errors import WarehouseError
from featuremart.registry import Relation

BATCH_ROWS = 100_000


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
        batches = list(self.stream(sql))
        return pa.Table.from_batches(batches) if batches else pa.table({})

    def close(self) -> None:
        """Release the connection (DuckDB: the file lock, so that `dbt build` can run)."""

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

    @property
    def con(self):
        if self._con is None:
            import duckdb

            if not self.path.exists():
                raise WarehouseError(f"DuckDB file {self.path} does not exist: run `dbt build` first")
            try:
                self._con = duckdb.connect(str(self.path), read_only=True)
            except duckdb.IOException as exc:
                raise WarehouseError(_lock_message(self.path, str(exc))) from None
        return self._con

    def columns(self, relations: Iterable[Relation]) -> dict[Relation, dict[str, str]]:
        wanted = list(relations)
        rows = self.con.execute(
            "select table_catalog, table_schema, table_name, column_name, data_type "
            "from information_schema.columns order by table_catalog, table_schema, table_name, ordinal_position"
        ).fetchall()
        by_name: dict[tuple[str, str], dict[str, str]] = {}
        for _catalog, schema, name, column, dtype in rows:
            by_name.setdefault((schema.lower(), name.lower()), {})[column] = dtype
        found = {}
        for rel in wanted:
            cols = by_name.get((rel.schema.lower(), rel.identifier.lower()))
            if cols:
                found[rel] = cols
        return found

    def stream(self, sql: str, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        reader = self.con.sql(sql).to_arrow_reader(batch_rows)
        yield from reader

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


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
    from featuremart.adapter_warehouse import DbtAdapterWarehouse

    return DbtAdapterWarehouse(project)

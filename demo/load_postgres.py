"""Load the generated Parquet files into PostgreSQL, schema ``raw``: where the dbt source ``raw`` points.

Idempotent: each table is dropped (with the views on it, which the next ``dbt build`` recreates) and
created again, all in one transaction. Rows are streamed in Arrow batches through
``COPY ... FROM STDIN (FORMAT csv)``, so memory stays flat whatever the file size.

Example:
    >>> load(Path("data/raw"), "host=127.0.0.1 port=5432 dbname=test user=postgres")  # doctest: +SKIP
    {'customers': 2000, 'merchants': 100, 'transactions': 10320}

CLI: ``python -m demo.load_postgres --data data/raw [--dsn "host=... dbname=..."]``; the DSN defaults to the
``PG*`` environment variables with the same defaults as the ``postgres`` target of ``profiles.yml``.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import psycopg2
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg2 import sql

TABLES = ("customers", "merchants", "transactions")
SCHEMA = "raw"
BATCH_ROWS = 200_000


def _postgres_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "text"
    if pa.types.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_decimal(arrow_type):
        return f"numeric({arrow_type.precision}, {arrow_type.scale})"
    if pa.types.is_integer(arrow_type):
        return "bigint"
    if pa.types.is_floating(arrow_type):
        return "double precision"
    if pa.types.is_date(arrow_type):
        return "date"
    raise TypeError(f"load_postgres: no PostgreSQL type for Arrow type {arrow_type}")


def default_dsn() -> str:
    """A libpq DSN from the PG* environment variables, defaulting like profiles.yml's postgres target."""
    parts = {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "dbname": os.environ.get("PGDATABASE", "test"),
        "user": os.environ.get("PGUSER", "postgres"),
    }
    if os.environ.get("PGPASSWORD"):
        parts["password"] = os.environ["PGPASSWORD"]
    return " ".join(f"{key}={value}" for key, value in parts.items())


def load(data_dir: Path, dsn: str, schema: str = SCHEMA) -> dict[str, int]:
    """(Re)create ``schema.customers``, ``schema.merchants`` and ``schema.transactions`` from ``data_dir``.

    Args:
        data_dir: Directory holding ``customers.parquet``, ``merchants.parquet`` and ``transactions.parquet``.
        dsn: A libpq connection string or URL.
        schema: Target schema, created if missing.

    Returns:
        The number of rows loaded per table.
    """
    data_dir = Path(data_dir)
    missing = [name for name in TABLES if not (data_dir / f"{name}.parquet").exists()]
    if missing:
        raise FileNotFoundError(
            f"load_postgres: no {', '.join(m + '.parquet' for m in missing)} in {data_dir}; "
            f"run `python -m demo.generate --out {data_dir}` first"
        )
    counts: dict[str, int] = {}
    # Strings are always quoted, nulls never: COPY then reads "" as an empty string and nothing as NULL.
    csv_options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))
        for name in TABLES:
            parquet = pq.ParquetFile(data_dir / f"{name}.parquet")
            table = sql.Identifier(schema, name)
            columns = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(field.name), sql.SQL(_postgres_type(field.type)))
                for field in parquet.schema_arrow
            )
            # cascade: views built on the table (dbt staging models) go too; the next dbt build recreates them.
            cursor.execute(sql.SQL("drop table if exists {} cascade").format(table))
            cursor.execute(sql.SQL("create table {} ({})").format(table, columns))
            copy = sql.SQL("copy {} from stdin with (format csv)").format(table).as_string(cursor)
            counts[name] = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                buffer = io.BytesIO()
                pacsv.write_csv(batch, buffer, csv_options)
                buffer.seek(0)
                cursor.copy_expert(copy, buffer)
                counts[name] += batch.num_rows
            cursor.execute(sql.SQL("analyze {}").format(table))
    connection.close()
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo.load_postgres", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/raw"), help="Parquet directory (default data/raw)")
    parser.add_argument("--dsn", default=None, help="libpq DSN or URL (default: from PG* variables)")
    parser.add_argument("--schema", default=SCHEMA, help=f"target schema (default {SCHEMA})")
    args = parser.parse_args(argv)
    counts = load(args.data, args.dsn or default_dsn(), schema=args.schema)
    print(", ".join(f"{name}: {rows:,} rows" for name, rows in counts.items()) + f" -> schema {args.schema}")


if __name__ == "__main__":
    main()

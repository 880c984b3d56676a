"""window_features, twice: a brute-force Python oracle of its time semantics, and a throwaway dbt project that
renders the macro for real on DuckDB or PostgreSQL.

The oracle is the contract of docs/window-features.md written as plainly as possible: for each entity and each
instant t at which one of its events becomes known, the events known in (t - w, t], filtered and aggregated
one by one. No tiles, no frames, no running sums.
"""

from __future__ import annotations

import math
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Sequence

from tests.conftest import ROOT

GRAIN_SECONDS = {"1m": 60, "1h": 3600, "1d": 86400, "event": 0}
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
EPOCH = datetime(1970, 1, 1)


def duration_seconds(label: str) -> int:
    return int(label[:-1]) * UNIT_SECONDS[label[-1]]


def known_time(ts: datetime, grain: str) -> datetime:
    """When an event becomes known: the end of its UTC grain period, or its own time with grain 'event'."""
    g = GRAIN_SECONDS[grain]
    if not g:
        return ts
    seconds = int((ts - EPOCH).total_seconds() // g) * g + g
    return EPOCH + timedelta(seconds=seconds)


def _aggregate(function: str, rows: list[dict], column: str) -> Any:
    if function == "count":
        return len(rows) if column == "*" else sum(1 for r in rows if r[column] is not None)
    values = [r[column] for r in rows if r[column] is not None]
    if function == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if function == "sum":
        return sum(values)
    if function == "avg":
        return sum(values) / len(values)
    if function == "min":
        return min(values)
    if function == "max":
        return max(values)
    if function == "stddev":
        if len(values) < 2:
            return None
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    dated = [(r["ts"], r[column]) for r in rows if r[column] is not None]
    if function == "first":
        return min(dated)[1]
    if function == "last":
        return max(dated)[1]
    raise ValueError(function)


def window_oracle(events: Sequence[dict], keys: Sequence[str], grain: str, aggregations: Sequence[dict],
                  windows: Sequence[str]) -> dict[tuple, dict[str, Any]]:
    """{(keys..., t): {output column: value}} by brute force. `aggregations` hold name, function, column and
    an optional `where` given as a Python predicate over an event (null-safe: None counts as false)."""
    usable = [e for e in events if e["ts"] is not None and all(e[k] is not None for k in keys)]
    rows: dict[tuple, dict[str, Any]] = {}
    for entity in {tuple(e[k] for k in keys) for e in usable}:
        mine = [e for e in usable if tuple(e[k] for k in keys) == entity]
        for t in {known_time(e["ts"], grain) for e in mine}:
            out = {}
            for agg in aggregations:
                for label in agg.get("windows", windows):
                    w = timedelta(seconds=duration_seconds(label))
                    inside = [e for e in mine if t - w < known_time(e["ts"], grain) <= t
                              and (agg.get("where") is None or agg["where"](e))]
                    out[f"{agg['name']}_{label}"] = _aggregate(agg["function"], inside, agg["column"])
            rows[(*entity, t)] = out
    return rows


def make_project(dest: Path, target: str = "duckdb", duckdb_path: Path | None = None,
                 pg_schema: str = "public") -> Path:
    """A throwaway dbt project named `featuremart` holding the package's macros, so `featuremart.window_features`
    resolves without `dbt deps`. Models are written into dest/models by the test. Its `spark` output (schema
    `pg_schema`) joins the SparkSession of the process: dbt must run in-process (tests/test_spark.py)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "macros", dest / "macros", dirs_exist_ok=True)
    (dest / "models").mkdir(exist_ok=True)
    (dest / "dbt_project.yml").write_text(
        "name: featuremart\nversion: '0.1.0'\nconfig-version: 2\nprofile: wf_oracle\n"
        "model-paths: [models]\nmacro-paths: [macros]\ntarget-path: target\n")
    duckdb_path = duckdb_path or dest / "wf.duckdb"
    (dest / "profiles.yml").write_text(
        "wf_oracle:\n  target: " + target + "\n  outputs:\n"
        f"    duckdb:\n      type: duckdb\n      path: '{duckdb_path}'\n      threads: 2\n"
        "    postgres:\n      type: postgres\n      host: \"{{ env_var('PGHOST', '127.0.0.1') }}\"\n"
        "      port: \"{{ env_var('PGPORT', '5432') | as_number }}\"\n"
        "      user: \"{{ env_var('PGUSER', 'postgres') }}\"\n"
        "      password: \"{{ env_var('PGPASSWORD', '') }}\"\n"
        "      dbname: \"{{ env_var('PGDATABASE', 'test') }}\"\n"
        f"      schema: {pg_schema}\n      threads: 2\n"
        f"    spark:\n      type: spark\n      method: session\n      host: NA\n      schema: {pg_schema}\n"
        "      threads: 1\n")
    return dest


def sources_yml(schema: str, tables: Sequence[str]) -> str:
    listed = "".join(f"      - name: {t}\n" for t in tables)
    return f"version: 2\nsources:\n  - name: raw\n    schema: {schema}\n    tables:\n{listed}"

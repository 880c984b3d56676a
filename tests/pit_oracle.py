"""The point-in-time join, twice: a brute-force Python oracle of its semantics, and the SQL of the dbt macro.

The oracle is the contract written as plainly as possible (no sorting tricks, no windows), so that the
macro's SQL can be checked against it row for row. `compile_point_in_time_sql` is how Python reuses the
macro: dbt renders `featuremart.point_in_time_join` and Python only executes what it rendered.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class View:
    """A feature view as the oracle sees it: its rows are dicts holding keys, timestamp and features."""

    name: str
    keys: tuple[str, ...]
    timestamp: str
    ttl_seconds: int | None
    features: tuple[str, ...]
    rows: Sequence[dict[str, Any]] = field(default=(), compare=False)


def output_names(views: Sequence[View]) -> list[list[str]]:
    """Each view's output column names: `<view>__<feature>` when the name is also a feature of another view or
    a join key of a view in the join (case-insensitively), else the feature's own name. The spine's other
    columns play no part (a spine column named like an output is an error)."""
    counts = Counter(f.lower() for v in views for f in v.features)
    keys = {k.lower() for v in views for k in v.keys}
    return [[f"{v.name}__{f}" if counts[f.lower()] > 1 or f.lower() in keys else f for f in v.features]
            for v in views]


def utc_naive(value: datetime | None) -> datetime | None:
    """A timestamp as UTC wall-clock time: aware values converted, naive ones taken as UTC already."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _tie_key(row: dict[str, Any], features: Sequence[str]) -> tuple:
    # Among rows sharing keys and timestamp, the greatest by the features in order, nulls smallest.
    return tuple((row[f] is not None, row[f]) for f in features)


def point_in_time_oracle(spine: Sequence[dict[str, Any]], spine_columns: Sequence[str], spine_timestamp: str,
                         views: Sequence[View]) -> list[tuple]:
    """The training set by brute force: one tuple per spine row, in spine order: the spine's own values, then
    each view's features (values of its latest row with spine_ts - ttl <= view_ts <= spine_ts, else None)."""
    result = []
    for spine_row in spine:
        ts = utc_naive(spine_row[spine_timestamp])
        out = [spine_row[c] for c in spine_columns]
        for view in views:
            best = None
            if ts is not None:
                lower = None if view.ttl_seconds is None else ts - timedelta(seconds=view.ttl_seconds)
                for row in view.rows:
                    if any(row[k] is None or spine_row[k] is None or row[k] != spine_row[k] for k in view.keys):
                        continue
                    vts = utc_naive(row[view.timestamp])
                    if vts is None or vts > ts or (lower is not None and vts < lower):
                        continue
                    if best is None or (vts, _tie_key(row, view.features)) > (
                            utc_naive(best[view.timestamp]), _tie_key(best, view.features)):
                        best = row
            out.extend(None if best is None else best[f] for f in view.features)
        result.append(tuple(out))
    return result


# --- the macro's SQL, compiled by dbt ---------------------------------------------------------------------

def _jinja_literal(value: Any) -> str:
    """A Python value as a Jinja literal (JSON is Jinja for strings, numbers, lists and mappings)."""
    if value is None:
        return "none"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_jinja_literal(k)}: {_jinja_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jinja_literal(v) for v in value) + "]"
    return json.dumps(value)


def point_in_time_call(spine_sql: str, spine_timestamp: str, views: Sequence[dict[str, Any]],
                       spine_columns: dict[str, str | None] | Sequence[str] | None = None,
                       ordered: bool | str = True) -> str:
    """The Jinja call of the macro for these arguments (view relations given as table-name strings)."""
    args = [_jinja_literal(spine_sql), _jinja_literal(spine_timestamp), _jinja_literal(list(views))]
    if spine_columns is not None:
        args.append("spine_columns=" + _jinja_literal(dict(spine_columns) if isinstance(spine_columns, dict)
                                                      else list(spine_columns)))
    if ordered is not True:
        args.append("ordered=" + _jinja_literal(ordered))
    return "{{ featuremart.point_in_time_join(" + ", ".join(args) + ") }}"


LAST_COMPILE_SECONDS: list[float] = []


def compile_point_in_time_sql(project_dir: str | Path, profiles_dir: str | Path, spine_sql: str,
                              spine_timestamp: str, views: Sequence[dict[str, Any]], target: str | None = None,
                              spine_columns: dict[str, str | None] | Sequence[str] | None = None,
                              ordered: bool | str = True) -> str:
    """The SQL of `featuremart.point_in_time_join` for these arguments, rendered by dbt for `target`.

    Runs `dbt compile --inline` in-process (dbtRunner): dbt parses the project (partial parsing after the
    first call), reads the spine's columns from the warehouse unless `spine_columns` is given, and renders
    the dialect's version of the macro. `views` are the macro's mappings, with `relation` a table name.

    Example:
        >>> sql = compile_point_in_time_sql("proj", "proj", "select * from labels", "ts",
        ...     [{"relation": "main.spend", "name": "spend", "keys": ["customer_id"], "timestamp": "event_ts",
        ...       "ttl_seconds": 86400, "features": ["spend_7d"]}])  # doctest: +SKIP
    """
    from dbt.cli.main import dbtRunner

    args = ["compile", "--inline", point_in_time_call(spine_sql, spine_timestamp, views, spine_columns, ordered),
            "--project-dir", str(project_dir), "--profiles-dir", str(profiles_dir), "--log-level", "none",
            "--no-send-anonymous-usage-stats"]
    if target:
        args += ["--target", target]
    if target == "spark":  # spine and timestamp types are given: no need to list every relation of the session
        args.append("--no-populate-cache")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    errors: list[str] = []

    def keep_errors(event: Any) -> None:
        if event.info.level == "error":
            errors.append(event.info.msg)

    started = time.perf_counter()
    result = dbtRunner(callbacks=[keep_errors]).invoke(args)
    LAST_COMPILE_SECONDS.append(time.perf_counter() - started)
    if not result.success:
        detail = "\n".join(errors) or str(result.exception)
        raise RuntimeError(f"dbt compile of point_in_time_join failed: {detail}")
    return result.result.results[0].node.compiled_code

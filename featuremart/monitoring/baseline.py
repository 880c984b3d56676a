"""`featuremart stats --baseline`: drift of the last publish against a baseline the user names.

A baseline is one of (docs/monitoring.md):
- a Parquet file (a training set): read by an in-memory DuckDB;
- a dbt model of the project, by name: read in the warehouse;
- a date range `START..END` of the view's own history (ISO dates or times, UTC, END excluded): the view's
  warehouse rows with an event time in it.
A feature `f` of view `v` is read from the baseline's column `f`, else `v__f` (a training set's name for it).
The baseline is profiled by the same query as a sync (featuremart.monitoring.stats), counted on the bins of the
view's last published profile, so the figures compare like with like. Nothing is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import sqlglot
from sqlglot import exp

from featuremart import sql, types
from featuremart.config import DriftThresholds
from featuremart.errors import StatsError
from featuremart.monitoring.drift import Drift, compare
from featuremart.monitoring.stats import profile_query, read_profile
from featuremart.registry import Feature, FeatureView

_RANGE = re.compile(r"^\s*(\S+)\s*\.\.\s*(\S+)\s*$")


@dataclass(frozen=True)
class Baseline:
    """What a `--baseline` names: kind (parquet, model, history) and its text as given."""

    kind: str
    text: str
    path: Path | None = None
    start: datetime | None = None
    end: datetime | None = None

    @classmethod
    def parse(cls, text: str, model_names: Sequence[str]) -> Baseline:
        spec = text.strip()
        match = _RANGE.match(spec)
        if match:
            start, end = (_utc(part, spec) for part in match.groups())
            if start >= end:
                raise StatsError(f"--baseline {spec}: the range's start is not before its end; write START..END")
            return cls("history", spec, start=start, end=end)
        if spec.lower().endswith(".parquet"):
            path = Path(spec).resolve()
            if not path.is_file():
                raise StatsError(f"--baseline {spec}: no such Parquet file ({path})")
            return cls("parquet", spec, path=path)
        if spec in model_names:
            return cls("model", spec)
        raise StatsError(f"--baseline {spec!r}: not a .parquet file, a dbt model of this project, or a date "
                            "range START..END (e.g. 2026-01-01..2026-02-01)")


def baseline_drift(baseline: Baseline, view: FeatureView, features: Sequence[Feature],
                   latest: Mapping[str, Any], thresholds: DriftThresholds, *, warehouse: Any = None,
                   relation: Any = None) -> tuple[int, dict[str, Drift]]:
    """(the baseline's rows, per feature: its drift from the baseline) for the last published profile
    `latest` (a history record's "features"). `warehouse`: the project's, for a model (`relation`) or a range."""
    if baseline.kind == "parquet":
        import duckdb
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(baseline.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise StatsError(f"--baseline {baseline.text}: not a readable Parquet file ({exc})") from None
        columns = {f.name: _arrow_type(f.type) for f in schema}
        source = sqlglot.select(exp.Star()).from_(exp.func("read_parquet", exp.Literal.string(str(baseline.path))))
        mapping = _columns(baseline, view, features, columns)
        con = duckdb.connect()
        try:
            con.execute("set TimeZone = 'UTC'")
            compared = [f for f in features if f.name in mapping]
            query = profile_query(source, compared, "duckdb", latest, mapping)
            row = con.sql(sql.render(query, "duckdb")).to_arrow_table().to_pylist()[0]
        finally:
            con.close()
    else:
        if baseline.kind == "model":
            found = warehouse.columns([relation]).get(relation)
            if found is None:
                raise StatsError(f"--baseline {baseline.text}: model {baseline.text} is not built in the "
                                    f"warehouse ({relation}); run `dbt build --select {baseline.text}`")
            columns = {name: types.logical_type(t) for name, t in found.items()}
            source = sqlglot.select(exp.Star()).from_(sql.table(relation))
            mapping = _columns(baseline, view, features, columns)
        else:
            ts_us = sql.epoch_us(sql.col(view.timestamp), warehouse.dialect)
            source = sqlglot.select(exp.Star()).from_(sql.table(view.relation)).where(exp.and_(
                exp.GTE(this=ts_us, expression=exp.Literal.number(sql.to_us(baseline.start))),
                exp.LT(this=ts_us.copy(), expression=exp.Literal.number(sql.to_us(baseline.end)))))
            mapping = {f.name: f.name for f in features}
        compared = [f for f in features if f.name in mapping]
        query = profile_query(source, compared, warehouse.dialect, latest, mapping)
        row = warehouse.query(sql.render(query, warehouse.dialect)).to_pylist()[0]
    profile = read_profile(row, compared, latest)
    if not profile["rows"]:
        raise StatsError(f"--baseline {baseline.text}: it has no rows, nothing to compare with")
    return profile["rows"], {f.name: compare(latest[f.name], profile["features"][f.name], thresholds)
                             if f.name in latest and f.name in profile["features"] else Drift(None, None, "n/a")
                             for f in features}


def _columns(baseline: Baseline, view: FeatureView, features: Sequence[Feature],
             columns: Mapping[str, str | None]) -> dict[str, str]:
    """The baseline column of each feature (`f`, else `<view>__f`), checked to hold the same kind of value."""
    mapping = {}
    for f in features:
        name = next((c for c in (f.name, f"{view.name}__{f.name}") if c in columns), None)
        if name is None:
            continue  # compared as n/a: a training set often holds only some of a view's features
        found = columns[name]
        if found != f.dtype and {found, f.dtype} != {types.INT, types.FLOAT}:
            raise StatsError(f"--baseline {baseline.text}: column {name} holds {found or 'an unsupported type'}, "
                                f"but feature {f.ref} is {f.dtype}; compare it with a baseline of the same type")
        mapping[f.name] = name
    if not mapping:
        wanted = ", ".join(f.name for f in features)
        raise StatsError(f"--baseline {baseline.text}: none of its columns is a feature of {view.name} ({wanted}, "
                         f"or {view.name}__<feature>); its columns: {', '.join(columns) or 'none'}")
    return mapping


def _arrow_type(t: pa.DataType) -> str | None:
    """The logical type of a Parquet column (None: none featuremart serves)."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _arrow_type(t.value_type)
        return {types.FLOAT: types.ARRAY_FLOAT, types.INT: types.ARRAY_INT, types.STRING: types.ARRAY_STRING}.get(
            inner or "")
    checks = [(pa.types.is_boolean, types.BOOL), (pa.types.is_integer, types.INT),
              (pa.types.is_floating, types.FLOAT), (pa.types.is_decimal, types.FLOAT),
              (pa.types.is_string, types.STRING), (pa.types.is_large_string, types.STRING),
              (pa.types.is_timestamp, types.TIMESTAMP), (pa.types.is_date, types.DATE)]
    return next((name for check, name in checks if check(t)), None)


def _utc(text: str, spec: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise StatsError(f"--baseline {spec}: {text!r} is not an ISO date or time (e.g. 2026-01-31)") from None
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment

"""Feature statistics, computed by the warehouse over the values a sync publishes (docs/monitoring.md).

One query per view (`profile_query`): a sqlglot expression rendered for DuckDB or Postgres, over the same
latest rows the sync writes (`sql.latest_rows`), returning one row that Python only renames. Per feature kind:

- number (int, float, timestamp as epoch seconds): count, nulls (NaN and ±Infinity count as null, as they are
  served), min, max, mean, population stddev, quantiles p1..p99 (DuckDB: `approx_quantile`, a t-digest;
  Postgres: exact `percentile_cont`), and a histogram of `BINS` equal-width bins over [min, max];
- category (string, bool, date): count, nulls, distinct count, the `TOP_VALUES` most frequent values;
- array: count, nulls, item count (length) and L2 norm: min, mean, max.

Drift needs both sides counted on the same bins: `profile_query(..., reference=...)` also counts the values on
a reference profile's bins (its histogram edges with open-ended outer bins, or its top values plus "other"),
in the same query. A sync passes the previous publish's profile; `featuremart stats --baseline` passes the
latest publish's profile over the baseline's rows (featuremart.monitoring.drift).
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import sqlglot
from sqlglot import exp

from featuremart import sql, types
from featuremart.errors import ConfigError
from featuremart.registry import Feature, FeatureView

#: Equal-width bins of a number's histogram, over [min, max] of the values it profiles.
BINS = 10
#: Most frequent values kept for a string, bool or date feature.
TOP_VALUES = 10
#: Quantiles of numbers, as stored: name -> fraction.
QUANTILES = {"p1": 0.01, "p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}
#: Views of more entities are profiled on a sample of about this many (a fixed hash of the join keys picks the
#: same entities every run): exact below it; above, quantiles and shares are within about 1% (bench/README.md).
SAMPLE_ENTITIES = 50_000
#: `FEATUREMART_STATS=off` turns statistics off in `featuremart sync` (bench/stats.py measures their cost).
STATS_ENV = "FEATUREMART_STATS"

NUMBER, CATEGORY, ARRAY = "number", "category", "array"
_KINDS = {types.INT: NUMBER, types.FLOAT: NUMBER, types.TIMESTAMP: NUMBER, types.STRING: CATEGORY,
          types.BOOL: CATEGORY, types.DATE: CATEGORY, types.ARRAY_FLOAT: ARRAY, types.ARRAY_INT: ARRAY,
          types.ARRAY_STRING: ARRAY}


def kind(dtype: str) -> str:
    """The statistics a logical type gets: number, category or array."""
    return _KINDS[dtype]


def stats_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a sync computes statistics: on unless FEATUREMART_STATS is off/0/false/no."""
    value = (os.environ if environ is None else environ).get(STATS_ENV, "").strip().lower()
    if value in ("", "on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise ConfigError(f"{STATS_ENV}={value!r}: write on or off (whether `featuremart sync` computes statistics)")


def view_profile_query(view: FeatureView, now: datetime, dialect: str,
                       reference: Mapping[str, Any] | None = None, sample: int | None = None) -> exp.Select:
    """The profile of what a sync at `now` publishes for `view`: its latest rows (the online payload's rows), of
    every entity or of a sample of them (`sample`: see sql.latest_rows)."""
    return profile_query(sql.latest_rows(view, now, dialect, sample=sample), view.features, dialect, reference)


def profile_query(source: exp.Select, features: Iterable[Feature], dialect: str,
                  reference: Mapping[str, Any] | None = None, columns: Mapping[str, str] | None = None
                  ) -> exp.Select:
    """One query profiling `features` over the rows of `source` (one row out; `read_profile` names it).

    `columns`: the source column of each feature (default: its name). `reference`: a profile (as
    `read_profile` returns) whose bins the values are also counted on, for drift.
    """
    features = list(features)
    columns = columns or {}
    reference = reference or {}
    prepared: list[exp.Expression] = []
    for i, f in enumerate(features):
        value = sql.col(columns.get(f.name, f.name), "s")
        if kind(f.dtype) == NUMBER:
            prepared.append(exp.alias_(_number(value, f.dtype, dialect), f"v{i}", quoted=True))
        elif kind(f.dtype) == CATEGORY:
            prepared.append(exp.alias_(exp.cast(value, "text"), f"v{i}", quoted=True))
        else:
            prepared.append(exp.alias_(_length(value, dialect), f"v{i}", quoted=True))
            prepared.append(exp.alias_(_norm(value.copy(), f.dtype, dialect), f"n{i}", quoted=True))
            prepared.append(exp.alias_(exp.Is(this=value.copy(), expression=exp.null()), f"z{i}", quoted=True))
    values = sqlglot.select(*prepared) if prepared else sqlglot.select(exp.Literal.number(1).as_("__fm_one"))
    values = values.from_(source.subquery("s", copy=False), copy=False)
    numbers = [i for i, f in enumerate(features) if kind(f.dtype) == NUMBER]
    # Each number's bin code: its own bin * 16 + its bin on the reference's edges (0 without a reference).
    codes: list[exp.Expression] = []
    for i in numbers:
        own = _bin(_v(i), sql.col(f"lo{i}", "b"), sql.col(f"hi{i}", "b"))
        ref = (reference.get(features[i].name) or {})
        on_ref = (_ref_bin(_v(i), ref["histogram"]) if ref.get("kind") == NUMBER and ref.get("histogram")
                  else exp.Literal.number(0))
        codes.append(exp.Add(this=exp.Mul(this=exp.paren(own, copy=False), expression=exp.Literal.number(_CODE)),
                             expression=exp.paren(on_ref, copy=False)))
    out: list[exp.Expression] = [exp.alias_(exp.Count(this=exp.Star()), "rows", quoted=True)]
    top_ctes: list[tuple[str, exp.Select]] = []
    for i, f in enumerate(features):
        ref = reference.get(f.name) or {}
        k = kind(f.dtype)
        out.append(_as(exp.Count(this=_v(i) if k != ARRAY else _case(exp.Not(this=sql.col(f"z{i}")))), f"count{i}"))
        if k == NUMBER:
            out += [_as(exp.Min(this=_v(i)), f"min{i}"), _as(exp.Max(this=_v(i)), f"max{i}"),
                    _as(exp.Avg(this=_v(i)), f"mean{i}"), _as(exp.StddevPop(this=_v(i)), f"stddev{i}"),
                    _as(_quantiles(_v(i), dialect), f"q{i}")]
        elif k == CATEGORY:
            out.append(_as(exp.Count(this=exp.Distinct(expressions=[_v(i)])), f"distinct{i}"))
            top = (sqlglot.select(exp.alias_(_v(i), "v", quoted=True),
                                  exp.alias_(exp.Count(this=exp.Star()), "n", quoted=True))
                   .from_(exp.to_identifier("__fm_values", quoted=True)).where(exp.Not(this=exp.Is(
                       this=_v(i), expression=exp.null())))
                   .group_by(_v(i))
                   .order_by(exp.Ordered(this=sql.col("n"), desc=True), exp.Ordered(this=sql.col("v")))
                   .limit(TOP_VALUES))
            order = [exp.Ordered(this=sql.col("n"), desc=True), exp.Ordered(this=sql.col("v"))]
            agg = sqlglot.select(
                exp.alias_(exp.ArrayAgg(this=exp.Order(this=sql.col("v"), expressions=order)), "vals", quoted=True),
                exp.alias_(exp.ArrayAgg(this=exp.Order(this=sql.col("n"), expressions=[o.copy() for o in order])),
                           "cnts", quoted=True)).from_(top.subquery("t"))
            top_ctes.append((f"__fm_top{i}", agg))
            for field in ("vals", "cnts"):
                out.append(_as(exp.Min(this=sql.col(field, f"__fm_top{i}")), f"top{field}{i}"))
            for j, (value, _n) in enumerate(ref.get("top") or []) if ref.get("kind") == CATEGORY else ():
                out.append(_as(_count_where(exp.EQ(this=_v(i), expression=exp.Literal.string(str(value)))),
                               f"r{i}_{j}"))
        else:
            for stat, agg_type in (("min", exp.Min), ("max", exp.Max), ("mean", exp.Avg)):
                out.append(_as(agg_type(this=_v(i)), f"len{stat}{i}"))
                out.append(_as(agg_type(this=sql.col(f"n{i}")), f"norm{stat}{i}"))
    if numbers:  # every number's bin counts: one GROUP BY over the codes unpivoted, folded into one row
        top_ctes.append(("__fm_hist", _bin_counts(numbers, codes)))
        for field in ("i", "code", "n"):
            out.append(_as(exp.Min(this=sql.col(field, "__fm_hist")), f"hist_{field}"))
    query = sqlglot.select(*out, copy=False).from_(exp.to_identifier("__fm_values", quoted=True), copy=False)
    for name, _cte in top_ctes:
        query = query.join(exp.to_identifier(name, quoted=True), join_type="cross", copy=False)
    # Materialized: the latest rows are computed once, whatever reads them (bounds, bins, top values).
    # (Spark has no MATERIALIZED: it plans the common table expression once per reference.)
    query = query.with_(exp.to_identifier("__fm_values", quoted=True), as_=values,
                        materialized=None if dialect == "spark" else True, copy=False)
    if numbers:
        bounds = sqlglot.select(*(e for i in numbers for e in (
            exp.alias_(exp.Min(this=_v(i)), f"lo{i}", quoted=True),
            exp.alias_(exp.Max(this=_v(i)), f"hi{i}", quoted=True)))).from_(
                exp.to_identifier("__fm_values", quoted=True))
        query = query.with_(exp.to_identifier("b", quoted=True), as_=bounds, copy=False)
    for name, cte in top_ctes:
        query = query.with_(exp.to_identifier(name, quoted=True), as_=cte, copy=False)
    return query


def read_profile(row: Mapping[str, Any], features: Iterable[Feature],
                 reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The profile of one `profile_query` result row: {"rows": n, "features": {name: statistics}}; a feature
    counted on a reference profile's bins also gets `reference_counts` (see featuremart.monitoring.drift)."""
    reference = reference or {}
    rows = int(row["rows"] or 0)
    bins = _bin_tables(row)
    out: dict[str, Any] = {}
    for i, f in enumerate(features):
        k = kind(f.dtype)
        count = int(row[f"count{i}"] or 0)
        s: dict[str, Any] = {"kind": k, "dtype": f.dtype, "count": count, "nulls": rows - count,
                             "null_fraction": (rows - count) / rows if rows else None}
        ref = reference.get(f.name) or {}
        if k == NUMBER:
            lo, hi = _float(row[f"min{i}"]), _float(row[f"max{i}"])
            s.update(min=lo, max=hi, mean=_float(row[f"mean{i}"]), stddev=_float(row[f"stddev{i}"]))
            q = list(row[f"q{i}"] or []) if count else []
            s["quantiles"] = {name: _float(q[j]) if j < len(q) else None for j, name in enumerate(QUANTILES)}
            own, on_ref = bins.get(i, ([0] * BINS, [0] * (BINS + 2)))
            s["histogram"] = {"lo": lo, "hi": hi, "counts": own} if count else None
            if ref.get("kind") == NUMBER and ref.get("histogram"):
                s["reference_counts"] = on_ref
        elif k == CATEGORY:
            s["distinct"] = int(row[f"distinct{i}"] or 0)
            vals, cnts = row[f"topvals{i}"] or [], row[f"topcnts{i}"] or []
            # Most frequent first (Spark's collect_list keeps no order of its input).
            s["top"] = sorted(([v, int(n)] for v, n in zip(vals, cnts)), key=lambda t: (-t[1], str(t[0])))
            if ref.get("kind") == CATEGORY:
                s["reference_counts"] = [int(row[f"r{i}_{j}"] or 0) for j in range(len(ref.get("top") or []))]
        else:
            s["length"] = {stat: _float(row[f"len{stat}{i}"]) for stat in ("min", "mean", "max")}
            s["norm"] = {stat: _float(row[f"norm{stat}{i}"]) for stat in ("min", "mean", "max")}
        out[f.name] = s
    return {"rows": rows, "features": out}


# ---- expressions ---------------------------------------------------------------------------------------------

def _v(i: int) -> exp.Column:
    return sql.col(f"v{i}")


def _as(expression: exp.Expression, name: str) -> exp.Expression:
    return exp.alias_(expression, name, quoted=True)


def _case(condition: exp.Expression) -> exp.Expression:
    """1 where `condition` holds, else null: `count()` of it counts the rows where it holds."""
    return exp.case().when(condition, exp.Literal.number(1)).else_(exp.null())


#: A number's bin code is own bin * _CODE + bin on the reference's edges (both < _CODE).
_CODE = 16


def _bin_counts(numbers: list[int], codes: list[exp.Expression]) -> exp.Select:
    """One row of three arrays (i, code, n): how many rows of number feature i have bin code `code`.

    The codes of every feature are unpivoted (a cross join with the feature indices) and counted by one GROUP
    BY: one hash aggregate whatever the feature count (a `count(*) filter (...)` per bin was 40x slower on
    DuckDB, and an aggregate per feature took DuckDB memory per feature; bench/stats.py)."""
    index = exp.to_identifier("__fm_i", quoted=True)
    pick = exp.case()
    for i, code in zip(numbers, codes):
        pick = pick.when(exp.EQ(this=exp.column(index), expression=exp.Literal.number(i)), code, copy=False)
    features = exp.Values(expressions=[exp.Tuple(expressions=[exp.Literal.number(i)]) for i in numbers],
                          alias=exp.TableAlias(this=exp.to_identifier("__fm_f", quoted=True), columns=[index]))
    unpivoted = (sqlglot.select(exp.alias_(exp.column(index), "i", quoted=True), _as(pick, "code"), copy=False)
                 .from_(exp.to_identifier("__fm_values", quoted=True), copy=False)
                 .join(exp.to_identifier("b", quoted=True), join_type="cross", copy=False)
                 .join(features, join_type="cross", copy=False))
    counted = (sqlglot.select(sql.col("i"), sql.col("code"), _as(exp.Count(this=exp.Star()), "n"))
               .from_(unpivoted.subquery("u", copy=False))
               .where(exp.Not(this=exp.Is(this=sql.col("code"), expression=exp.null())))
               .group_by(sql.col("i"), sql.col("code")))
    return sqlglot.select(*(_as(exp.ArrayAgg(this=sql.col(c)), c) for c in ("i", "code", "n"))).from_(
        counted.subquery("c"))


def _bin_tables(row: Mapping[str, Any]) -> dict[int, tuple[list[int], list[int]]]:
    """Per number feature index: (its own bins' counts, its counts on the reference's bins)."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for i, code, n in zip(row.get("hist_i") or [], row.get("hist_code") or [], row.get("hist_n") or []):
        own, ref = out.setdefault(int(i), ([0] * BINS, [0] * (BINS + 2)))
        own[int(code) // _CODE] += int(n)
        ref[int(code) % _CODE] += int(n)
    return out


def _count_where(condition: exp.Expression) -> exp.Expression:
    return exp.Filter(this=exp.Count(this=exp.Star()), expression=exp.Where(this=condition))


def _number(value: exp.Expression, dtype: str, dialect: str) -> exp.Expression:
    """A number feature as a double: timestamps as epoch seconds; NaN and ±Infinity as null (as served)."""
    if dtype == types.TIMESTAMP:
        return exp.Div(this=exp.cast(sql.epoch_us(value, dialect), "double"), expression=exp.Literal.number(1e6))
    return sql.encode_value(value, types.FLOAT, dialect)


def _length(value: exp.Expression, dialect: str) -> exp.Expression:
    if dialect == "spark":  # size(null) is -1 unless ANSI mode is on: keep null a null
        return exp.case().when(exp.Is(this=value.copy(), expression=exp.null()), exp.null()).else_(
            exp.Anonymous(this="size", expressions=[value]))
    return exp.func("cardinality" if dialect == "postgres" else "len", value)


def _norm(value: exp.Expression, dtype: str, dialect: str) -> exp.Expression:
    """The L2 norm of a numeric array's non-null items (null for an array of strings)."""
    if dtype == types.ARRAY_STRING:
        return exp.cast(exp.null(), "double")
    doubles = sql.encode_value(value.copy(), types.ARRAY_FLOAT, dialect)  # NaN and ±Infinity items as null
    if dialect == "postgres":
        item = exp.to_identifier("__fm_x", quoted=True)
        squares = (sqlglot.select(exp.Sum(this=exp.Mul(this=exp.column(item), expression=exp.column(item))))
                   .from_(exp.Unnest(expressions=[doubles], alias=exp.TableAlias(columns=[item]))))
        total: exp.Expression = exp.Subquery(this=squares)
    elif dialect == "spark":  # aggregate: https://spark.apache.org/docs/latest/api/sql/index.html#aggregate
        acc, item = exp.to_identifier("__fm_acc"), exp.to_identifier("__fm_x")
        square = exp.func("coalesce", exp.Mul(this=exp.column(item), expression=exp.column(item)),
                          exp.cast(exp.Literal.number(0), "double"))
        total = exp.Anonymous(this="aggregate", expressions=[doubles, exp.cast(exp.Literal.number(0), "double"),
                                                             exp.Lambda(this=exp.Add(this=exp.column(acc), expression=square),
                                                                        expressions=[acc, item])])
    else:
        item = exp.to_identifier("__fm_x")
        squares = exp.func("list_transform", doubles, exp.Lambda(
            this=exp.Mul(this=exp.column(item), expression=exp.column(item)), expressions=[item]))
        total = exp.func("list_sum", squares)
    # An empty array (or one of nulls only) has norm 0; a null array has none.
    return (exp.case().when(exp.Is(this=value.copy(), expression=exp.null()), exp.null())
            .else_(exp.Sqrt(this=exp.func("coalesce", total, exp.Literal.number(0)))))


def _quantiles(value: exp.Expression, dialect: str) -> exp.Expression:
    fractions = exp.Array(expressions=[exp.Literal.number(q) for q in QUANTILES.values()])
    if dialect == "postgres":
        return exp.WithinGroup(this=exp.PercentileCont(this=fractions),
                               expression=exp.Order(expressions=[exp.Ordered(this=value)]))
    if dialect == "spark":
        return exp.Anonymous(this="percentile_approx", expressions=[value, fractions])
    return exp.func("approx_quantile", value, fractions)


def _bin(value: exp.Expression, lo: exp.Expression, hi: exp.Expression) -> exp.Expression:
    """The bin (0 .. BINS-1) of `value` among BINS equal-width bins over [lo, hi] (the last one closed); a
    constant column (lo = hi) has all its values in bin 0."""
    width = exp.paren(exp.Sub(this=hi.copy(), expression=lo.copy()), copy=False)
    offset = exp.paren(exp.Sub(this=value.copy(), expression=lo.copy()), copy=False)
    scaled = exp.Div(this=exp.paren(exp.Mul(this=offset, expression=exp.Literal.number(BINS)), copy=False),
                     expression=width)
    index = exp.func("least", exp.Floor(this=scaled), exp.Literal.number(BINS - 1))
    return (exp.case().when(exp.Is(this=value.copy(), expression=exp.null()), exp.null())
            .when(exp.EQ(this=hi.copy(), expression=lo.copy()), exp.Literal.number(0)).else_(index))


def _ref_bin(value: exp.Expression, histogram: Mapping[str, Any]) -> exp.Expression:
    """The bin of `value` on a reference histogram's edges, with open-ended outer bins: 0 below its lo, 1 ..
    BINS its bins, BINS+1 above its hi (a constant reference: 0 below, 1 equal, BINS+1 above)."""
    lo, hi = _literal(histogram["lo"]), _literal(histogram["hi"])
    inner = exp.Add(this=_bin(value, lo, hi), expression=exp.Literal.number(1))
    return (exp.case().when(exp.Is(this=value.copy(), expression=exp.null()), exp.null())
            .when(exp.LT(this=value.copy(), expression=lo.copy()), exp.Literal.number(0))
            .when(exp.GT(this=value.copy(), expression=hi.copy()), exp.Literal.number(BINS + 1)).else_(inner))


def _literal(number: float) -> exp.Expression:
    return exp.cast(exp.Literal.number(repr(float(number))), "double")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# ---- the sync's record ---------------------------------------------------------------------------------------

#: The history record format this version writes (docs/monitoring.md).
RECORD_FORMAT = 1


def profile_view(warehouse: Any, history: Any, view: FeatureView, now: datetime,
                 entities: int | None = None) -> dict[str, Any]:
    """The statistics record of what a sync at `now` publishes for `view` (one warehouse query), with its
    drift figures against the view's previous record in `history` (a featuremart.durable.StatsHistory).

    `entities`: how many entities the sync publishes, if it knows (else the previous record's count): above
    SAMPLE_ENTITIES the profile is of a sample. Levels are not stored: they are judged on read, by the tier's
    thresholds in features.yml then."""
    from featuremart.config import DriftThresholds
    from featuremart.monitoring.drift import compare_profiles

    previous = next(iter(history.read(view.name, 1)), None)
    reference = previous.get("features") if previous else None
    if entities is None and previous:
        entities = previous.get("entities")
    sample = sample_buckets(entities)
    query = view_profile_query(view, now, warehouse.dialect, reference, sample)
    row = warehouse.query(sql.render(query, warehouse.dialect)).to_pylist()[0]
    profile = read_profile(row, view.features, reference)
    drift = compare_profiles(reference, profile["features"], DriftThresholds())
    for stats in profile["features"].values():
        stats.pop("reference_counts", None)
    return {"format": RECORD_FORMAT, "view": view.name, "version": view.version, "as_of": _utc_text(now),
            "entities": entities if entities is not None else (profile["rows"] if sample is None else None),
            "rows": profile["rows"], "sample": sample / sql.SAMPLE_BUCKETS if sample else 1.0,
            "features": profile["features"], "previous_run": previous.get("run_id") if previous else None,
            "drift": {name: {"psi": d.psi, "ks": d.ks} for name, d in drift.items()}}


def sample_buckets(entities: int | None) -> int | None:
    """How many of sql.SAMPLE_BUCKETS hash buckets to profile for a view of `entities` (None: all of them)."""
    if entities is None or entities <= SAMPLE_ENTITIES:
        return None
    return max(1, math.ceil(sql.SAMPLE_BUCKETS * SAMPLE_ENTITIES / entities))


def _utc_text(moment: datetime) -> str:
    """A (naive: UTC) time as ISO text with its offset, e.g. 2026-01-31T06:00:00+00:00."""
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="seconds")

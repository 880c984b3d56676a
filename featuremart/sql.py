"""SQL builders: every query featuremart runs in a warehouse, as sqlglot expressions rendered per dialect.

Identifiers are quoted by sqlglot and values are typed literals, never strings pasted into SQL. The online
payload (key, value) is computed here, in the warehouse, so Python only moves bytes: see docs/redis-format.md
for the format these expressions produce and `featuremart.online.keys` for the same format on the read side.
"""

from __future__ import annotations

from datetime import datetime

import sqlglot
from sqlglot import exp

from featuremart import types
from featuremart.types import to_us
from featuremart.online.keys import ESCAPES
from featuremart.registry import FeatureView, Relation

TS_US = "__fm_ts_us"  # the event timestamp as microseconds since the Unix epoch (UTC)
_RN = "__fm_rn"


def ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=ident(name), table=ident(table) if table else None)


def table(relation: Relation) -> exp.Table:
    return exp.Table(
        this=ident(relation.identifier),
        db=ident(relation.schema) if relation.schema else None,
        catalog=ident(relation.database) if relation.database else None,
    )


def epoch_us(value: exp.Expression, dialect: str) -> exp.Expression:
    """Microseconds since the epoch of a timestamp (naive timestamps are read as UTC)."""
    if dialect == "duckdb":
        return exp.func("epoch_us", value)
    if dialect == "spark":  # unix_micros takes an instant: timestamp_ntz is read in the session's zone, UTC
        return exp.func("unix_micros", exp.cast(value, "timestamp"))
    seconds = exp.Extract(this=exp.var("EPOCH"), expression=value)
    return exp.cast(exp.Round(this=exp.Mul(this=seconds, expression=exp.Literal.number(1_000_000))), "bigint")


def latest_rows(view: FeatureView, now: datetime, dialect: str, columns: list[str] | None = None,
                changed_since_us: int | None = None, sample: int | None = None) -> exp.Select:
    """The latest row per entity whose event time is in [now - ttl, now]: what the online store serves at `now`.

    Rows dated after `now` are not valid yet; an entity whose latest row is older than the ttl has no value.
    Selects the join keys, `__fm_ts_us` and the feature columns (or `columns`). With `changed_since_us`, only
    entities having a row whose `changed_at` is newer than that (an incremental sync). With `sample` (1 to
    SAMPLE_BUCKETS - 1), only the entities whose key hash falls in the first `sample` of SAMPLE_BUCKETS buckets:
    the same entities every time (featuremart.monitoring.stats profiles large views on such a sample).
    """
    keys = [col(k) for k in view.key_names]
    ts = col(view.timestamp)
    ts_us = epoch_us(ts, dialect)
    now_us = to_us(now)
    ranked = (
        sqlglot.select(
            *keys,
            exp.alias_(ts_us, TS_US, quoted=True),
            *(col(c) for c in (columns if columns is not None else [f.name for f in view.features])),
            exp.alias_(
                exp.Window(
                    this=exp.RowNumber(),
                    partition_by=keys,
                    order=exp.Order(expressions=[exp.Ordered(this=ts, desc=True, nulls_first=False)]),
                ),
                _RN,
                quoted=True,
            ),
        )
        .from_(table(view.relation))
        .where(exp.and_(*(exp.Not(this=exp.Is(this=k.copy(), expression=exp.Null())) for k in keys),
                        exp.LTE(this=ts_us.copy(), expression=exp.Literal.number(now_us))))
    )
    if sample is not None:
        ranked = ranked.where(exp.LT(this=exp.paren(exp.BitwiseAnd(
            this=entity_hash(view, dialect), expression=exp.Literal.number(SAMPLE_BUCKETS - 1)), copy=False),
            expression=exp.Literal.number(sample)))
    if changed_since_us is not None:
        if not view.changed_at:
            raise ValueError(f"view {view.name} declares no changed_at column")
        changed = (
            sqlglot.select(*(col(k) for k in view.key_names)).distinct()
            .from_(table(view.relation))
            .where(exp.GT(this=epoch_us(col(view.changed_at), dialect), expression=exp.Literal.number(changed_since_us)))
        )
        ranked = ranked.join(changed.subquery("__fm_changed"), using=[ident(k) for k in view.key_names])
    oldest = now_us - int(view.ttl.total_seconds() * 1_000_000)
    out = [col(k, "r") for k in view.key_names] + [col(TS_US, "r")]
    out += [col(c, "r") for c in (columns if columns is not None else [f.name for f in view.features])]
    return (
        sqlglot.select(*out)
        .from_(ranked.subquery("r"))
        .where(exp.and_(exp.EQ(this=col(_RN, "r"), expression=exp.Literal.number(1)),
                        exp.GTE(this=col(TS_US, "r"), expression=exp.Literal.number(oldest))))
    )


#: Entity samples are taken in 1/1024ths: `hash(keys) & 1023 < n`.
SAMPLE_BUCKETS = 1024


def entity_hash(view: FeatureView, dialect: str) -> exp.Expression:
    """A 64-bit hash of an entity's join keys, computed by the warehouse (DuckDB `hash`, Postgres
    `hashtextextended`, Spark `xxhash64`): where an entity falls in a sample."""
    if dialect == "spark":
        return exp.Anonymous(this="xxhash64", expressions=[col(k) for k in view.key_names])
    if dialect == "postgres":
        text: exp.Expression = exp.cast(col(view.key_names[0]), "text")
        for key in view.key_names[1:]:
            text = exp.DPipe(this=exp.DPipe(this=text, expression=exp.Literal.string("\x1f")),
                             expression=exp.cast(col(key), "text"))
        return exp.Anonymous(this="hashtextextended", expressions=[text, exp.Literal.number(0)])
    return exp.func("hash", *(col(k) for k in view.key_names))


def max_changed_us(view: FeatureView, dialect: str) -> exp.Select:
    """The newest `changed_at` of a view, in µs: the watermark an incremental sync starts from next time."""
    return sqlglot.select(exp.Max(this=epoch_us(col(view.changed_at), dialect)).as_("m")).from_(table(view.relation))


def online_payload(view: FeatureView, prefix: str, now: datetime, dialect: str,
                   changed_since_us: int | None = None) -> exp.Select:
    """Rows of (key, value, ts_us) ready to write: the Redis key and the encoded value of each entity's latest row.

    key   = <prefix>:{<k1>=<v1>,<k2>=<v2>}:<view>:<version>
    value = JSON array [event_ts_us, feature_1, ..., feature_n]
    """
    latest = latest_rows(view, now, dialect, changed_since_us=changed_since_us)
    src = "l"
    parts: list[exp.Expression] = [exp.Literal.string(f"{prefix}:{{")]
    for i, key in enumerate(view.key_names):
        parts.append(exp.Literal.string(("," if i else "") + f"{key}="))
        parts.append(escape_key(exp.cast(col(key, src), "text")))
    parts.append(exp.Literal.string(f"}}:{view.name}:{view.version}"))
    key_expr = parts[0]
    for part in parts[1:]:
        key_expr = exp.DPipe(this=key_expr, expression=part)
    values = [col(TS_US, src)] + [_json_item(encode_value(col(f.name, src), f.dtype, dialect), f.dtype, dialect)
                                  for f in view.features]
    return sqlglot.select(
        exp.alias_(key_expr, "key", quoted=True),
        exp.alias_(exp.cast(json_array(values, dialect), "text"), "value", quoted=True),
        exp.alias_(col(TS_US, src), "ts_us", quoted=True),
    ).from_(latest.subquery(src))


def view_reads(view: FeatureView, prefix: str, now: datetime, dialect: str,
               changed_since_us: int | None = None) -> tuple[str, ...]:
    """The queries a sync runs to read a view, rendered, in the order it runs them: the watermark (views with a
    `changed_at`: read before the rows, so rows changed meanwhile are read again next time), then the payload."""
    reads = [online_payload(view, prefix, now, dialect, changed_since_us=changed_since_us)]
    if view.changed_at:
        reads.insert(0, max_changed_us(view, dialect))
    return tuple(render(q, dialect) for q in reads)


def escape_key(value: exp.Expression) -> exp.Expression:
    """Percent-escape the characters that delimit a key (same table as keys.escape)."""
    for char, code in ESCAPES:
        value = exp.func("replace", value, exp.Literal.string(char), exp.Literal.string(code))
    return value


def encode_value(value: exp.Expression, dtype: str, dialect: str) -> exp.Expression:
    """A feature value as it goes into the JSON array: timestamps as epoch µs, dates as ISO text; NaN and
    ±Infinity (floats and array<float> items) as null, since JSON has no such numbers (DuckDB would write a bare
    `NaN`, which JSON parsers refuse, Postgres the string "NaN")."""
    if dtype == types.TIMESTAMP:
        return epoch_us(value, dialect)
    if dtype == types.DATE:
        return exp.cast(value, "text")
    if dtype == types.FLOAT:
        double = exp.cast(value, "double")
        return exp.case().when(_non_finite(double.copy()), exp.null()).else_(double)
    if dtype == types.ARRAY_FLOAT:
        return _finite_items(value, dialect)
    return value


def _json_item(value: exp.Expression, dtype: str, dialect: str) -> exp.Expression:
    """An encoded value as an item of `json_array`: on PostgreSQL a float keeps the sign of a negative zero (its
    JSON writes -0.0 as -0, an integer zero)."""
    if dialect != "postgres" or dtype != types.FLOAT:
        return value
    negative_zero = exp.and_(exp.EQ(this=value.copy(), expression=exp.Literal.number(0)),
                             exp.EQ(this=exp.cast(value.copy(), "text"), expression=exp.Literal.string("-0")))
    return exp.case().when(negative_zero, exp.cast(exp.Literal.string("-0.0"), "json")).else_(
        exp.func("to_json", value))


def _non_finite_values() -> list[exp.Expression]:
    return [exp.cast(exp.Literal.string(v), "double") for v in ("NaN", "Infinity", "-Infinity")]


def _non_finite(double: exp.Expression) -> exp.Expression:
    """`double` is NaN or ±Infinity (both DuckDB and Postgres hold NaN equal to NaN, unlike IEEE)."""
    return exp.In(this=double, expressions=_non_finite_values())


def _finite_items(array: exp.Expression, dialect: str) -> exp.Expression:
    """An array of doubles with its NaN and ±Infinity items replaced by null (a null array stays null)."""
    doubles = exp.cast(array, exp.DataType.build("array<double>" if dialect == "spark" else "double[]", dialect=dialect))
    if dialect == "spark":  # transform: https://spark.apache.org/docs/latest/api/sql/index.html#transform
        return exp.Anonymous(this="transform", expressions=[doubles, _finite_lambda()])
    if dialect == "postgres":  # array_replace compares with =, under which NaN equals NaN
        for bad in _non_finite_values():
            doubles = exp.func("array_replace", doubles, bad, exp.null())
        return doubles
    replaced = exp.func("list_transform", doubles.copy(), _finite_lambda())
    # Fast path: a finite sum means every item is finite (any NaN or ±Infinity makes the sum NaN or infinite).
    return exp.case().when(exp.func("isfinite", exp.func("list_sum", doubles.copy())), doubles).else_(replaced)


def _finite_lambda() -> exp.Lambda:
    """x -> x, or null where x is NaN or ±Infinity."""
    item = exp.to_identifier("__fm_x")
    return exp.Lambda(this=exp.case().when(_non_finite(exp.column(item)), exp.null()).else_(exp.column(item)),
                      expressions=[item])


def non_finite_counts(view: FeatureView, dialect: str) -> exp.Select | None:
    """For each float or array<float> feature of `view`, how many rows hold NaN or ±Infinity (None: no such
    feature). `featuremart validate` warns about them: online they are served as null."""
    counts = []
    for f in view.features:
        value = col(f.name)
        if f.dtype == types.FLOAT:
            bad: exp.Expression = _non_finite(exp.cast(value, "double"))
        elif f.dtype == types.ARRAY_FLOAT:
            bad = exp.Not(this=exp.EQ(this=_finite_items(value, dialect), expression=exp.cast(
                value.copy(), exp.DataType.build("array<double>" if dialect == "spark" else "double[]",
                                                 dialect=dialect))))
        else:
            continue
        hits = exp.Sum(this=exp.case().when(bad, exp.Literal.number(1)).else_(exp.Literal.number(0)))
        counts.append(exp.alias_(hits, f.name, quoted=True))
    return sqlglot.select(*counts).from_(table(view.relation)) if counts else None


def json_array(values: list[exp.Expression], dialect: str) -> exp.Expression:
    """A JSON array of the values (json_build_array on Postgres < 16, which has no json_array).

    Spark has no JSON array of mixed types (its arrays hold one type): each value is written by `to_json` as a
    one-item array, whose brackets are stripped, and the items joined."""
    if dialect == "postgres":
        return exp.Anonymous(this="json_build_array", expressions=values)
    if dialect == "spark":
        items = [exp.Anonymous(this="regexp_replace", expressions=[
            exp.Anonymous(this="to_json", expressions=[exp.Array(expressions=[v])]),
            exp.Literal.string(r"^\[|\]$"), exp.Literal.string("")]) for v in values]
        return exp.func("concat", exp.Literal.string("["),
                        exp.Anonymous(this="concat_ws", expressions=[exp.Literal.string(","), *items]),
                        exp.Literal.string("]"))
    return exp.func("json_array", *values)


def render(expression: exp.Expression, dialect: str) -> str:
    return expression.sql(dialect=dialect)

"""The SQL builders, executed on DuckDB (not only compared as text), and checked against the read side."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import duckdb
import pytest

from featuremart import sql
from featuremart.online import keys
from featuremart.online.codec import decoder
from featuremart.registry import Feature, FeatureView, Relation

NOW = datetime(2026, 1, 10, 12, 0, 0)


def view(key_type="string", keys_=("customer_id",)):
    return FeatureView(
        name="spend", entities=("customer",), join_keys=tuple((k, key_type) for k in keys_), timestamp="ts",
        ttl=timedelta(days=2), relation=Relation(None, "main", "spend"),
        features=(Feature("spend", "amount", "float"), Feature("spend", "n", "int"), Feature("spend", "flag", "bool"),
                  Feature("spend", "label", "string"), Feature("spend", "first_ts", "timestamp"),
                  Feature("spend", "day", "date"), Feature("spend", "vec", "array<float>")),
    )


@pytest.fixture
def con():
    con = duckdb.connect()
    con.execute("""create table spend (customer_id varchar, ts timestamp, amount decimal(10,2), n bigint, flag boolean,
                   label varchar, first_ts timestamp, day date, vec double[])""")
    rows = [
        # an entity with history: the latest row not after NOW wins
        ("C1", "2026-01-09 10:00:00", 1.50, 1, True, "a", "2025-01-01 00:00:00", "2026-01-09", [0.5, 1.0]),
        ("C1", "2026-01-10 11:00:00", 2.25, 2, False, "ü,{x}=%", "2025-01-01 00:00:00.123456", "2026-01-10", []),
        ("C1", "2026-01-11 00:00:00", 9.99, 3, None, "future", None, None, None),  # after NOW: not valid yet
        # key characters that delimit keys are escaped
        ("C,{2}=%", "2026-01-10 00:00:00", None, None, None, None, None, None, None),
        # latest row older than the ttl: no value at all
        ("C3", "2026-01-08 11:59:59", 3.0, 1, True, "old", None, None, [1.0]),
        # exactly at the ttl boundary: served (inclusive)
        ("C4", "2026-01-08 12:00:00", 4.0, 1, True, "edge", None, None, [1.0]),
        (None, "2026-01-10 00:00:00", 5.0, 1, True, "null key", None, None, None),
    ]
    con.executemany("insert into spend values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return con


def test_latest_rows(con):
    q = sql.render(sql.latest_rows(view(), NOW, "duckdb"), "duckdb")
    got = {r[0]: r for r in con.sql(q).fetchall()}
    assert set(got) == {"C1", "C,{2}=%", "C4"}
    assert got["C1"][1] == sql.to_us(datetime(2026, 1, 10, 11)) and float(got["C1"][2]) == 2.25


def test_payload_keys_match_the_read_side_and_values_decode(con):
    v = view()
    q = sql.render(sql.online_payload(v, "fm", NOW, "duckdb"), "duckdb")
    rows = {r[0]: r for r in con.sql(q).fetchall()}
    k1 = keys.row_key("fm", "spend", v.version, [("customer_id", "C1")])
    k2 = keys.row_key("fm", "spend", v.version, [("customer_id", "C,{2}=%")])
    assert k1 == f"fm:{{customer_id=C1}}:spend:{v.version}"
    assert k2 == f"fm:{{customer_id=C%2C%7B2%7D%3D%25}}:spend:{v.version}"
    assert set(rows) == {k1, k2, keys.row_key("fm", "spend", v.version, [("customer_id", "C4")])}
    ts, values = decoder([f.dtype for f in v.features])(rows[k1][1])
    assert ts == datetime(2026, 1, 10, 11, tzinfo=timezone.utc)
    assert values == [2.25, 2, False, "ü,{x}=%", datetime(2025, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc),
                      date(2026, 1, 10), []]
    _, nulls = decoder([f.dtype for f in v.features])(rows[k2][1])
    assert nulls == [None] * 7


def test_int_keys_and_composite_keys(con):
    con.execute("create table pair as select 42::bigint as customer_id, 'M1' as merchant_id, ts, amount, n, flag, "
                "label, first_ts, day, vec from spend where customer_id = 'C4'")
    v = FeatureView(**{**view().__dict__, "name": "pair", "relation": Relation(None, "main", "pair"),
                       "join_keys": (("customer_id", "int"), ("merchant_id", "string")), "entities": ("c", "m")})
    [(key, _, _)] = con.sql(sql.render(sql.online_payload(v, "fm", NOW, "duckdb"), "duckdb")).fetchall()
    assert key == keys.row_key("fm", "pair", v.version, [("customer_id", 42), ("merchant_id", "M1")])
    assert key.startswith("fm:{customer_id=42,merchant_id=M1}:pair:")


def test_identifiers_are_quoted():
    v = FeatureView(**{**view().__dict__, "relation": Relation("db", "my schema", 'we"ird')})
    rendered = sql.render(sql.latest_rows(v, NOW, "duckdb"), "duckdb")
    assert '"db"."my schema"."we""ird"' in rendered


def test_postgres_rendering_uses_its_own_functions():
    rendered = sql.render(sql.online_payload(view(), "fm", NOW, "postgres"), "postgres")
    assert "JSON_BUILD_ARRAY(" in rendered and "EXTRACT(EPOCH FROM" in rendered and "EPOCH_US" not in rendered

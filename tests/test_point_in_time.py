"""The point-in-time join macros, executed: the SQL dbt renders from `featuremart.point_in_time_join` equals a
brute-force oracle (tests/pit_oracle.py) row for row, on DuckDB and on PostgreSQL, over random histories.

The macros are tested the dbt-utils way: a small fixture dbt project (written to a temp dir) installs the
featuremart package. The SQL is compiled once per shape and warehouse; hypothesis then only inserts data, and
every example is read back under several session time zones: the result must not depend on them, whether
the spine's and the views' timestamps are `timestamp` or `timestamptz`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.pit_oracle import View, compile_point_in_time_sql, output_names, point_in_time_oracle

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
BASE = datetime(2024, 3, 10, 23, 59, 50)  # near midnight: a wrong timezone shift changes the day
#: Session / process time zones every result is checked under: a DST zone, a half-hour one, one past +13.
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
PG_DSN = dict(host=os.environ.get("PGHOST", "127.0.0.1"), port=int(os.environ.get("PGPORT", "5432")),
              user=os.environ.get("PGUSER", "postgres"), password=os.environ.get("PGPASSWORD", ""),
              dbname=os.environ.get("PGDATABASE", "test"))


# --- the fixture dbt project ---------------------------------------------------------------------------

FIXTURE_FILES = {
    "dbt_project.yml": """
        name: pit_fixture
        version: "1.0.0"
        config-version: 2
        profile: pit_fixture
        models:
          pit_fixture: {+materialized: table}
        seeds:
          pit_fixture:
            +quote_columns: false
            fx_labels: {+column_types: {label_ts: timestamp}}
            fx_customer_spend: {+column_types: {event_ts: timestamp, computed_at: timestamp}}
            fx_merchant_risk: {+column_types: {event_ts: timestamptz}}
            fx_pair: {+column_types: {event_ts: timestamp}}
        vars:
          featuremart_entities:
            customer: {description: A card holder., join_keys: {customer_id: int}}
            merchant: {description: A business., join_keys: {merchant_id: int}}
          featuremart_default_ttl: 30d
    """,
    "packages.yml": f"""
        packages:
          - local: {ROOT}
    """,
    "profiles.yml": """
        pit_fixture:
          target: dev
          outputs:
            dev:
              type: duckdb
              path: "{{ env_var('PIT_DUCKDB_PATH', 'target/fixture.duckdb') }}"
              threads: 1
            postgres:
              type: postgres
              host: "{{ env_var('PGHOST', '127.0.0.1') }}"
              port: "{{ env_var('PGPORT', '5432') | as_number }}"
              user: "{{ env_var('PGUSER', 'postgres') }}"
              password: "{{ env_var('PGPASSWORD', '') }}"
              dbname: "{{ env_var('PGDATABASE', 'test') }}"
              schema: "{{ env_var('PIT_PG_SCHEMA', 'pit_fixture') }}"
              threads: 1
            spark:  # the SparkSession already running in-process (tests/test_spark.py)
              type: spark
              method: session
              host: NA
              schema: pit_fixture
              threads: 1
    """,
    # The spine: labels at times before, at, within and after the views' rows; a customer with no history.
    "seeds/fx_labels.csv": """
        customer_id,merchant_id,label_ts,label
        1,10,2024-01-01 00:00:00,0
        1,10,2024-01-02 00:00:00,1
        1,20,2024-01-03 12:00:00,0
        1,10,2024-01-05 00:00:00,1
        2,20,2024-01-02 06:00:00,0
        2,10,2024-01-09 00:00:00,0
        3,10,2024-01-04 00:00:00,1
        1,10,2024-01-02 00:00:00,1
    """,
    "seeds/fx_customer_spend.csv": """
        customer_id,event_ts,spend_7d,txn_count_7d,computed_at
        1,2024-01-02 00:00:00,10.5,2,2024-02-01 00:00:00
        1,2024-01-03 00:00:00,,3,2024-02-01 00:00:00
        2,2024-01-01 00:00:00,4.0,1,2024-02-01 00:00:00
        2,2024-01-06 00:00:00,7.0,5,2024-02-01 00:00:00
    """,
    "seeds/fx_merchant_risk.csv": """
        merchant_id,event_ts,chargeback_rate,txn_count_7d
        10,2023-12-31 19:00:00-05:00,0.25,40
        10,2024-01-04 05:30:00+05:30,0.5,41
        20,2024-01-03 12:00:00+00:00,0.125,7
    """,
    "seeds/fx_pair.csv": """
        customer_id,merchant_id,event_ts,pair_txn_count
        1,10,2024-01-01 12:00:00,1
        1,10,2024-01-04 00:00:00,2
        2,20,2024-01-02 00:00:00,3
    """,
    "models/cust_spend.sql": "select * from {{ ref('fx_customer_spend') }}",
    "models/merch_risk.sql": "select * from {{ ref('fx_merchant_risk') }}",
    "models/cust_merch_pair.sql": "select * from {{ ref('fx_pair') }}",
    "models/features.yml": """
        version: 2
        models:
          - name: cust_spend
            config:
              meta:
                featuremart: {entity: customer, timestamp: event_ts, ttl: 2d, changed_at: computed_at}
            data_tests:
              - featuremart.feature_keys_unique:
                  arguments: {keys: [customer_id], timestamp: event_ts}
          - name: merch_risk
            config:
              meta:
                featuremart: {entity: merchant, timestamp: event_ts, ttl: 36h}
          - name: cust_merch_pair
            config:
              meta:
                featuremart: {entity: [customer, merchant], timestamp: event_ts, ttl: 3d}
    """,
    "models/exposures.yml": """
        version: 2
        exposures:
          - name: fraud_model
            type: ml
            owner: {name: risk, email: risk@example.com}
            depends_on: [ref('cust_spend'), ref('merch_risk'), ref('cust_merch_pair')]
            config:
              meta:
                featuremart:
                  features:
                    - cust_spend.*
                    - merch_risk.txn_count_7d
                    - merch_risk.chargeback_rate
                    - cust_merch_pair.pair_txn_count
    """,
    # A feature service: its views are declared with depends_on, as dbt requires for refs it cannot see.
    "models/fraud_training_set.sql": """
        -- depends_on: {{ ref('cust_spend') }}
        -- depends_on: {{ ref('merch_risk') }}
        -- depends_on: {{ ref('cust_merch_pair') }}
        {{ featuremart.training_set(ref('fx_labels'), 'label_ts', service='fraud_model') }}
    """,
    # An explicit feature list over a query spine: the refs are recorded at parse time.
    "models/spend_training_set.sql": """
        {{ featuremart.training_set('select customer_id, label_ts, label from ' ~ ref('fx_labels'), 'label_ts',
                                    features=['cust_spend.spend_7d', 'cust_spend.txn_count_7d']) }}
    """,
}


def _write_fixture_project(dest: Path) -> Path:
    for name, text in FIXTURE_FILES.items():
        path = dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # The DuckDB file lives in the fixture project: dbt resolves a relative path against the working
        # directory, which for the in-process compile is wherever pytest runs (a clean clone has no target/).
        text = text.replace("'target/fixture.duckdb'", f"'{dest / 'fixture.duckdb'}'")
        path.write_text(textwrap.dedent(text).strip() + "\n")
    return dest


def _dbt(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("dbt")), *args, "--project-dir", str(project),
           "--profiles-dir", str(project)]
    full_env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=full_env)
    assert proc.returncode == 0, f"dbt {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def fixture_project(tmp_path_factory) -> Path:
    project = _write_fixture_project(tmp_path_factory.mktemp("pit_fixture"))
    _dbt(project, "deps")
    return project


def _postgres_connection():
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 (from dbt-postgres) is not installed")
    try:
        return psycopg2.connect(connect_timeout=3, **PG_DSN)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_DSN['host']}:{PG_DSN['port']} "
                    f"(set PGHOST/PGPORT/PGUSER/PGDATABASE): {str(exc).strip()}")


# --- warehouses the compiled SQL runs on ------------------------------------------------------------------

class DuckDBWarehouse:
    target = None
    types = {"int": "integer", "float": "double", "ts": "timestamp", "tstz": "timestamptz"}

    def __init__(self):
        import duckdb

        self.con = duckdb.connect()

    def set_timezone(self, zone: str) -> None:
        self.con.execute(f"set TimeZone = '{zone}'")

    def create(self, table: str, columns: dict[str, str]) -> None:
        cols = ", ".join(f"{c} {self.types[t]}" for c, t in columns.items())
        self.con.execute(f"create or replace table {table} ({cols})")

    def replace_rows(self, table: str, columns: dict[str, str], rows: list[tuple]) -> None:
        self.con.execute(f"delete from {table}")
        if rows:
            marks = ", ".join("cast(? as timestamptz)" if t == "tstz" else "?" for t in columns.values())
            self.con.executemany(f"insert into {table} values ({marks})", rows)

    def fetch(self, sql: str) -> list[tuple]:
        return self.con.execute(sql).fetchall()

    def close(self) -> None:
        self.con.close()


class PostgresWarehouse:
    target = "postgres"
    types = {"int": "integer", "float": "double precision", "ts": "timestamp", "tstz": "timestamptz"}

    def __init__(self, con):
        self.con = con
        self.con.autocommit = True
        self.schema = f"pit_{uuid.uuid4().hex[:10]}"
        with self.con.cursor() as cur:
            cur.execute(f"create schema {self.schema}")
            cur.execute(f"set search_path to {self.schema}")

    def set_timezone(self, zone: str) -> None:
        with self.con.cursor() as cur:
            cur.execute(f"set timezone to '{zone}'")

    def create(self, table: str, columns: dict[str, str]) -> None:
        cols = ", ".join(f"{c} {self.types[t]}" for c, t in columns.items())
        with self.con.cursor() as cur:
            cur.execute(f"drop table if exists {table}; create table {table} ({cols})")

    def replace_rows(self, table: str, columns: dict[str, str], rows: list[tuple]) -> None:
        from psycopg2.extras import execute_values

        with self.con.cursor() as cur:
            cur.execute(f"truncate {table}")
            if rows:
                template = "(" + ", ".join("%s::timestamptz" if t == "tstz" else "%s" for t in columns.values()) + ")"
                execute_values(cur, f"insert into {table} values %s", rows, template=template)

    def fetch(self, sql: str) -> list[tuple]:
        with self.con.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def close(self) -> None:
        with self.con.cursor() as cur:
            cur.execute(f"drop schema {self.schema} cascade")
        self.con.close()


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def warehouse(request):
    wh = DuckDBWarehouse() if request.param == "duckdb" else PostgresWarehouse(_postgres_connection())
    yield wh
    wh.close()


# --- shapes: the join's arguments and the tables' schemas, compiled once each -----------------------------

SPINE = {"customer_id": "int", "merchant_id": "int", "label_ts": "ts", "label": "int"}
SPINE_TZ = {"customer_id": "int", "merchant_id": "int", "label_ts": "tstz", "label": "int"}

def view_tables(ts: str = "ts") -> dict[str, dict[str, str]]:
    """The views' tables, their event times of type `ts` ("ts" or "tstz"). `merchant_id` of the customer view
    is a join key of the other views and `x` a feature of two views: both come out prefixed."""
    return {
        "pit_customer": {"customer_id": "int", "event_ts": ts, "x": "int", "spend": "float", "merchant_id": "int"},
        "pit_merchant": {"merchant_id": "int", "event_ts": ts, "risk": "float"},
        "pit_pair": {"customer_id": "int", "merchant_id": "int", "event_ts": ts, "x": "int", "n": "int"},
    }


VIEW_TABLES = view_tables()
VIEWS = [
    View("customer", ("customer_id",), "event_ts", 5, ("x", "spend", "merchant_id")),
    View("merchant", ("merchant_id",), "event_ts", None, ("risk",)),
    View("pair", ("customer_id", "merchant_id"), "event_ts", 0, ("x", "n")),
]
TABLE_OF = {"customer": "pit_customer", "merchant": "pit_merchant", "pair": "pit_pair"}
SHAPES = {
    # name: (spine schema, views declared unique (no duplicate (keys, ts) generated then), views' ts type)
    "naive": (SPINE, False, "ts"),
    "unique": (SPINE, True, "ts"),
    "timestamptz": (SPINE_TZ, False, "ts"),
    "views_timestamptz": (SPINE, False, "tstz"),
    "both_timestamptz": (SPINE_TZ, True, "tstz"),
}
#: Offsets (hours) that zone-aware values are written in: the same instants, other wall-clock times.
OFFSETS = [0, 5, -4, 9, 5.75]


def _macro_views(unique: bool, timestamp_type: str | None = None) -> list[dict]:
    return [{"relation": TABLE_OF[v.name], "name": v.name, "keys": list(v.keys), "timestamp": v.timestamp,
             "timestamp_type": timestamp_type, "ttl_seconds": v.ttl_seconds, "features": list(v.features),
             "unique": unique} for v in VIEWS]


@pytest.fixture(scope="module")
def compiled(fixture_project, warehouse):
    """shape -> SQL, compiled by dbt for the warehouse's target, once per module."""
    sqls = {}
    for shape, (spine, unique, view_ts) in SHAPES.items():
        sqls[shape] = compile_point_in_time_sql(
            fixture_project, fixture_project, "select * from pit_spine", "label_ts",
            _macro_views(unique, warehouse.types[view_ts]),
            target=warehouse.target,
            spine_columns={c: warehouse.types[t] for c, t in spine.items()})
    spine, unique, view_ts = SHAPES["naive"]  # and the form Python places in the spine's order itself
    sqls["naive_rows"] = compile_point_in_time_sql(
        fixture_project, fixture_project, "select * from pit_spine", "label_ts",
        _macro_views(unique, warehouse.types[view_ts]), target=warehouse.target,
        spine_columns={c: warehouse.types[t] for c, t in spine.items()}, ordered="row_number")
    return sqls


# --- random histories ------------------------------------------------------------------------------------

offsets = st.integers(min_value=0, max_value=12)  # seconds after BASE: ties and ttl edges are frequent
maybe_int = st.one_of(st.none(), st.integers(-3, 3))
maybe_float = st.one_of(st.none(), st.sampled_from([0.5, -1.25, 2.0, 1e-3]))
customers = st.integers(1, 3)
merchants = st.integers(1, 2)


@st.composite
def histories(draw, unique: bool, tz: bool):
    """(customer rows, merchant rows, pair rows, spine rows) as tuples of small ints; offsets in seconds."""
    def rows(strategy, keys: int, features):
        drawn = draw(st.lists(strategy, max_size=12))
        if unique:  # one row per (keys, ts)
            return list({r[:keys + 1]: r for r in drawn}.values())
        # Duplicates of (keys, ts) with other values: the tie-break decides.
        for row in draw(st.lists(st.sampled_from(drawn), max_size=4)) if drawn else []:
            drawn.append(row[:keys + 1] + draw(features))
        return drawn

    customer = rows(st.tuples(customers, offsets, maybe_int, maybe_float, maybe_int), 1,
                    st.tuples(maybe_int, maybe_float, maybe_int))
    merchant = rows(st.tuples(merchants, offsets, maybe_float), 1, st.tuples(maybe_float))
    pair = rows(st.tuples(customers, merchants, offsets, maybe_int, maybe_int), 2, st.tuples(maybe_int, maybe_int))
    # Half the spine rows aim at a view row: its keys, at its time, at its ttl boundary (+5 for the customer
    # view), just past it, or just before. The rest are random, with keys one wider than the views' (entities
    # with no history) and nulls.
    tz_hours = st.sampled_from([0, 5, -4, 9]) if tz else st.just(0)
    random_rows = st.tuples(st.one_of(st.none(), st.integers(1, 4)), st.one_of(st.none(), st.integers(1, 3)),
                            st.one_of(st.none(), st.integers(-2, 20)), st.integers(0, 1), tz_hours)
    targets = [(c, None, o) for c, o, *_ in customer] + [(c, m, o) for c, m, o, *_ in pair] + [
        (None, m, o) for m, o, _ in merchant]
    aimed = st.builds(
        lambda t, other_c, other_m, d, label, h: (other_c if t[0] is None else t[0],
                                                  other_m if t[1] is None else t[1], t[2] + d, label, h),
        st.sampled_from(targets) if targets else st.nothing(), customers, merchants,
        st.sampled_from([0, 5, 6, -1]), st.integers(0, 1), tz_hours)
    spine = draw(st.lists(st.one_of(random_rows, aimed) if targets else random_rows, min_size=1, max_size=15))
    return customer, merchant, pair, spine


def _ts(offset):
    return None if offset is None else BASE + timedelta(seconds=offset)


def _aware(when: datetime | None, hours: float) -> datetime | None:
    """The same instant as the UTC wall-clock time `when`, written with an offset of `hours`."""
    if when is None:
        return None
    return when.replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=hours)))


def _run_example(warehouse, sql: str, spine_schema: dict, data, view_ts: str = "ts") -> None:
    customer, merchant, pair, spine = data
    view_rows = {
        "pit_customer": [(c, _ts(o), x, s, lb) for c, o, x, s, lb in customer],
        "pit_merchant": [(m, _ts(o), r) for m, o, r in merchant],
        "pit_pair": [(c, m, _ts(o), x, n) for c, m, o, x, n in pair],
    }
    tables = view_tables(view_ts)
    if view_ts == "tstz":  # the same instants, each row written in another zone
        for rows in view_rows.values():
            for i, row in enumerate(rows):
                at = next(j for j, v in enumerate(row) if isinstance(v, datetime))
                rows[i] = row[:at] + (_aware(row[at], OFFSETS[i % len(OFFSETS)]),) + row[at + 1:]
    tz = spine_schema["label_ts"] == "tstz"
    spine_values = []  # what goes in, and what the oracle (and the result) hold
    for c, m, o, label, hours in spine:
        when = _ts(o)
        if tz and when is not None:  # the same instant, written in another zone
            when = when.replace(tzinfo=timezone.utc).astimezone(timezone(timedelta(hours=hours)))
        spine_values.append((c, m, when, label))
    for table, columns in tables.items():
        warehouse.replace_rows(table, columns, [tuple(v.isoformat() if isinstance(v, datetime) and v.tzinfo else v
                                                      for v in row) for row in view_rows[table]])
    warehouse.replace_rows("pit_spine", spine_schema,
                           [(c, m, w.isoformat() if tz and w else w, lb) for c, m, w, lb in spine_values])

    views = [View(v.name, v.keys, v.timestamp, v.ttl_seconds, v.features,
                  [dict(zip(tables[TABLE_OF[v.name]], r)) for r in view_rows[TABLE_OF[v.name]]])
             for v in VIEWS]
    spine_dicts = [dict(zip(spine_schema, r)) for r in spine_values]
    expected = point_in_time_oracle(spine_dicts, list(spine_schema), "label_ts", views)
    for zone in ZONES:  # the session's TimeZone must change nothing
        warehouse.set_timezone(zone)
        got = warehouse.fetch(sql)
        assert got == expected, f"session TimeZone {zone}: " + _diff(got, expected)


def _diff(got, expected) -> str:
    lines = [f"{len(got)} rows, expected {len(expected)}"]
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            lines.append(f"row {i}: got {g}\n        expected {e}")
    return "\n".join(lines[:8])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_point_in_time_join_matches_oracle(warehouse, compiled, shape):
    spine_schema, unique, view_ts = SHAPES[shape]
    for table, columns in {**view_tables(view_ts), "pit_spine": spine_schema}.items():
        warehouse.create(table, columns)
    sql = compiled[shape]

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(histories(unique=unique, tz=spine_schema["label_ts"] == "tstz"))
    def check(data):
        _run_example(warehouse, sql, spine_schema, data, view_ts)

    check()


def test_edges_are_inclusive_and_nulls_stay_null(warehouse, compiled):
    """The named edge cases, explicitly (hypothesis finds them too, but this says which they are)."""
    for table, columns in {**VIEW_TABLES, "pit_spine": SPINE}.items():
        warehouse.create(table, columns)
    customer = [(1, 0, 1, 1.0, 1), (1, 4, None, None, None),  # latest row all null: still the latest
                (2, 3, 7, 0.5, 0), (2, 3, 8, None, 1)]         # duplicate (keys, ts): the greatest (x=8)
    spine = [
        (1, 1, -1, 0, 0),  # before the first row
        (1, 1, 0, 0, 0),   # exactly at a row
        (1, 1, 4, 0, 0),   # at the null row
        (1, 1, 9, 0, 0),   # exactly at the ttl boundary (4 + 5): still served
        (1, 1, 10, 0, 0),  # one second after expiry
        (2, 1, 3, 0, 0),   # the duplicate
        (4, 1, 3, 0, 0),   # no history
    ]
    data = (customer, [(1, 2, 0.5)], [(1, 1, 0, 5, 6), (1, 1, 1, 9, 9)], spine)
    _run_example(warehouse, compiled["naive"], SPINE, data)
    got = warehouse.fetch(compiled["naive"])
    names = ["customer_id", "merchant_id", "label_ts", "label"] + [n for ns in output_names(VIEWS) for n in ns]
    assert names[4:7] == ["customer__x", "spend", "customer__merchant_id"]
    col = {n: i for i, n in enumerate(names)}
    assert [r[col["customer__x"]] for r in got] == [None, 1, None, None, None, 8, None]
    assert [r[col["spend"]] for r in got] == [None, 1.0, None, None, None, None, None]
    assert [r[col["pair__x"]] for r in got] == [None, 5, None, None, None, None, None]  # ttl 0: exact time only
    assert [r[col["risk"]] for r in got] == [None, None, 0.5, 0.5, 0.5, 0.5, 0.5]  # no ttl
    # ordered='row_number': the same rows, each with its spine row number from 0 as a last column
    numbered = warehouse.fetch(compiled["naive_rows"])
    assert sorted(r[-1] for r in numbered) == list(range(len(spine)))
    assert [r[:-1] for r in sorted(numbered, key=lambda r: r[-1])] == got


def test_bad_arguments_name_the_macro_and_value(fixture_project):
    views = _macro_views(False, "timestamp")
    views[0]["ttl_seconds"] = "30d"
    with pytest.raises(RuntimeError, match=r"point_in_time_join: views\[0\] \(customer\): `ttl_seconds` .* got 30d"):
        compile_point_in_time_sql(fixture_project, fixture_project, "select 1", "label_ts", views,
                                  spine_columns=list(SPINE))
    with pytest.raises(RuntimeError, match=r"point_in_time_join: `spine_timestamp` ts is not a column of the spine"):
        compile_point_in_time_sql(fixture_project, fixture_project, "select 1", "ts", _macro_views(False),
                                  spine_columns=list(SPINE))
    with pytest.raises(RuntimeError,
                       match=r"point_in_time_join: ordered must be true, false or 'row_number', got by_key"):
        compile_point_in_time_sql(fixture_project, fixture_project, "select 1", "label_ts", _macro_views(False),
                                  spine_columns=list(SPINE), ordered="by_key")


def test_a_spine_column_named_like_a_feature_is_an_error(fixture_project):
    """Online reads have no spine: a spine column never renames a feature, it is refused (rename it)."""
    views = _macro_views(False, "timestamp")
    with pytest.raises(RuntimeError, match=r"point_in_time_join: the spine column Spend has the name of the "
                                           r"output column of feature customer.spend .*rename the spine column"):
        compile_point_in_time_sql(fixture_project, fixture_project, "select 1", "label_ts", views,
                                  spine_columns=list(SPINE) + ["Spend"])
    with pytest.raises(RuntimeError, match=r"spine column customer__x has the name of the output column of "
                                           r"feature customer.x"):
        compile_point_in_time_sql(fixture_project, fixture_project, "select 1", "label_ts", views,
                                  spine_columns=list(SPINE) + ["customer__x"])


# --- the user-facing macro, in a dbt model --------------------------------------------------------------

def _read_csv(project: Path, name: str) -> list[dict]:
    import csv

    def value(column: str, text: str):
        if text == "":
            return None
        if column.endswith(("_ts", "_at")):
            return datetime.fromisoformat(text)
        return float(text) if "." in text else int(text)

    with open(project / "seeds" / f"{name}.csv") as f:
        return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _expected_fraud_training_set(project: Path) -> tuple[list[str], list[tuple]]:
    labels = _read_csv(project, "fx_labels")
    views = [
        View("cust_spend", ("customer_id",), "event_ts", 2 * 86400, ("spend_7d", "txn_count_7d"),
             _read_csv(project, "fx_customer_spend")),
        View("merch_risk", ("merchant_id",), "event_ts", 36 * 3600, ("txn_count_7d", "chargeback_rate"),
             _read_csv(project, "fx_merchant_risk")),
        View("cust_merch_pair", ("customer_id", "merchant_id"), "event_ts", 3 * 86400,
             ("pair_txn_count",), _read_csv(project, "fx_pair")),
    ]
    spine_columns = list(labels[0])
    names = spine_columns + [n for ns in output_names(views) for n in ns]
    return names, point_in_time_oracle(labels, spine_columns, "label_ts", views)


def _as_numbers(rows):
    return [tuple(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in r)
            for r in rows]


@pytest.mark.parametrize("zone", ZONES[1:])
def test_training_set_model_builds_on_duckdb(fixture_project, tmp_path, zone):
    """`dbt build` in a process whose time zone is `zone` (DuckDB's session TimeZone follows it): merch_risk's
    event times are timestamptz, the labels' timestamp without time zone; the result is the oracle's."""
    import duckdb

    db = tmp_path / "fixture.duckdb"
    _dbt(fixture_project, "build", env={"PIT_DUCKDB_PATH": str(db), "TZ": zone})
    names, expected = _expected_fraud_training_set(fixture_project)
    con = duckdb.connect(str(db), read_only=True)
    try:
        rel = con.sql("select * from main.fraud_training_set")
        assert rel.columns == names
        # A model's table has no order: compare as the spine's order, which is unique here but for a duplicate.
        assert sorted(_as_numbers(rel.fetchall()), key=repr) == sorted(_as_numbers(expected), key=repr)
        spend = con.sql("select * from main.spend_training_set").columns
        assert spend == ["customer_id", "label_ts", "label", "spend_7d", "txn_count_7d"]
    finally:
        con.close()


@pytest.mark.postgres
@pytest.mark.parametrize("zone", ZONES[1:])
def test_training_set_model_builds_on_postgres(fixture_project, zone):
    """As on DuckDB, with dbt's PostgreSQL session in `zone` (libpq sets it from PGTZ)."""
    con = _postgres_connection()
    con.autocommit = True
    schema = f"pit_fixture_{uuid.uuid4().hex[:8]}"
    try:
        _dbt(fixture_project, "build", "--target", "postgres",
             env={"PIT_PG_SCHEMA": schema, "TZ": zone, "PGTZ": zone})
        names, expected = _expected_fraud_training_set(fixture_project)
        with con.cursor() as cur:
            cur.execute(f"select * from {schema}.fraud_training_set")
            assert [d.name for d in cur.description] == names
            got = cur.fetchall()
        assert sorted(_as_numbers(got), key=repr) == sorted(_as_numbers(expected), key=repr)
    finally:
        with con.cursor() as cur:
            cur.execute(f"drop schema if exists {schema} cascade")
        con.close()


def test_view_timestamp_type_is_read_from_a_table_named_as_text(fixture_project, tmp_path):
    """A view given as a table name (text) without `timestamp_type`: its type is read from the warehouse at
    compile time, and a timestamptz event time is compared in UTC in any session time zone."""
    import duckdb

    db = tmp_path / "seeded.duckdb"
    _dbt(fixture_project, "seed", env={"PIT_DUCKDB_PATH": str(db)})
    views = [{"relation": "main.fx_merchant_risk", "name": "merch_risk", "keys": ["merchant_id"],
              "timestamp": "event_ts", "ttl_seconds": 36 * 3600, "features": ["chargeback_rate"]}]
    os.environ["PIT_DUCKDB_PATH"] = str(db)
    try:
        compiled_sql = compile_point_in_time_sql(fixture_project, fixture_project, "select * from main.fx_labels",
                                                 "label_ts", views)
    finally:
        os.environ.pop("PIT_DUCKDB_PATH")
        from featuremart.dbtcore import _release_dbt_duckdb

        _release_dbt_duckdb()  # dbt-duckdb keeps the file open in-process after the compile
    labels = _read_csv(fixture_project, "fx_labels")
    view = View("merch_risk", ("merchant_id",), "event_ts", 36 * 3600, ("chargeback_rate",),
                _read_csv(fixture_project, "fx_merchant_risk"))
    expected = point_in_time_oracle(labels, list(labels[0]), "label_ts", [view])
    con = duckdb.connect(str(db), read_only=True)
    try:
        for zone in ZONES:
            con.execute(f"set TimeZone = '{zone}'")
            assert _as_numbers(con.sql(compiled_sql).fetchall()) == _as_numbers(expected), zone
    finally:
        con.close()

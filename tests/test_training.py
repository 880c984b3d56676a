"""Training sets: the dbt macro's SQL against the brute-force oracle (tests/pit_oracle.py), and the Python API
(`featuremart.training.training_set`) against the reference project's dbt model built with the same macro.

Real dbt, DuckDB always, PostgreSQL when a server answers (skipped, never passed, otherwise). The property
tests compile the macro once per shape and warehouse, with SQL over fixed tables; hypothesis then only
rewrites the tables' rows.
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from featuremart.config import load_dbt_project, load_features_yml, parse_duration
from featuremart.registry import Feature, output_names
from featuremart.training import TrainingSetError, compile_training_set, run_training_set, training_set
from featuremart.warehouse import open_warehouse
from tests.conftest import ROOT, copy_project
from tests.pit_oracle import View, point_in_time_oracle

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


# --- entities and the default ttl are written once, in the dbt vars that the macro reads ----------------------

def test_registry_reads_the_dbt_vars() -> None:
    """`featuremart_entities` / `featuremart_default_ttl` (read by the training_set macro) are what the registry
    reads too: written once, in dbt_project.yml."""
    variables = yaml.safe_load((ROOT / "dbt_project.yml").read_text())["vars"]
    config = load_features_yml(ROOT)
    assert {name: spec["join_keys"] for name, spec in variables["featuremart_entities"].items()} == {
        name: dict(entity.join_keys) for name, entity in config.entities.items()}
    assert parse_duration(variables["featuremart_default_ttl"]) == config.default_ttl


# --- the macro against the oracle, on random histories -----------------------------------------------------

TTL = timedelta(days=30)  # every view below has ttl: 30d in its YAML
BASE = datetime(2024, 3, 10, 23, 59, 50)  # near midnight: a wrong timezone shift changes the day
FEATURES = ["customer_spend.spend_7d", "customer_spend.txn_count_30d", "merchant_risk.chargeback_rate_90d",
            "merchant_risk.txn_count_30d", "customer_merchant_pair.pair_txn_count_30d"]
VIEWS = {  # name: (keys, features with SQL types), in the order the join outputs them
    "customer_spend": (("customer_id",), (("spend_7d", "double precision"), ("txn_count_30d", "bigint"))),
    "merchant_risk": (("merchant_id",), (("chargeback_rate_90d", "double precision"), ("txn_count_30d", "bigint"))),
    "customer_merchant_pair": (("customer_id", "merchant_id"), (("pair_txn_count_30d", "bigint"),)),
}
# The spine has a column named like a feature: that feature comes out as <view>__<feature>.
SPINE_COLUMNS = ["row_id", "customer_id", "merchant_id", "ts", "spend_7d"]
SHAPES = {"naive": "timestamp", "tz": "timestamp with time zone"}
CUSTOMERS, MERCHANTS = ["C1", "C2"], ["M1", "M2"]
ZONES = [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


def _view_time(step: int, second: int) -> datetime:
    # Views change every 15 days (half the ttl), spine times fall on, 1 s before or 1 s after those instants:
    # exactly at a row, exactly at the ttl boundary (30 days = 2 steps), 1 s past it, before any row.
    return BASE + step * timedelta(days=15) + timedelta(seconds=second)


doubles = st.none() | st.integers(-400, 400).map(lambda x: x / 4)
bigints = st.none() | st.integers(-10**6, 10**6)
view_times = st.builds(_view_time, st.integers(0, 4), st.sampled_from([0, 1]))
spine_times = st.builds(_view_time, st.integers(-1, 6), st.sampled_from([-1, 0, 1]))
# One row per (keys, event time) in a view: the reference views carry feature_keys_unique, which the join
# relies on (duplicate rows are the tie-break tests of tests/test_point_in_time.py).
histories = st.fixed_dictionaries({
    "customer_spend": st.dictionaries(st.tuples(st.sampled_from(CUSTOMERS), view_times),
                                      st.tuples(doubles, bigints), max_size=12),
    "merchant_risk": st.dictionaries(st.tuples(st.sampled_from(MERCHANTS), view_times),
                                     st.tuples(doubles, bigints), max_size=8),
    "customer_merchant_pair": st.dictionaries(
        st.tuples(st.sampled_from(CUSTOMERS), st.sampled_from(MERCHANTS), view_times), st.tuples(bigints),
        max_size=10),
    # C9 / M9 have no history at all
    "spine": st.lists(st.tuples(st.sampled_from(CUSTOMERS + ["C9"]), st.sampled_from(MERCHANTS + ["M9"]),
                                spine_times, doubles, st.sampled_from(ZONES)), min_size=1, max_size=15),
})


def _t(step: int, second: int) -> datetime:
    return _view_time(step, second)


# Every edge at least once, whatever hypothesis draws: spine times exactly at a row, exactly ttl after one
# (in), ttl + 1 s after (out), before any row, a latest row holding nulls, an entity with no history.
EDGES = {
    "customer_spend": {("C1", _t(0, 0)): (1.5, 7), ("C1", _t(2, 1)): (None, 8), ("C2", _t(1, 0)): (2.5, None)},
    "merchant_risk": {("M1", _t(0, 0)): (0.25, 3), ("M2", _t(0, 0)): (0.5, 4)},
    "customer_merchant_pair": {("C1", "M1", _t(1, 0)): (5,), ("C2", "M1", _t(1, 0)): (6,)},
    "spine": [("C1", "M1", _t(0, 0), 1.0, ZONES[0]), ("C1", "M1", _t(2, 0), None, ZONES[1]),
              ("C1", "M1", _t(2, 1), 2.0, ZONES[2]), ("C1", "M2", _t(-1, 0), None, ZONES[0]),
              ("C9", "M9", _t(3, 0), 3.0, ZONES[1]), ("C1", "M1", _t(3, 1), None, ZONES[2]),
              ("C2", "M1", _t(3, 0), 4.0, ZONES[0]), ("C2", "M2", _t(3, 1), 4.0, ZONES[0])],
}


@contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _DuckDB:
    """Tables in a private DuckDB file, written through a short-lived read-write connection."""

    def __init__(self, path: Path):
        self.path = path
        self.schema = "main"
        self.env = {"FEATUREMART_TARGET": "dev", "FEATUREMART_DUCKDB_PATH": str(path)}

    def execute(self, warehouse, statements: list[tuple[str, list]]) -> None:
        import duckdb

        warehouse.close()  # the read-only connection and a writer cannot coexist in one process
        con = duckdb.connect(str(self.path))
        try:
            for sql, rows in statements:
                if rows:
                    con.executemany(sql, rows)
                elif "?" not in sql:
                    con.execute(sql)
        finally:
            con.close()

    def cleanup(self) -> None:
        pass


class _Postgres:
    """Tables in a throwaway schema, dropped afterwards."""

    def __init__(self):
        import psycopg2

        from demo.load_postgres import default_dsn

        try:
            self.con = psycopg2.connect(default_dsn(), connect_timeout=3)
        except psycopg2.OperationalError as error:
            pytest.skip(f"no PostgreSQL server reachable ({str(error).strip()})")
        self.con.autocommit = True
        self.schema = f"fm_train_{uuid.uuid4().hex[:8]}"
        self.env = {"FEATUREMART_TARGET": "postgres", "FEATUREMART_PG_SCHEMA": self.schema}
        with self.con.cursor() as cur:
            cur.execute(f'create schema "{self.schema}"')

    def execute(self, warehouse, statements: list[tuple[str, list]]) -> None:
        with self.con.cursor() as cur:
            for sql, rows in statements:
                sql = sql.replace("?", "%s")
                if rows:
                    cur.executemany(sql, rows)
                elif "%s" not in sql:
                    cur.execute(sql)

    def cleanup(self) -> None:
        with self.con.cursor() as cur:
            cur.execute(f'drop schema if exists "{self.schema}" cascade')
        self.con.close()


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def pit(request, tmp_path_factory):
    """(database, project, warehouse, {shape: compiled SQL}): the macro compiled by dbt through the Python
    API, over empty tables named as the reference project's models (no dbt build: refs name tables)."""
    work = tmp_path_factory.mktemp(f"pit_{request.param}")
    db = _DuckDB(work / "featuremart.duckdb") if request.param == "duckdb" else _Postgres()
    project_dir = copy_project(work / "project")
    try:
        with _environ(**db.env):  # only while dbt and the warehouse read the profile: never across the yield
            project = load_dbt_project(project_dir)
            warehouse = open_warehouse(project)
            s = db.schema
            ddl = []
            for name, (keys, features) in VIEWS.items():
                cols = [f"{k} varchar" for k in keys] + ["event_ts timestamp"] + [f"{f} {t}" for f, t in features]
                ddl.append((f"create table {s}.{name} ({', '.join(cols)})", []))
            for shape, ts_type in SHAPES.items():
                ddl.append((f"create table {s}.spine_{shape} (row_id integer, customer_id varchar, "
                            f"merchant_id varchar, ts {ts_type}, spend_7d double precision)", []))
            db.execute(warehouse, ddl)
            compiled = {}
            for shape in SHAPES:
                result, _ = compile_training_set(project, warehouse, f"select * from {s}.spine_{shape}", "ts",
                                                 features=FEATURES)
                compiled[shape] = result.sql
            warehouse.close()
        yield db, project, warehouse, compiled
        warehouse.close()
    finally:
        db.cleanup()


def _oracle_views(data) -> list[View]:
    views = []
    for name, (keys, features) in VIEWS.items():
        rows = []
        for key, values in data[name].items():
            *key_values, ts = key
            rows.append({**dict(zip(keys, key_values)), "event_ts": ts,
                         **{f: v for (f, _), v in zip(features, values)}})
        views.append(View(name, keys, "event_ts", int(TTL.total_seconds()), tuple(f for f, _ in features), rows))
    return views


@pytest.mark.integration
@pytest.mark.parametrize("shape", list(SHAPES))
def test_macro_matches_oracle(pit, shape):
    db, project, warehouse, compiled = pit
    sql = compiled[shape]

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(data=histories)
    @example(data=EDGES)
    def check(data):
        s = db.schema
        statements = []
        for name, (keys, features) in VIEWS.items():
            cols = [*keys, "event_ts", *(f for f, _ in features)]
            rows = [[*key, *values] for key, values in data[name].items()]
            statements += [(f"delete from {s}.{name}", []),
                           (f"insert into {s}.{name} ({', '.join(cols)}) values ({', '.join('?' * len(cols))})",
                            rows)]
        spine = []
        for i, (customer, merchant, ts, value, zone) in enumerate(data["spine"]):
            when = ts.replace(tzinfo=timezone.utc).astimezone(zone) if shape == "tz" else ts
            spine.append({"row_id": i, "customer_id": customer, "merchant_id": merchant, "ts": when,
                          "spend_7d": value})
        statements += [(f"delete from {s}.spine_{shape}", []),
                       (f"insert into {s}.spine_{shape} values (?, ?, ?, ?, ?)",
                        [[r[c] for c in SPINE_COLUMNS] for r in spine])]
        with _environ(**db.env):
            db.execute(warehouse, statements)
            got = run_training_set(warehouse, sql)
            warehouse.close()
        views = _oracle_views(data)
        expected = point_in_time_oracle(spine, SPINE_COLUMNS, "ts", views)
        requested = [Feature(v.name, f, "float") for v in views for f in v.features]
        assert got.column_names == SPINE_COLUMNS + output_names(requested, SPINE_COLUMNS)
        assert "customer_spend__spend_7d" in got.column_names and "merchant_risk__txn_count_30d" in got.column_names
        rows = [tuple(r.values()) for r in got.to_pylist()]
        assert sorted(r[0] for r in rows) == list(range(len(spine))), "every spine row exactly once"
        if db.schema == "main":  # DuckDB reads the spine table in insertion order: the output keeps it
            assert [r[0] for r in rows] == list(range(len(spine)))
        assert sorted(rows, key=lambda r: r[0]) == expected

    check()


# --- the reference project: the dbt model and the Python API ----------------------------------------------

@pytest.fixture(scope="module")
def reference(built_project, tmp_path_factory):
    """A private copy of the built reference project (Python's dbt compile writes under its target/)."""
    dest = tmp_path_factory.mktemp("training_ref") / "project"
    shutil.copytree(built_project, dest, ignore=shutil.ignore_patterns("logs"))
    project = load_dbt_project(dest)  # its DuckDB file: target/featuremart.duckdb, relative to the project
    with open_warehouse(project) as warehouse:
        yield project, warehouse


@pytest.mark.integration
def test_fraud_training_set_model_has_every_label_once(reference):
    _, warehouse = reference
    counts = warehouse.con.sql(
        "select (select count(*) from main.fraud_labels), (select count(*) from main.fraud_training_set), "
        "(select count(distinct txn_id) from main.fraud_training_set)").fetchall()[0]
    assert counts[0] > 0 and counts[0] == counts[1] == counts[2]


@pytest.mark.integration
def test_python_training_set_equals_the_dbt_model_for_every_spine_kind(reference, tmp_path):
    project, warehouse = reference
    model = warehouse.con.sql("select * from main.fraud_training_set").to_arrow_table()
    labels = warehouse.con.sql("select * from main.fraud_labels").to_arrow_table()
    pq.write_table(labels, tmp_path / "labels.parquet")
    spines = {
        "model": "fraud_labels",
        "table": "main.fraud_labels",
        "sql": "select * from main.fraud_labels",
        "parquet": str(tmp_path / "labels.parquet"),
        "arrow": labels,
        "pandas": labels.to_pandas(),
    }
    for kind, spine in spines.items():
        got = training_set(project, warehouse, spine, "label_ts", service="fraud_model")
        assert got.column_names == model.column_names, kind
        if kind == "pandas":  # pandas infers the decimals' precision from the values: same values, other type
            got = got.cast(model.schema)
        assert got.sort_by("txn_id").equals(model.sort_by("txn_id")), kind
    # Python keeps the spine's order (the dbt model passes ordered=false: a table keeps none)
    shuffled = labels.take(pa.array(list(range(labels.num_rows))[::-1]))
    got = training_set(project, warehouse, shuffled, "label_ts", service="fraud_model")
    assert got.column("txn_id").to_pylist() == shuffled.column("txn_id").to_pylist()


@pytest.mark.integration
def test_aware_spine_times_are_compared_in_utc(reference):
    project, warehouse = reference
    naive = warehouse.con.sql("select customer_id, label_ts from main.fraud_labels order by txn_id limit 500"
                              ).to_arrow_table()
    utc = naive.column("label_ts").cast(pa.timestamp("us", tz="UTC"))
    # the same instants, as an aware column in a zone far from UTC
    aware = pa.table({"customer_id": naive.column("customer_id"),
                      "label_ts": utc.cast(pa.timestamp("us", tz="Asia/Kolkata"))})
    features = ["customer_spend.*"]
    a = training_set(project, warehouse, naive, "label_ts", features=features)
    b = training_set(project, warehouse, aware, "label_ts", features=features)
    assert a.drop(["label_ts"]).equals(b.drop(["label_ts"]))
    assert a.column("spend_7d").null_count < a.num_rows


@pytest.mark.integration
def test_bad_requests_are_named(reference):
    project, warehouse = reference
    with pytest.raises(TrainingSetError, match="no feature service 'nope'"):
        training_set(project, warehouse, "fraud_labels", "label_ts", service="nope")
    with pytest.raises(TrainingSetError, match="not both or neither"):
        training_set(project, warehouse, "fraud_labels", "label_ts")
    with pytest.raises(TrainingSetError, match="when_ts"):
        training_set(project, warehouse, "fraud_labels", "when_ts", service="fraud_model")
    with pytest.raises(TrainingSetError, match="no_such_feature|no_such_view"):
        training_set(project, warehouse, "fraud_labels", "label_ts", features=["no_such_view.x"])


@pytest.mark.integration
def test_python_training_set_equals_the_dbt_model_on_postgres(postgres_project, tmp_path):
    project_dir, env = postgres_project
    with _environ(**env):
        project = load_dbt_project(project_dir)
        with open_warehouse(project) as warehouse:
            schema = env["FEATUREMART_PG_SCHEMA"]
            model = warehouse.query(f'select * from "{schema}".fraud_training_set')
            got = training_set(project, warehouse, "fraud_labels", "label_ts", service="fraud_model")
            assert got.column_names == model.column_names
            assert got.num_rows == model.num_rows > 0
            assert got.sort_by("txn_id").to_pylist() == model.sort_by("txn_id").to_pylist()
            sql = training_set(project, warehouse, f'select * from "{schema}".fraud_labels', "label_ts",
                               service="fraud_model")
            assert sql.sort_by("txn_id").to_pylist() == model.sort_by("txn_id").to_pylist()
            with pytest.raises(TrainingSetError, match="needs the DuckDB warehouse"):
                training_set(project, warehouse, pa.table({"customer_id": ["C1"], "ts": [datetime(2024, 1, 1)]}),
                             "ts", service="fraud_model")

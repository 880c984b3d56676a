"""A distributed engine: the same reference project built on Apache Spark (dbt-spark session mode), synced and
trained from, against DuckDB on the same generated data, and the point-in-time oracle properties on Spark. One
SparkSession per test session: xdist runs a file on one worker (--dist loadfile), so the project is built once,
and every test reuses that session (its process in New York, the project built in Kolkata)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime

import pyarrow as pa
import pytest
import redis

from featuremart import FeatureStore
from featuremart.dbtcore import load_dbt_project
from featuremart.training import training_set
from featuremart.warehouse import open_warehouse
from tests import test_point_in_time as pit
from tests.conftest import spark_env
from tests.pit_oracle import compile_point_in_time_sql, output_names, utc_naive
from tests.test_postgres import _same

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Building the project on Spark takes minutes on a busy 2-core machine (docs/warehouses.md): past the suite's 300 s.
pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.timeout(1800)]

#: The test process (Python, and the JVM it starts, which takes its default zone from TZ) runs in New York, the
#: project is built in Kolkata (tests/conftest.py): featuremart's Spark results must not depend on either.
PROCESS_TZ = "America/New_York"
#: Hypothesis examples per shape of the point-in-time join: each costs a few Spark queries (DuckDB's tests run 40).
SPARK_EXAMPLES = 4


@pytest.fixture(scope="module", autouse=True)
def process_zone():
    """This module's process time zone, set before its SparkSession (and JVM) starts, restored afterwards."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = PROCESS_TZ
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ")
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_spark_serves_and_trains_what_duckdb_does(spark_project, project, redis_server, monkeypatch, tmp_path):
    """Sync from Spark and from DuckDB into two Redis databases: every entity of every view reads back the same
    (status, event time, value); the same Redis keys exist; and the training set (the dbt model, and the
    Python API) equals DuckDB's row for row. Then, with no Java (JAVA_HOME at a missing directory), a sync of
    the Spark project says Spark cannot start and why, exits 3 (failed), and publishes nothing."""
    spark_dir, env = spark_project
    client = redis_server.client()
    client.flushall()
    db1 = redis_server.url.removesuffix("/0") + "/1"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with FeatureStore(spark_dir, redis_url=db1) as spark:
        run = spark.sync()
        assert run.status == "success", run
        spark_views = {n: v.version for n, v in spark.registry.views.items()}
        wh = spark.warehouse()
        spark_model = wh.query("select * from featuremart.fraud_training_set")
        spark_python = training_set(load_dbt_project(spark_dir), wh, "fraud_labels", "label_ts",
                                    service="fraud_model")
    for name in env:
        monkeypatch.delenv(name)
    with FeatureStore(project, redis_url=redis_server.url) as duck:  # a private copy: syncing writes state
        assert duck.sync().status == "success"
        assert {n: v.version for n, v in duck.registry.views.items()} == spark_views
        wh = duck.warehouse()
        duck_model = wh.query("select * from main.fraud_training_set")
        entities = {n: wh.query(f"select distinct {', '.join(v.key_names)} from main.{n}").to_pylist()
                    for n, v in duck.registry.views.items()}
        expected = {n: duck.get_online_features(e, features=[f"{n}.*"]) for n, e in entities.items()}
    with FeatureStore.from_url(db1) as spark_read:
        got = {n: spark_read.get_online_features(e, features=[f"{n}.*"]) for n, e in entities.items()}
    diffs = [(n, i, k, g[k], e[k]) for n in expected for i, (g, e) in enumerate(zip(got[n], expected[n]))
             for k in e if (g[k].status, g[k].event_ts) != (e[k].status, e[k].event_ts) or not _same(g[k].value, e[k].value)]
    assert not diffs, diffs[:5]
    assert sum(v.status == "present" for rows in got.values() for row in rows for v in row.values()) > 1000
    feature_keys = [set(c.scan_iter(match="fm:{*}:*:*")) for c in (client, redis.Redis.from_url(db1))]
    assert feature_keys[0] == feature_keys[1] and len(feature_keys[0]) > 500

    assert spark_model.column_names == duck_model.column_names
    for table in (spark_model, spark_python):
        assert table.num_rows == duck_model.num_rows > 0
        _same_rows(table, duck_model)

    no_java = shutil.copytree(spark_dir, tmp_path / "no_java", ignore=shutil.ignore_patterns("logs", "spark"))
    client.flushall()
    env = {**os.environ, **spark_env(no_java), "JAVA_HOME": str(tmp_path / "no-such-java"),
           "FEATUREMART_REDIS_URL": redis_server.url}
    proc = subprocess.run([sys.executable, "-m", "featuremart.cli", "sync", "--project-dir", str(no_java)],
                          cwd=no_java, env=env, capture_output=True, text=True, timeout=240)
    said = " ".join((proc.stdout + proc.stderr).split())  # the run's table wraps long notes
    assert proc.returncode == 3, said  # a failed sync: the warehouse could not be used (docs/operations.md)
    assert "cannot start Spark for target 'spark'" in said and "Java 17" in said, said
    # the error is printed whole below the run's table, never folded inside a path
    assert f"JAVA_HOME={tmp_path / 'no-such-java'}" in proc.stdout + proc.stderr, said
    assert client.dbsize() == 0


def _same_rows(got: pa.Table, expected: pa.Table) -> None:
    """Row for row, by txn_id: timestamps as UTC wall-clock times, floats to the last bits (sums in another order)."""
    rows = [sorted(t.to_pylist(), key=lambda r: r["txn_id"]) for t in (got, expected)]
    for g, e in zip(*rows):
        assert g.keys() == e.keys()
        bad = {k: (g[k], e[k]) for k in e if not _same(_naive(g[k]), _naive(e[k]))}
        assert not bad, (e["txn_id"], bad)


def _naive(value):
    return value.replace(tzinfo=None) if isinstance(value, datetime) and value.tzinfo else value



# --- the point-in-time join on Spark: the oracle properties of tests/test_point_in_time.py, fewer examples ---

class SparkPitWarehouse:
    """The oracle tests' tables as temporary views of the project's SparkSession (the process has one), its
    `timestamp_ntz` for a timestamp without time zone and `timestamp` (an instant) for one with."""

    target = "spark"
    types = {"int": "int", "float": "double", "ts": "timestamp_ntz", "tstz": "timestamp"}

    def __init__(self, session):
        self.session = session
        self.schemas: dict[str, str] = {}

    def set_timezone(self, zone: str) -> None:
        self.session.conf.set("spark.sql.session.timeZone", zone)

    def create(self, table: str, columns: dict[str, str]) -> None:
        self.schemas[table] = ", ".join(f"{c} {self.types[t]}" for c, t in columns.items())
        self.replace_rows(table, columns, [])

    def replace_rows(self, table: str, columns: dict[str, str], rows: list[tuple]) -> None:
        # zone-aware values come as ISO text (as for DuckDB's and PostgreSQL's casts): an aware datetime is an instant
        rows = [tuple(datetime.fromisoformat(v) if t == "tstz" and v is not None else v
                      for v, t in zip(row, columns.values())) for row in rows]
        self.session.createDataFrame(rows, self.schemas[table]).createOrReplaceTempView(table)

    def fetch(self, sql: str) -> list[tuple]:
        """The rows in a fixed order: a Spark result is ordered by the spine's columns, not its read order."""
        rows = [tuple(r.values()) for r in self.session.sql(sql).toArrow().to_pylist()]
        return sorted(rows, key=_row_key)

    def close(self) -> None:
        self.set_timezone("UTC")
        for table in self.schemas:
            self.session.catalog.dropTempView(table)


def _row_key(row: tuple) -> str:
    return repr(tuple(utc_naive(v) if isinstance(v, datetime) else v for v in row))


@pytest.fixture(scope="module")
def spark_pit(spark_project, tmp_path_factory):
    """(Spark warehouse, DuckDB warehouse, shape -> (Spark SQL, DuckDB SQL)): the macro compiled by dbt for both
    targets once; on Spark dbt-spark's session method joins the SparkSession featuremart started."""
    spark_dir, env = spark_project
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        session = open_warehouse(load_dbt_project(spark_dir)).session
    fixture = pit._write_fixture_project(tmp_path_factory.mktemp("pit_fixture_spark"))
    pit._dbt(fixture, "deps")
    spark, duck = SparkPitWarehouse(session), pit.DuckDBWarehouse()
    sqls = {shape: tuple(compile_point_in_time_sql(fixture, fixture, "select * from pit_spine", "label_ts",
                                                   pit._macro_views(unique, wh.types[view_ts]), target=wh.target,
                                                   spine_columns={c: wh.types[t] for c, t in spine.items()})
                         for wh in (spark, duck))
            for shape, (spine, unique, view_ts) in pit.SHAPES.items()}
    yield spark, duck, sqls
    spark.close()
    duck.close()


class _Both:
    """The Spark and DuckDB warehouses as one for pit._run_example: rows go to both; the rows Spark returns (under
    each session zone the example asks for) must equal DuckDB's, and the oracle's (sorted alike)."""

    def __init__(self, spark, duck, spark_sql: str, duck_sql: str):
        self.spark, self.duck, self.sqls = spark, duck, {spark_sql: duck_sql}

    def set_timezone(self, zone: str) -> None:
        self.spark.set_timezone(zone)
        self.duck.set_timezone(zone)

    def replace_rows(self, table: str, columns: dict[str, str], rows: list[tuple]) -> None:
        self.spark.replace_rows(table, columns, rows)
        self.duck.replace_rows(table, columns, rows)

    def fetch(self, sql: str) -> list[tuple]:
        got = self.spark.fetch(sql)
        duck = sorted(self.duck.fetch(self.sqls[sql]), key=_row_key)
        assert got == duck, "Spark differs from DuckDB: " + pit._diff(got, duck)
        return _Sorted(got)


class _Sorted(list):
    """Rows compared with the oracle's as a multiset, in the order `fetch` gives (_row_key)."""

    def __eq__(self, expected):
        return list(self) == sorted(expected, key=_row_key)

    __hash__ = None


@pytest.mark.parametrize("shape", list(pit.SHAPES))
def test_point_in_time_join_on_spark_matches_oracle_and_duckdb(spark_pit, shape):
    """Random histories with ties, ttl edges (the customer view's 5 s, the pair view's 0 s) and composite keys: the
    SQL dbt renders for Spark equals DuckDB's result and the oracle's, in a New York process whose Spark session
    is set to UTC and then to a zone hypothesis picks (a spine or view time of type `timestamp` is an instant)."""
    spark, duck, sqls = spark_pit
    spine_schema, unique, view_ts = pit.SHAPES[shape]
    for table, columns in {**pit.view_tables(view_ts), "pit_spine": spine_schema}.items():
        spark.create(table, columns)
        duck.create(table, columns)
    both = _Both(spark, duck, *sqls[shape])

    @settings(max_examples=SPARK_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(pit.histories(unique=unique, tz=spine_schema["label_ts"] == "tstz"), st.sampled_from(pit.ZONES[1:]))
    def check(data, zone):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pit, "ZONES", ["UTC", zone])
            pit._run_example(both, sqls[shape][0], spine_schema, data, view_ts)

    check()


def test_point_in_time_edges_on_spark(spark_pit):
    """tests/test_point_in_time.py's named edges on Spark, in every zone: inclusive ttl edge, one second past it,
    ttl 0 (exact time only), no ttl, duplicate (keys, ts), the latest row all null, an entity with no history."""
    spark, duck, sqls = spark_pit
    for table, columns in {**pit.VIEW_TABLES, "pit_spine": pit.SPINE}.items():
        spark.create(table, columns)
        duck.create(table, columns)
    customer = [(1, 0, 1, 1.0, 1), (1, 4, None, None, None), (2, 3, 7, 0.5, 0), (2, 3, 8, None, 1)]
    spine = [(1, 1, -1, 0, 0), (1, 1, 0, 0, 0), (1, 1, 4, 0, 0), (1, 1, 9, 0, 0), (1, 1, 10, 0, 0),
             (2, 1, 3, 0, 0), (4, 1, 3, 0, 0)]
    data = (customer, [(1, 2, 0.5)], [(1, 1, 0, 5, 6), (1, 1, 1, 9, 9)], spine)
    pit._run_example(_Both(spark, duck, *sqls["naive"]), sqls["naive"][0], pit.SPINE, data)
    names = list(pit.SPINE) + [n for ns in output_names(pit.VIEWS) for n in ns]
    got = {(r[0], r[2]): dict(zip(names, r)) for r in spark.fetch(sqls["naive"][0])}
    at = [(c, pit._ts(o)) for c, _, o, _, _ in spine]
    assert [got[k]["customer__x"] for k in at] == [None, 1, None, None, None, 8, None]
    assert [got[k]["pair__x"] for k in at] == [None, 5, None, None, None, None, None]
    assert [got[k]["risk"] for k in at] == [None, None, 0.5, 0.5, 0.5, 0.5, 0.5]


def test_a_table_spark_cannot_read_fails_the_sync_naming_the_view(spark_project, redis_server, monkeypatch):
    """A feature view whose table files are no longer Parquet (a table format Spark cannot read): the sync fails
    with one message naming the view, its table and Spark's reason (no traceback), publishes nothing, and what was
    served before is still served, value for value. The files are put back afterwards."""
    spark_dir, env = spark_project
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = redis_server.url.removesuffix("/0") + "/2"
    client = redis.Redis.from_url(url)  # (a URL's database wins over from_url's db=)
    client.flushdb()
    with FeatureStore(spark_dir, redis_url=url) as store:
        view = sorted((v for v in store.registry.views.values() if v.online), key=lambda v: v.name)[0]
        first = store.sync()
        served = {k: client.get(k) for k in client.scan_iter(match="fm:{*}:*:*")}
        assert first.status == "success" and len(served) > 100, (first, client.dbsize(), list(client.scan_iter())[:5])
        files = [p for p in (spark_dir / "target" / "spark" / "warehouse").rglob("*.parquet")
                 if view.relation.identifier in p.parts]
        kept = {p: p.read_bytes() for p in files}
        assert kept, f"no Parquet files for {view.relation}"
        try:
            for path in files:
                path.write_bytes(b"not a parquet file\n")
            run = store.sync()
        finally:
            for path, data in kept.items():
                path.write_bytes(data)
    assert run.status == "failed", run
    assert run.error.startswith("Spark (target 'spark') refused a query: "), run.error
    assert run.error.endswith(f"(reading view {view.name}, table {view.relation})"), run.error
    assert "Traceback" not in run.error and "\n" not in run.error, run.error
    assert {k: client.get(k) for k in client.scan_iter(match="fm:{*}:*:*")} == served

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
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from featuremart import FeatureStore
from featuremart.dbtcore import load_dbt_project
from featuremart.errors import ValidationError, WarehouseError
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


#: An ordered result of every type a stream must keep as toArrow gives it: UTC instants (before 1900 too),
#: timestamp_ntz, decimals, lists with nulls, a bare null (void, which Parquet leaves out), names that differ in case.
ORDERED_RESULT = """select id as n, -id as N, rand(7) as r, timestamp_seconds(id * 1000000 - 2500000000) as ts,
    cast(timestamp_seconds(id * 7) as timestamp_ntz) as ntz, cast(rand(7) as decimal(38, 18)) as d,
    array(rand(7), null) as xs, case when id % 3 = 0 then null else cast(id as string) end as s, null as nothing
from range(5000) order by 3 desc, 1"""


def test_a_spark_stream_keeps_order_and_types_and_leaves_no_files(spark_project, monkeypatch):
    """A result Spark writes as several part files (8 shuffle partitions, none coalesced) streams back in the
    query's order, batch by batch, equal in values and types to Spark's Arrow collect; its directory under
    target/spark/results/ is gone once the stream is read, once a stream is closed half read, and after a query
    that fails while Spark writes it (WarehouseError naming the target)."""
    spark_dir, env = spark_project
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    warehouse = open_warehouse(load_dbt_project(spark_dir))
    session, results = warehouse.session, spark_dir / "target" / "spark" / "results"
    conf = {"spark.sql.shuffle.partitions": "8", "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    before = {key: session.conf.get(key) for key in conf}
    try:
        for key, value in conf.items():
            session.conf.set(key, value)
        stream = warehouse.stream(ORDERED_RESULT, batch_rows=300)
        [written] = results.iterdir()
        assert len(list(written.glob("part-*.parquet"))) > 1
        batches = list(stream)
        assert not written.exists()
        expected = session.sql(ORDERED_RESULT).toArrow()
        got = pa.Table.from_batches(batches)
        assert max(b.num_rows for b in batches) == 300 and got.num_rows == 5000
        assert got.schema == expected.schema, (got.schema, expected.schema)
        assert got.column("r").to_pylist() == sorted(got.column("r").to_pylist(), reverse=True)
        assert got.equals(expected)

        half = warehouse.stream(ORDERED_RESULT, batch_rows=300)
        next(half)
        half.close()
        assert list(results.iterdir()) == []

        with pytest.raises(WarehouseError) as refused:
            warehouse.stream("select id, case when id = 4321 then raise_error('no such luck') end as x "
                             "from range(5000)")
        assert str(refused.value).startswith("Spark (target 'spark') refused a query: "), refused.value
        assert "no such luck" in str(refused.value), refused.value
        assert list(results.iterdir()) == []
    finally:
        for key, value in before.items():
            session.conf.set(key, value)


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


# --- types Spark maps differently: a view built by dbt in this process (it joins the one SparkSession) ---

#: decimal(38, 18) values with more digits than a double holds, a null; timestamp_ntz values before the epoch, at
#: a microsecond before midnight, inside New York's DST gap (the process's zone must not matter).
TYPED_ROWS = [("t1", "12345678901234567890.123456789012345678", "1969-12-31 23:59:59.000001"),
              ("t2", "3.141592653589793238", "2026-03-08 02:30:00"),
              ("t3", "-0.000000000000000001", "2026-01-01 23:59:59.999999"),
              ("t4", None, None)]
TYPED_MODEL = """{%- set ntz = 'timestamp_ntz' if target.type == 'spark' else 'timestamp' -%}
{%- for id, amount, seen in rows %}
select cast('{{ id }}' as string) as customer_id, cast('2026-01-01 00:00:00' as timestamp) as event_ts,
    cast({{ "'" ~ amount ~ "'" if amount else 'null' }} as decimal(38, 18)) as amount_exact,
    cast({{ "'" ~ seen ~ "'" if seen else 'null' }} as {{ ntz }}) as seen_at
{{ 'union all' if not loop.last }}
{%- endfor %}
"""
TYPED_YML = """version: 2
models:
  - name: {name}
    description: One row per customer (a test of warehouse types).
    config:
      meta:
        featuremart: {{entity: customer, timestamp: event_ts, ttl: 36500d}}
"""
#: Types featuremart cannot serve at all: a map, a struct, bytes.
UNMAPPABLE_MODEL = """select cast('t1' as string) as customer_id, cast('2026-01-01 00:00:00' as timestamp) as event_ts,
    map('a', 1) as tags, named_struct('x', 1.5) as point, cast('ab' as binary) as blob, 2.5 as fine
"""


def _typed_model(project, name: str = "fm_typed", sql: str | None = None) -> None:
    rows = "{%- set rows = " + repr([list(r) for r in TYPED_ROWS]).replace("None", "none") + " -%}\n"
    (project / "models" / "features" / f"{name}.sql").write_text(sql or rows + TYPED_MODEL)
    (project / "models" / "features" / f"{name}.yml").write_text(TYPED_YML.format(name=name))


def _dbt_here(project, *args: str):
    """dbt in this process: dbt-spark's session method joins the SparkSession featuremart started (a dbt process
    beside it would start a second JVM on the same embedded Derby metastore, which Derby refuses)."""
    from dbt.cli.main import dbtRunner

    errors: list[str] = []
    result = dbtRunner(callbacks=[lambda e: errors.append(e.info.msg) if e.info.level == "error" else None]).invoke(
        [*args, "--project-dir", str(project), "--profiles-dir", str(project), "--log-level", "none",
         "--no-send-anonymous-usage-stats"])
    assert result.success, "\n".join(errors) or str(result.exception)
    return result.result


@pytest.fixture
def spark_copy(spark_project, tmp_path, monkeypatch):
    """A copy of the Spark-built project's files that reads and writes the same Spark warehouse and metastore
    (the process's one SparkSession), its new models dropped afterwards."""
    spark_dir, env = spark_project
    copy = shutil.copytree(spark_dir, tmp_path / "spark_copy", ignore=shutil.ignore_patterns("logs", "spark"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(copy)
    made: list[str] = []
    yield copy, made
    session = open_warehouse(load_dbt_project(spark_dir)).session
    for name in made:
        session.sql(f"drop table if exists featuremart.{name}")


def test_decimal_and_timestamp_ntz_features_from_spark_serve_what_duckdb_serves(spark_copy, project,
                                                                                  redis_server):
    """A decimal(38, 18) feature (more digits than a double holds) and a timestamp_ntz feature column, built by
    dbt on Spark and on DuckDB from the same literals and synced from each: every value reads back the same, and
    as docs/warehouses.md promises: the decimal as the double nearest it, the timestamp_ntz as that UTC time."""
    from datetime import timezone
    from decimal import Decimal

    spark_dir, made = spark_copy
    _typed_model(spark_dir)
    made.append("fm_typed")
    _dbt_here(spark_dir, "build", "--select", "fm_typed")
    _typed_model(project)
    subprocess.run([str(Path(sys.executable).with_name("dbt")), "build", "--select", "fm_typed",
                    "--project-dir", str(project), "--profiles-dir", str(project)], cwd=project, check=True,
                   capture_output=True, env={**os.environ, "FEATUREMART_TARGET": "dev"})
    urls = [redis_server.url.removesuffix("/0") + f"/{db}" for db in (3, 4)]
    for url in urls:
        redis.Redis.from_url(url).flushdb()
    entities = [{"customer_id": r[0]} for r in TYPED_ROWS]
    served = []
    for directory, target, url in zip((spark_dir, project), ("spark", "dev"), urls):
        with FeatureStore(directory, redis_url=url, target=target) as store:
            run = store.sync(select=["fm_typed"])
            assert run.status == "success", run
            assert {f.name: f.dtype for f in store.registry.view("fm_typed").features} == {
                "amount_exact": "float", "seen_at": "timestamp"}
        with FeatureStore.from_url(url) as reader:
            served.append(reader.get_online_features(entities, features=["fm_typed.*"]))
    spark, duck = ([{k: (v.status, v.value) for k, v in row.items()} for row in rows] for rows in served)
    expected = [{"amount_exact": ("present", float(Decimal(amount)) if amount else None),
                 "seen_at": ("present", datetime.fromisoformat(seen).replace(tzinfo=timezone.utc) if seen else None)}
                for _, amount, seen in TYPED_ROWS]
    assert spark == expected, (spark, expected)
    assert duck == expected, (duck, expected)

    # a map, a struct and bytes, which featuremart cannot serve: the sync refuses the view, naming the model,
    # each column, its Spark type and the fix, and publishes nothing
    client = redis.Redis.from_url(urls[0])
    published = {k: client.get(k) for k in client.scan_iter(match="fm:{*}:*:*")}
    assert published
    _typed_model(spark_dir, "fm_unmappable", UNMAPPABLE_MODEL)
    made.append("fm_unmappable")
    _dbt_here(spark_dir, "build", "--select", "fm_unmappable")
    with FeatureStore(spark_dir, redis_url=urls[0]) as store, pytest.raises(ValidationError) as refused:
        store.sync(select=["fm_unmappable"])
    lines = [p for p in refused.value.problems if "model fm_unmappable:" in p]
    assert [line.split("column ")[1].split(" has type")[0] for line in lines] == ["'tags'", "'point'", "'blob'"], lines
    for line, spark_type in zip(lines, ("map<string,int>", "struct<x:decimal(2,1)>", "binary")):
        assert f"has type {spark_type}, which featuremart cannot serve; cast it in " in line, line
        assert "or opt it out with config: {meta: {featuremart: {feature: false}}}" in line and "\n" not in line
    assert {k: client.get(k) for k in client.scan_iter(match="fm:{*}:*:*")} == published
    assert not [k for k in client.scan_iter() if b"fm_unmappable" in k]


# --- window_features on Spark: tests/test_window_features.py's oracle, fewer examples ---

#: Random event streams per shape of the window-feature oracle (each example is a table write and a Spark query;
#: DuckDB and PostgreSQL run 60).
SPARK_WINDOW_EXAMPLES = 3


@pytest.fixture(scope="module")
def spark_windows(spark_project, tmp_path_factory):
    """(SparkSession, {shape: SQL}): window_features compiled for Spark by dbt in this process, for each shape of
    tests/test_window_features.py, over a real table `<schema>.events` (Parquet, as dbt-spark makes them) with
    the events' time both as timestamp_ntz (`ts`) and as Spark's `timestamp`, an instant (`ts_tz`)."""
    from tests import test_window_features as wf
    from tests.window_oracle import make_project, sources_yml

    spark_dir, env = spark_project
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        session = open_warehouse(load_dbt_project(spark_dir)).session
        schema = "fm_wf_spark"
        project = make_project(tmp_path_factory.mktemp("wf_spark"), "spark", pg_schema=schema)
        session.sql(f"create database if not exists {schema}")
        session.sql(f"create table {schema}.events ({WINDOW_EVENTS}) using parquet")
        (project / "models" / "_sources.yml").write_text(sources_yml(schema, ["events"]))
        for shape, (grain, timestamp, windows) in wf.SHAPES.items():
            (project / "models" / f"{shape}.sql").write_text(
                wf._macro_call(grain, timestamp, windows, False, "source('raw', 'events')"))
        mp.chdir(project)
        _dbt_here(project, "compile")
        compiled = {shape: (project / "target" / "compiled" / "featuremart" / "models" / f"{shape}.sql").read_text()
                    for shape in wf.SHAPES}
    yield session, schema, project, compiled
    session.conf.set("spark.sql.session.timeZone", "UTC")
    session.sql(f"drop database if exists {schema} cascade")


WINDOW_EVENTS = ("stream int, entity string, ts timestamp_ntz, ts_tz timestamp, amount double, status string, "
                 "merchant string")


def _load_events(session, schema: str, events: list[dict]) -> None:
    """The events into `<schema>.events`: `ts` as wall-clock UTC time, `ts_tz` as the same UTC instant."""
    from datetime import timezone

    rows = [(e["stream"], e["entity"], e["ts"], e["ts"] and e["ts"].replace(tzinfo=timezone.utc), e["amount"],
             e["status"], e["merchant"]) for e in events]
    session.createDataFrame(rows, WINDOW_EVENTS).write.insertInto(f"{schema}.events", overwrite=True)


def _spark_rows(session, sql: str) -> tuple[list[str], list[tuple]]:
    """A Spark query's columns and rows, times as naive UTC (Spark's `timestamp` comes back zone-aware)."""
    table = session.sql(sql).toArrow()
    return table.column_names, [tuple(utc_naive(v) if isinstance(v, datetime) else v for v in row.values())
                                for row in table.to_pylist()]


@pytest.mark.parametrize("shape", ["daily", "hourly", "per_event"])
def test_window_features_on_spark_match_the_oracle(spark_windows, shape):
    """Random event streams (window edges, gaps, same-instant events, nulls in values, keys, times and filters,
    composite keys): every row and value window_features computes on Spark equals the brute-force oracle's, with
    the Spark session's time zone 3:30 off UTC (the `hourly` shape reads Spark's `timestamp`, an instant)."""
    from tests import test_window_features as wf

    session, schema, _, compiled = spark_windows
    grain, _timestamp, windows = wf.SHAPES[shape]

    @settings(max_examples=SPARK_WINDOW_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)
    @given(events=wf._events)
    def check(events):
        _load_events(session, schema, events)
        session.conf.set("spark.sql.session.timeZone", wf.SESSION_ZONE)
        try:
            columns, rows = _spark_rows(session, compiled[shape])
        finally:
            session.conf.set("spark.sql.session.timeZone", "UTC")
        wf._assert_matches(wf._oracle(events, grain, windows), columns, rows, f"spark/{shape}")

    check()


#: The incremental shapes Spark takes (grain '1d' and '1h'; the 1h one reads Spark's `timestamp`, an instant) and
#: the days of events their scenario loads (fewer than DuckDB's 12: each `dbt run` costs Spark seconds).
SPARK_INCREMENTAL_SHAPES = {"daily": ("1d", "ts", ["1d", "7d"]), "hourly_tz": ("1h", "ts_tz", ["1h", "1d"])}
SPARK_INCREMENTAL_DAYS = 7


def test_incremental_window_features_on_spark_equal_a_full_refresh(spark_windows):
    """The incremental scenario of tests/test_window_features.py on Spark (insert_overwrite of the partitions of
    event_ts): after every `dbt run`, with late events inside the lookback, each table holds exactly the
    oracle's rows (a full build's), and an event beyond the lookback waits for `--full-refresh`. The session's
    time zone is 3:30 off UTC throughout, so the cutoff's literals must not depend on it."""
    from tests import test_window_features as wf

    session, schema, project, _ = spark_windows
    models = [f"incremental_{shape}" for shape in SPARK_INCREMENTAL_SHAPES]
    for shape, (grain, timestamp, windows) in SPARK_INCREMENTAL_SHAPES.items():
        (project / "models" / f"incremental_{shape}.sql").write_text(
            wf._macro_call(grain, timestamp, windows, True, "source('raw', 'events')"))

    def check(events: list[dict], label: str) -> None:
        for shape, (grain, _, windows) in SPARK_INCREMENTAL_SHAPES.items():
            columns, rows = _spark_rows(session, f"select * from {schema}.incremental_{shape}")
            wf._assert_matches(wf._oracle(events, grain, windows), columns, rows, f"spark/{shape}, {label}")

    session.conf.set("spark.sql.session.timeZone", wf.SESSION_ZONE)
    try:
        wf.incremental_scenario(lambda events: _load_events(session, schema, events),
                                lambda *args: _dbt_here(project, "run", "--select", *models, *args), check,
                                days=SPARK_INCREMENTAL_DAYS)
    finally:
        session.conf.set("spark.sql.session.timeZone", "UTC")
        for model in models:
            (project / "models" / f"{model}.sql").unlink()
            session.sql(f"drop table if exists {schema}.{model}")


@pytest.mark.parametrize("grain", ["event", "1m"])
def test_incremental_window_features_finer_than_an_hour_on_spark_is_a_compile_error(spark_windows, grain):
    """An incremental table on Spark is partitioned by its event_ts: grain 'event' or '1m' would make a partition
    per instant or minute. The model is refused when dbt parses it, by a message naming the model, the argument
    and the fix, before any SQL runs."""
    from dbt.cli.main import dbtRunner

    from tests import test_window_features as wf

    session, schema, project, _ = spark_windows
    model = project / "models" / "incremental_fine.sql"
    model.write_text(wf._macro_call(grain, "ts", ["1h", "1d"], True, "source('raw', 'events')"))
    try:
        result = dbtRunner().invoke(["compile", "--select", "incremental_fine", "--project-dir", str(project),
                                     "--profiles-dir", str(project), "--log-level", "none"])
    finally:
        model.unlink()
    assert not result.success
    said = " ".join(str(result.exception).split())
    assert f"window_features in model incremental_fine: `incremental` is true (the default) with grain \"{grain}\", " \
           "but on Spark an incremental window_features table is partitioned by its `event_ts`" in said, said
    assert "use grain='1h' or '1d', or pass incremental=false" in said, said
    tables = [t.tableName for t in session.sql(f"show tables in {schema}").collect() if not t.isTemporary]
    assert tables == ["events"], tables  # nothing was built (temporary views of other tests are listed too)


# --- the served-feature log on Spark: read in place, expanded, and the skew test on it ---

def test_served_log_is_read_in_place_on_spark_and_the_skew_test_runs_on_it(spark_copy, redis_server, tmp_path,
                                                                            monkeypatch):
    """Reads of the fraud service logged to Parquet files; `dbt build --select flywheel` on Spark reads them in
    place (featuremart.served_log): served_features holds every logged record once, value for value as a Python
    expansion of the files gives it; the served_skew test runs on it and passes (the logged values are what Spark
    computes); training from logs takes the logged values."""
    from featuremart.servedlog import FILE_COLUMNS, LOG_COLUMNS, export_logs
    from tests.test_flywheel import as_served, logged_rows, serve_labels

    spark_dir, made = spark_copy
    made.append("featuremart_served_log_files")
    url = redis_server.url.removesuffix("/0") + "/5"
    redis.Redis.from_url(url).flushdb()
    log_dir = tmp_path / "served_log"
    monkeypatch.setenv("FEATUREMART_SERVED_LOG_DIR", str(log_dir))
    with FeatureStore(spark_dir, redis_url=url) as store:
        assert store.sync().status == "success"
        session = store.warehouse().session
        txns = [tuple(r) for r in session.sql("select txn_id, customer_id, merchant_id from featuremart.fraud_labels "
                                              "order by txn_id limit 6").collect()]
        log = store.log_served()
        served = serve_labels(store, txns)
        assert log.flush()
    assert export_logs(log_dir).rows == 8 * len(txns)  # dbt reads the Parquet files: export first
    results = _dbt_here(spark_dir, "build", "--select", "flywheel", "--no-partial-parse")
    skew_tests = [r for r in results if r.node.name.startswith("featuremart_served_skew")]
    assert [r.status for r in skew_tests] == ["pass"], [(r.node.name, r.status, r.message) for r in skew_tests]
    assert [c.name for c in session.table("featuremart.featuremart_served_log_files").schema] == [
        n for n, _ in FILE_COLUMNS]
    table = session.table("featuremart.served_features")
    assert table.columns == [n for n, _ in LOG_COLUMNS]
    key = ("request_id", "feature")
    got = sorted((r.asDict() for r in table.collect()), key=lambda r: tuple(r[k] for k in key))
    oracle = sorted(logged_rows(log_dir), key=lambda r: tuple(r[k] for k in key))
    assert len(got) == len(oracle) == 8 * len(txns)
    for g, want in zip(got, oracle):
        assert {**g, "value": as_served(g["value"], want["value"])} == want
    logged = {r["txn_id"]: r for r in session.table("featuremart.fraud_training_from_logs").collect()}
    for txn, *_ in txns:
        if txn in logged:  # a label that has arrived
            row = logged[txn]
            assert row["logged_request_id"] == txn
            assert all(row[f"{name}__source"] == "logged" and row[name] == served[txn][name].value
                       for name in served[txn])

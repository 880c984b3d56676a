"""Training sets: the dbt macro's SQL against the brute-force oracle (tests/pit_oracle.py), the Python API
(`featuremart.training.training_set`) against the reference project's dbt model built with the same macro, and
training sets against what the online store served (train/serve consistency).

Real dbt, DuckDB always, PostgreSQL when a server answers (skipped, never passed, otherwise). The property
tests compile the macro once per shape and warehouse, with SQL over fixed tables; hypothesis then only
rewrites the tables' rows, and every example is read under several session time zones. The consistency test
runs the CLI in processes whose TZ differs: the result must not depend on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from featuremart import FeatureStore
from featuremart.config import load_dbt_project, load_features_yml, parse_duration
from featuremart.registry import Feature, output_names
from featuremart.training import TrainingSetError, compile_training_set, run_training_set, training_set
from featuremart.warehouse import open_warehouse
from tests.conftest import ROOT, copy_project, dbt
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
# The spine's own columns never rename a feature (a spine column named like an output is an error).
SPINE_COLUMNS = ["row_id", "customer_id", "merchant_id", "ts", "amount"]
SHAPES = {"naive": "timestamp", "tz": "timestamp with time zone"}  # the spine's timestamp
#: Session time zones every result is read under (DuckDB: SET TimeZone; PostgreSQL: SET TIME ZONE).
SESSION_ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
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


@pytest.fixture(scope="module", params=[("duckdb", "timestamp"), ("duckdb", "timestamptz"),
                                        ("postgres", "timestamp"), ("postgres", "timestamptz")],
                ids=lambda p: "-".join(p))
def pit(request, tmp_path_factory):
    """(database, project, warehouse, {shape: compiled SQL}, views' event-time type): the macro compiled by
    dbt through the Python API, over empty tables named as the reference project's models (no dbt build:
    refs name tables). The views' event times are `timestamp` or `timestamptz`."""
    kind, view_ts = request.param
    work = tmp_path_factory.mktemp(f"pit_{kind}_{view_ts}")
    db = _DuckDB(work / "featuremart.duckdb") if kind == "duckdb" else _Postgres()
    project_dir = copy_project(work / "project")
    try:
        with _environ(**db.env):  # only while dbt and the warehouse read the profile: never across the yield
            project = load_dbt_project(project_dir)
            warehouse = open_warehouse(project)
            s = db.schema
            ddl = []
            for name, (keys, features) in VIEWS.items():
                cols = [f"{k} varchar" for k in keys] + [f"event_ts {view_ts}"] + [f"{f} {t}" for f, t in features]
                ddl.append((f"create table {s}.{name} ({', '.join(cols)})", []))
            for shape, ts_type in SHAPES.items():
                ddl.append((f"create table {s}.spine_{shape} (row_id integer, customer_id varchar, "
                            f"merchant_id varchar, ts {ts_type}, amount double precision)", []))
            db.execute(warehouse, ddl)
            compiled = {}
            for shape in SHAPES:
                result, _ = compile_training_set(project, warehouse, f"select * from {s}.spine_{shape}", "ts",
                                                 features=FEATURES)
                compiled[shape] = result.sql
            warehouse.close()
        yield db, project, warehouse, compiled, view_ts
        warehouse.close()
    finally:
        db.cleanup()


def _view_event_time(ts: datetime, i: int, view_ts: str) -> datetime:
    """A view row's event time as inserted: a timestamptz one written in one of ZONES (the same instant)."""
    return ts.replace(tzinfo=timezone.utc).astimezone(ZONES[i % len(ZONES)]) if view_ts == "timestamptz" else ts


def _set_session_zone(warehouse, zone: str) -> None:
    if hasattr(warehouse, "handle"):  # PostgreSQL through dbt's adapter: keep the setting past its rollbacks
        with warehouse.handle.cursor() as cur:
            cur.execute(f"set time zone '{zone}'")
        warehouse.handle.commit()
    else:
        warehouse.con.execute(f"set TimeZone = '{zone}'")


def _oracle_views(data, view_ts: str = "timestamp") -> list[View]:
    views = []
    for name, (keys, features) in VIEWS.items():
        rows = []
        for i, (key, values) in enumerate(data[name].items()):
            *key_values, ts = key
            ts = _view_event_time(ts, i, view_ts)
            rows.append({**dict(zip(keys, key_values)), "event_ts": ts,
                         **{f: v for (f, _), v in zip(features, values)}})
        views.append(View(name, keys, "event_ts", int(TTL.total_seconds()), tuple(f for f, _ in features), rows))
    return views


@pytest.mark.integration
@pytest.mark.parametrize("shape", list(SHAPES))
def test_macro_matches_oracle(pit, shape):
    db, project, warehouse, compiled, view_ts = pit
    sql = compiled[shape]

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(data=histories)
    @example(data=EDGES)
    def check(data):
        s = db.schema
        statements = []
        for name, (keys, features) in VIEWS.items():
            cols = [*keys, "event_ts", *(f for f, _ in features)]
            rows = [[*key[:-1], _view_event_time(key[-1], i, view_ts), *values]
                    for i, (key, values) in enumerate(data[name].items())]
            statements += [(f"delete from {s}.{name}", []),
                           (f"insert into {s}.{name} ({', '.join(cols)}) values ({', '.join('?' * len(cols))})",
                            rows)]
        spine = []
        for i, (customer, merchant, ts, value, zone) in enumerate(data["spine"]):
            when = ts.replace(tzinfo=timezone.utc).astimezone(zone) if shape == "tz" else ts
            spine.append({"row_id": i, "customer_id": customer, "merchant_id": merchant, "ts": when,
                          "amount": value})
        statements += [(f"delete from {s}.spine_{shape}", []),
                       (f"insert into {s}.spine_{shape} values (?, ?, ?, ?, ?)",
                        [[r[c] for c in SPINE_COLUMNS] for r in spine])]
        views = _oracle_views(data, view_ts)
        expected = point_in_time_oracle(spine, SPINE_COLUMNS, "ts", views)
        requested = [Feature(v.name, f, "float") for v in views for f in v.features]
        names = SPINE_COLUMNS + output_names(requested, [k for v in views for k in v.keys])
        with _environ(**db.env):
            db.execute(warehouse, statements)
            for zone in SESSION_ZONES:  # the session's time zone must change nothing
                _set_session_zone(warehouse, zone)
                got = run_training_set(warehouse, sql)
                assert got.column_names == names
                rows = [tuple(r.values()) for r in got.to_pylist()]
                assert sorted(r[0] for r in rows) == list(range(len(spine))), "every spine row exactly once"
                if db.schema == "main":  # DuckDB reads the spine table in insertion order: the output keeps it
                    assert [r[0] for r in rows] == list(range(len(spine)))
                assert sorted(rows, key=lambda r: r[0]) == expected, f"session time zone {zone}"
            warehouse.close()
        assert "customer_spend__txn_count_30d" in names and "merchant_risk__txn_count_30d" in names

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
def test_a_shuffled_spine_with_repeated_rows_comes_back_in_its_order(reference):
    """On DuckDB the join runs unordered and Python places its rows by the spine's row number (a permutation,
    `in_spine_order`). A spine in no order (keys and times shuffled, some rows repeated) comes back row for row
    in its own order, each row with the features the SQL's own `order by` gives it, from both entry points."""
    import random

    project, warehouse = reference
    labels = warehouse.con.sql("select * from main.fraud_labels").to_arrow_table()
    rng = random.Random(11)
    picks = [rng.randrange(labels.num_rows) for _ in range(labels.num_rows + 200)]
    spine = labels.take(pa.array(picks))
    assert len(set(picks)) < len(picks)  # repeated rows
    compiled, frame = compile_training_set(project, warehouse, spine, "label_ts", service="fraud_model")
    assert compiled.sql.rstrip().endswith("order by spine._fm_row")  # the default: DuckDB sorts
    expected = run_training_set(warehouse, compiled.sql, frame)
    features = expected.column_names[spine.num_columns:]
    assert expected.select(spine.column_names).equals(spine)
    assert all(expected.column(f).null_count for f in features)  # nulls to place too (ttl, no history)
    got = training_set(project, warehouse, spine, "label_ts", service="fraud_model")
    assert got.equals(expected)
    warehouse.close()  # the store below opens the file itself
    with FeatureStore(project.project_dir) as fs:
        assert fs.training_set(spine, "label_ts", service="fraud_model").equals(expected)


def test_in_spine_order_places_every_column_type_by_row_number():
    """`in_spine_order` scatters fixed-width columns (values and validity bits apart) and gathers the rest with
    Arrow's take: checked against a plain take for the types a training set has, on one chunk, a slice whose
    bitmap starts mid-byte, many chunks, columns chunked differently from each other, and an empty result."""
    import random
    from datetime import date
    from decimal import Decimal

    from featuremart.training import ROW_COLUMN, in_spine_order

    n = 1000
    rng = random.Random(3)
    rows = list(range(n))
    rng.shuffle(rows)
    nulls = [rng.random() < 0.4 for _ in range(n)]

    def maybe(values):
        return [None if null else v for v, null in zip(values, nulls)]

    columns = {
        "f": pa.array(maybe([rng.random() for _ in range(n)]), pa.float64()),
        "f32": pa.array(maybe([rng.random() for _ in range(n)]), pa.float32()),
        "i": pa.array(maybe(list(range(n))), pa.int32()),
        "i16": pa.array(maybe([i % 300 - 150 for i in range(n)]), pa.int16()),
        "i8": pa.array(maybe([i % 200 - 100 for i in range(n)]), pa.int8()),
        "b": pa.array(maybe([rng.random() < 0.5 for _ in range(n)]), pa.bool_()),
        "ts": pa.array(maybe([datetime(2024, 1, 1) + timedelta(seconds=i) for i in range(n)]), pa.timestamp("us")),
        "tz": pa.array(maybe([datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i) for i in range(n)]),
                       pa.timestamp("us", tz="UTC")),
        "d": pa.array(maybe([date(2024, 1, 1) + timedelta(days=i % 300) for i in range(n)]), pa.date32()),
        "dec": pa.array(maybe([Decimal(i) / 100 for i in range(n)]), pa.decimal128(12, 2)),
        "s": pa.array(maybe([f"s{i}" for i in range(n)]), pa.string()),
        "emb": pa.array(maybe([[float(i), -1.5] for i in range(n)]), pa.list_(pa.float32())),
        "no_nulls": pa.array(range(n), pa.int64()),
    }
    unordered = pa.table({**columns, ROW_COLUMN: pa.array(rows, pa.int64())})
    # one chunk, a slice of a longer array (an offset that is not a multiple of 8); and in several chunks
    sliced = pa.concat_tables([unordered.slice(0, 3), unordered]).combine_chunks().slice(3)
    chunked = pa.Table.from_batches(sliced.to_batches(max_chunksize=333))
    mixed = pa.table({name: pa.chunked_array([c.slice(0, k), c.slice(k)]) for k, (name, c) in
                      enumerate(zip(unordered.column_names, (c.chunk(0) for c in unordered.columns)), 100)})
    order = [0] * n
    for position, row in enumerate(rows):
        order[row] = position
    expected = pa.table(columns).take(pa.array(order))
    for table in (unordered, sliced, chunked, mixed):
        got = in_spine_order(table)
        assert got.equals(expected)
        assert [got.column(name).null_count for name in columns] == [expected.column(name).null_count
                                                                      for name in columns]
    assert in_spine_order(unordered.slice(0, 0)).equals(pa.table(columns).slice(0, 0))
    assert in_spine_order(expected) is expected  # no row number: nothing to place


@pytest.mark.parametrize("numbers", [[0, 1, 1, 3], [0, 1, 2, 4], [0, 1, 2, -1], [0, 1, None, 3]])
def test_in_spine_order_refuses_row_numbers_that_are_not_a_permutation(numbers):
    """A number repeated, out of range or null would leave a row unwritten (numpy's empty memory served as
    feature values): an error instead."""
    from featuremart.training import ROW_COLUMN, in_spine_order

    table = pa.table({"f": pa.array([1.5, None, 2.5, 3.5]), ROW_COLUMN: pa.array(numbers, pa.int64())})
    with pytest.raises(TrainingSetError, match="is not each number from 0 to 3 once"):
        in_spine_order(table)


@pytest.mark.integration
def test_unordered_training_set_has_the_same_rows_and_its_cli_loads_no_redis_or_arrow(reference, tmp_path):
    """`ordered=False` / `--unordered` skip the sort into the spine's order, nothing else; and a DuckDB training
    set written to Parquet by the CLI imports neither Redis's client, pyarrow, numpy, sqlglot nor dbt (their
    imports were a third of the process's time: bench/README.md), nor, its inputs unchanged since this process
    validated them, pydantic or yaml (featuremart.validated)."""
    import json
    import sys

    project, warehouse = reference
    ordered = training_set(project, warehouse, "fraud_labels", "label_ts", service="fraud_model")
    unordered = training_set(project, warehouse, "fraud_labels", "label_ts", service="fraud_model", ordered=False)
    assert unordered.sort_by("txn_id").equals(ordered.sort_by("txn_id"))
    out = tmp_path / "unordered.parquet"
    code = ("import sys, json\nfrom featuremart.cli import main\n"
            f"rc = main(['training-set', '--project-dir', {str(project.project_dir)!r}, '--spine', 'fraud_labels', "
            f"'--timestamp', 'label_ts', '--service', 'fraud_model', '--unordered', '--output', {str(out)!r}])\n"
            "heavy = {'redis', 'pyarrow', 'numpy', 'sqlglot', 'dbt', 'pydantic', 'yaml'}\n"
            "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules} & heavy)]), file=sys.stderr)\n")
    # the working directory of this process: the project's load is then cached for the child (its key has it),
    # and so are features.yml and the registry once a FeatureStore has validated them, as a previous command would
    with FeatureStore(project.project_dir) as fs:
        fs.registry
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "DO_NOT_TRACK": "1"})
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [0, []], proc.stderr
    written = pq.read_table(out)  # DuckDB marks the spine's not-null columns required: the same values
    assert written.cast(ordered.schema).sort_by("txn_id").equals(ordered.sort_by("txn_id"))


@pytest.mark.integration
def test_a_training_set_returns_before_duckdb_closes_and_close_waits_for_it(reference, monkeypatch):
    """FeatureStore.training_set hands its DuckDB connection to a helper thread to close (DuckDB frees the
    query's memory then: time the caller need not wait for). With that close held back, the table is already
    back; FeatureStore.close() waits for it, after which the file is free for a writer (dbt build)."""
    import threading
    import types

    import featuremart.warehouse as warehouse_module

    project, warehouse = reference
    warehouse.close()  # the fixture's connection (reopened when next used): the writer below needs the file alone
    gate = threading.Event()

    class HeldClose(threading.Thread):  # DuckDB's close, held back until the test lets it go
        def run(self) -> None:
            gate.wait(30)
            super().run()

    monkeypatch.setattr(warehouse_module, "threading", types.SimpleNamespace(Thread=HeldClose))
    fs = FeatureStore(project.project_dir)
    table = fs.training_set("fraud_labels", "label_ts", service="fraud_model")
    closing = [t for t in threading.enumerate() if isinstance(t, HeldClose)]
    assert table.num_rows > 0 and len(closing) == 1 and closing[0].is_alive()
    threading.Timer(0.3, gate.set).start()
    fs.close()  # waits for the held close
    assert not closing[0].is_alive()
    with duckdb.connect(str(warehouse.path)) as writer:  # read-write: fails while any read-only connection is open here
        assert writer.execute("select count(*) from main.fraud_labels").fetchone()[0] == table.num_rows


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


# --- train/serve consistency, whatever the process's time zone ---------------------------------------------

#: A feature view whose event time is timestamptz and which declares a changed_at column (not a feature).
ACTIVITY_SQL = """
select
    customer_id,
    event_ts at time zone 'UTC' as event_ts,
    spend_7d,
    txn_count_7d,
    event_ts at time zone 'UTC' as window_end,
    computed_at as changed_at
from {{ ref('customer_spend') }}
"""
ACTIVITY_YML = """
version: 2
models:
  - name: customer_activity
    description: customer_spend with a timestamptz event time (test fixture).
    config:
      meta:
        featuremart: {entity: customer, timestamp: event_ts, ttl: 3d, changed_at: changed_at}
"""
CONSISTENCY_FEATURES = ["customer_activity.*", "customer_spend.spend_7d", "customer_spend.spend_1d"]
#: Process time zones the CLI runs under, and the spine's timestamp type in each run.
CLI_RUNS = [("UTC", "naive"), ("America/New_York", "naive"), ("Pacific/Chatham", "naive"),
            ("Asia/Kolkata", "aware")]


def _cli(project: Path, zone: str, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import sys

    env = {**os.environ, "TZ": zone, "DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
           **(extra_env or {})}
    return subprocess.run([str(Path(sys.executable).with_name("featuremart")), *args, "--project-dir", str(project)],
                          cwd=project, env=env, capture_output=True, text=True)


@pytest.mark.integration
def test_train_serve_consistency_in_every_time_zone(project, redis_url, tmp_path):
    """Sync at T, read online; build the training set at T with the CLI in processes whose TZ differs, from a
    naive and a zone-aware spine: the same column names as online (no changed_at, no renaming by the
    spine), the same values, and the same table in every time zone (rows at other times included)."""
    (project / "models" / "features" / "customer_activity.sql").write_text(ACTIVITY_SQL)
    (project / "models" / "features" / "customer_activity.yml").write_text(ACTIVITY_YML)
    dbt(project, "build", "--select", "customer_spend+", env={"TZ": "America/New_York"})

    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
    customers = [r[0] for r in con.sql("select distinct customer_id from main.customer_spend "
                                       "order by hash(customer_id) limit 150").fetchall()] + ["NOBODY"]
    con.close()
    with FeatureStore(project, redis_url=redis_url) as fs:
        t = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        run = fs.sync(select=["customer_activity", "customer_spend"])
        assert run.status == "success", run
        online = fs.get_online_features([{"customer_id": c} for c in customers], features=CONSISTENCY_FEATURES)
        # A spine column named like an output column is refused, never silently renamed.
        clash = pa.table({"customer_id": ["C1"], "ts": pa.array([t], pa.timestamp("us")), "txn_count_7d": [1]})
        with pytest.raises(TrainingSetError, match="spine column txn_count_7d .*rename the spine column"):
            fs.training_set(clash, "ts", features=CONSISTENCY_FEATURES)

    # Spine rows at T (compared with what was served) and at other times near day and ttl edges.
    times = [t] + [t - timedelta(hours=h) for h in (3, 7, 13, 30, 71, 72, 73)]
    rows = [(c, when) for when in times for c in customers]
    naive = pa.array([w for _, w in rows], pa.timestamp("us"))
    spines = {"naive": naive, "aware": naive.cast(pa.timestamp("us", tz="UTC")).cast(
        pa.timestamp("us", tz="Asia/Kolkata"))}
    tables = {}
    for zone, kind in CLI_RUNS:
        spine_path = tmp_path / f"spine_{kind}.parquet"
        pq.write_table(pa.table({"customer_id": [c for c, _ in rows], "ts": spines[kind]}), spine_path)
        out = tmp_path / f"train_{zone.replace('/', '_')}_{kind}.parquet"
        proc = _cli(project, zone, "training-set", "--spine", str(spine_path), "--timestamp", "ts",
                    "--features", ",".join(CONSISTENCY_FEATURES), "--output", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        tables[zone, kind] = pq.read_table(out)

    names = list(online[0])
    assert names == ["customer_activity__spend_7d", "txn_count_7d", "window_end", "customer_spend__spend_7d",
                     "spend_1d"]
    baseline = tables["UTC", "naive"]
    assert baseline.column_names == ["customer_id", "ts", *names]
    for (zone, kind), table in tables.items():
        assert table.drop(["ts"]).equals(baseline.drop(["ts"])), (zone, kind)
    at_t = baseline.slice(0, len(customers)).to_pylist()
    present = 0
    for served, trained in zip(online, at_t):
        for name, value in served.items():
            assert trained[name] == (value.value if value.status == "present" else None), (trained["customer_id"], name)
            present += value.status == "present"
    assert present > len(customers) * 2


# --- writing training sets -----------------------------------------------------------------------------------

@pytest.mark.integration
def test_csv_output_holds_arrays_as_json(reference, tmp_path):
    """An array feature in a CSV training set is a JSON array per cell, read back exactly as in Parquet."""
    import io
    import json

    from rich.console import Console

    from featuremart.cli import main

    project, warehouse = reference
    warehouse.close()  # the CLI opens the DuckDB file itself
    paths = {suffix: tmp_path / f"train{suffix}" for suffix in (".csv", ".parquet")}
    for path in paths.values():
        out = io.StringIO()
        code = main(["training-set", "--project-dir", str(project.project_dir), "--spine", "fraud_labels",
                     "--timestamp", "label_ts", "--features", "customer_embedding.embedding,customer_spend.spend_7d",
                     "--output", str(path)], console=Console(file=out, width=100, color_system=None))
        assert code == 0, out.getvalue()
    parquet = pq.read_table(paths[".parquet"])
    import pyarrow.csv as pacsv

    csv = pacsv.read_csv(paths[".csv"], convert_options=pacsv.ConvertOptions(
        column_types={"embedding": pa.string()}, strings_can_be_null=True))
    embeddings = [None if v is None else json.loads(v) for v in csv.column("embedding").to_pylist()]
    assert embeddings == parquet.column("embedding").to_pylist()
    assert sum(v is not None for v in embeddings) > 0 and sum(v is None for v in embeddings) > 0
    assert csv.column("spend_7d").to_pylist() == parquet.column("spend_7d").to_pylist()


def test_long_queries_draw_no_progress_bar_on_stdout(tmp_path):
    """DuckDB draws a progress bar on stdout for queries over 2 s (a 1M-row training set's output was half
    bar): featuremart's warehouse turns it off, so a training set's output (and a piped `featuremart
    training-set`'s) holds only what featuremart says. Read in a fresh process, as a user's (pytest changes
    DuckDB's default), the setting a long query would meet; then a query prints nothing."""
    import sys

    duckdb.connect(str(tmp_path / "w.duckdb")).close()
    code = ("import sys; from featuremart.warehouse import DuckDBWarehouse\n"
            "w = DuckDBWarehouse(sys.argv[1])\n"
            "enabled = w.con.sql(\"select current_setting('enable_progress_bar')\").fetchall()[0][0]\n"
            "w.query('select count(*) from range(3000000) t(i) where hash(i) % 7 = 1')\n"
            "sys.stderr.write(str(enabled))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w.duckdb")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr == "False", proc.stderr
    assert proc.stdout == ""


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    """The file system refuses the write half way (RLIMIT_FSIZE, as a full disk would): the error is a
    TrainingSetError naming the file, the earlier file of that name is intact, no temporary file is left."""
    import resource
    import signal

    from featuremart.training import write_training_set

    rows = range(200_000)
    table = pa.table({"row": pa.array(rows), "embedding": pa.array([[0.1 * i, None] for i in rows])})
    path = tmp_path / "train.csv"
    path.write_text("an earlier training set\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(TrainingSetError, match=r"could not write .*train\.csv.*nothing was written"):
            write_training_set(table, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert path.read_text() == "an earlier training set\n"
    assert [p.name for p in tmp_path.iterdir()] == ["train.csv"]
    write_training_set(table.slice(0, 3), path)  # and a write that fits replaces it whole
    assert path.read_text().splitlines() == ['"row","embedding"', '0,"[0.0, null]"', '1,"[0.1, null]"',
                                             '2,"[0.2, null]"']


def test_a_streamed_parquet_write_that_fails_half_way_leaves_no_partial_file(tmp_path):
    """Parquet is written as the rows stream (batch by batch from a warehouse's batches; by DuckDB itself on
    DuckDB): a query failing while it streams (DuckDB's error() deep in the rows, as a bad cast in a spine
    would) leaves the earlier file intact and no temporary file; a stream that completes is read back whole,
    in order."""
    import duckdb

    from featuremart.training import write_training_set

    path = tmp_path / "train.parquet"
    path.write_text("an earlier training set\n")
    con = duckdb.connect()
    with pytest.raises(TrainingSetError, match=r"could not write .*train\.parquet: .*boom at \d+; nothing was written"):
        write_training_set(con.sql("select i, case when i < 250000 then i else error('boom at ' || i) end as v "
                                   "from range(300000) t(i)").to_arrow_reader(50_000), path)
    assert path.read_text() == "an earlier training set\n"
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]
    reader = con.sql("select i, i * 2 as v from range(300000) t(i) order by i").to_arrow_reader(50_000)
    assert write_training_set(reader, path) == (300_000, 2)
    table = pq.read_table(path)
    assert table.column("v").to_pylist() == [2 * i for i in range(300_000)]

    # On DuckDB, DuckDB writes the Parquet itself (the CLI's path): the same all-or-nothing rule.
    from featuremart.training import write_training_set_query
    from featuremart.warehouse import DuckDBWarehouse

    duckdb.connect(str(tmp_path / "wh.duckdb")).close()
    with DuckDBWarehouse(tmp_path / "wh.duckdb") as warehouse:
        with pytest.raises(TrainingSetError, match=r"could not write .*train\.parquet: .*boom at \d+; "
                                                   r"nothing was written"):
            write_training_set_query(warehouse, "select i, case when i < 250000 then i else error('boom at ' || i) "
                                                "end as v from range(300000) t(i)", None, path)
        assert pq.read_table(path).equals(table)  # the earlier file, untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet", "wh.duckdb"]
        assert write_training_set_query(warehouse, "select i, i * 3 as v from range(300000) t(i) order by i",
                                        None, path) == (300_000, 2)
    assert pq.read_table(path).column("v").to_pylist() == [3 * i for i in range(300_000)]


@pytest.mark.integration
@pytest.mark.postgres
def test_train_serve_consistency_on_postgres_in_every_time_zone(postgres_project, redis_url, tmp_path, monkeypatch):
    """On PostgreSQL: sync at T and read the fraud_model service online; build its training set at T with the
    CLI in processes whose TZ and PGTZ (the session's time zone) differ, from a naive and a zone-aware SQL
    spine: the same names and values as online, and the same table in every time zone."""
    project_dir, env = postgres_project
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    schema = env["FEATUREMART_PG_SCHEMA"]
    with FeatureStore(project_dir, redis_url=redis_url) as fs:
        with fs.warehouse() as wh:
            pairs = wh.query(f'select customer_id, merchant_id from "{schema}".customer_merchant_pair '
                             "order by md5(customer_id || merchant_id) limit 100").to_pylist()
        pairs.append({"customer_id": "NOBODY", "merchant_id": "M00000"})
        t = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
        run = fs.sync()
        assert run.status == "success", run
        online = fs.get_online_features(pairs, service="fraud_model")

    def literal(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    values = ", ".join(f"({i}, {literal(p['customer_id'])}, {literal(p['merchant_id'])})" for i, p in enumerate(pairs))
    stamps = {"naive": f"timestamp '{t.isoformat(' ')}'",
              "aware": f"timestamptz '{t.replace(tzinfo=timezone.utc).astimezone(ZONES[1]).isoformat(' ')}'"}
    tables = {}
    for zone, kind in [*CLI_RUNS[1:], ("America/New_York", "aware")]:
        spine = (f"select row_id, customer_id, merchant_id, {stamps[kind]} as ts "
                 f"from (values {values}) as spine (row_id, customer_id, merchant_id)")
        out = tmp_path / f"train_{zone.replace('/', '_')}_{kind}.parquet"
        proc = _cli(project_dir, zone, "training-set", "--spine", spine, "--timestamp", "ts", "--service",
                    "fraud_model", "--output", str(out), extra_env={"PGTZ": zone})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        tables[zone, kind] = pq.read_table(out).sort_by("row_id")
    baseline = next(iter(tables.values()))
    for key, table in tables.items():
        assert table.drop(["ts"]).equals(baseline.drop(["ts"])), key
    # the spine's own timestamptz column too: read in UTC, whatever the session's zone
    assert tables["Asia/Kolkata", "aware"].equals(tables["America/New_York", "aware"])
    assert baseline.column_names == ["row_id", "customer_id", "merchant_id", "ts", *online[0]]
    present = 0
    for served, trained in zip(online, baseline.to_pylist()):
        for name, value in served.items():
            assert trained[name] == (value.value if value.status == "present" else None), (trained["row_id"], name)
            present += value.status == "present"
    assert present > len(pairs) * 4


def test_duckdb_column_types_are_read_for_the_asked_tables_and_views_only(tmp_path):
    """The registry check reads column types from DuckDB's own catalog, for the requested relations: tables and
    views, names matched case-insensitively, nothing of DuckDB's internal catalog (`tables`, `sqlite_master`
    are its own views), a missing relation absent."""
    from featuremart.registry import Relation
    from featuremart.warehouse import DuckDBWarehouse

    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create table main.features (customer_id varchar, ts timestamptz, v double[])")
        con.execute("create view main.features_v as select customer_id, ts, 1::bigint as n from main.features")
    wh = DuckDBWarehouse(path)
    try:
        got = wh.columns([Relation("w", "MAIN", "Features"), Relation("w", "main", "features_v"),
                          Relation("w", "main", "tables"), Relation("w", "main", "sqlite_master"),
                          Relation("w", "main", "missing")])
    finally:
        wh.close()
    assert got == {
        Relation("w", "MAIN", "Features"): {"customer_id": "VARCHAR", "ts": "TIMESTAMP WITH TIME ZONE",
                                            "v": "DOUBLE[]"},
        Relation("w", "main", "features_v"): {"customer_id": "VARCHAR", "ts": "TIMESTAMP WITH TIME ZONE",
                                              "n": "BIGINT"},
    }

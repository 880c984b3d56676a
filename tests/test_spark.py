"""A distributed engine: the same reference project built on Apache Spark (dbt-spark session mode), synced and
trained from, against DuckDB on the same generated data. One SparkSession per test session: the checks share
one test (a second test could land on another xdist worker and build the project again)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime

import pyarrow as pa
import pytest

from featuremart import FeatureStore
from featuremart.dbtcore import load_dbt_project
from featuremart.training import training_set
from featuremart.warehouse import open_warehouse
from tests.conftest import spark_env
from tests.test_postgres import _same

# Building the project on Spark takes minutes on a busy 2-core machine (docs/warehouses.md): past the suite's 300 s.
pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.timeout(1800)]


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
    feature_keys = [set(c.scan_iter(match="fm:{*}:*:*")) for c in (client, redis_server.client(db=1))]
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


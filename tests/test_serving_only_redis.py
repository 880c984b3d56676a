"""Serving needs only Redis: `featuremart get` and `featuremart serve` (one process and `--workers 2`) run in a
directory with no dbt project, with nothing but FEATUREMART_REDIS_URL, and read what a real sync of the built
reference project published; and that path never imports dbt, DuckDB, sqlglot, pyarrow or jinja."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest

from featuremart import FeatureStore
from tests.feature_server import FeatureServer, featuremart_command, serving_env

pytestmark = pytest.mark.integration

HEAVY = ("dbt", "duckdb", "sqlglot", "pyarrow", "jinja2", "numpy", "pandas", "agate", "yaml", "pydantic")


@pytest.fixture
def published(project, redis_url):
    """The reference project synced for real into the test's Redis; returns (an entity, what it reads)."""
    with FeatureStore(project, redis_url=redis_url) as fs:
        run = fs.sync()
        assert run.status == "success", run.to_json()
        con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
        try:
            customer, merchant = con.sql("select customer_id, merchant_id from main.customer_merchant_pair "
                                         "order by 1, 2 limit 1").fetchall()[0]
        finally:
            con.close()
        entity = {"customer_id": customer, "merchant_id": merchant}
        [expected] = fs.get_online_features([entity], service="fraud_model")
    assert sum(v.status == "present" for v in expected.values()) >= 3, expected
    return entity, {name: {"value": v.value, "status": v.status,
                           "event_ts": v.event_ts.isoformat() if v.event_ts else None}
                    for name, v in expected.items()}


def test_get_needs_only_the_redis_url(published, redis_url, tmp_path):
    entity, expected = published
    keys = [f"{k}={v}" for k, v in entity.items()]
    proc = subprocess.run(featuremart_command() + ["get", "--json", "--service", "fraud_model", *keys],
                          cwd=tmp_path, env=serving_env(redis_url), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected
    # --redis-url works as well as the environment variable
    proc = subprocess.run(featuremart_command() + ["get", "--json", "--redis-url", redis_url, "--service",
                                                   "fraud_model", *keys],
                          cwd=tmp_path, env=serving_env(None), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected


def test_get_imports_nothing_of_the_warehouse_side(published, redis_url, tmp_path):
    """`import featuremart` and a whole `featuremart get` load none of dbt, DuckDB, sqlglot, pyarrow, jinja."""
    entity, expected = published
    code = ("import sys, json\n"
            "import featuremart\n"
            f"after_import = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
            "from featuremart.cli import main\n"
            f"rc = main(['get', '--json', '--service', 'fraud_model', "
            f"{', '.join(repr(f'{k}={v}') for k, v in entity.items())}])\n"
            f"after_get = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
            "print(json.dumps({'rc': rc, 'import': after_import, 'get': after_get}), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=serving_env(redis_url),
                          capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"rc": 0, "import": [], "get": []}, proc.stderr
    assert json.loads(proc.stdout) == expected


def test_get_without_a_url_or_a_project_says_what_to_do(tmp_path):
    proc = subprocess.run(featuremart_command() + ["get", "--features", "v.f", "k=1"], cwd=tmp_path,
                          env=serving_env(None), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "--redis-url" in proc.stderr and "FEATUREMART_REDIS_URL" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_needs_only_the_redis_url(published, redis_url, tmp_path, workers):
    entity, expected = published
    auth = {"Authorization": "Bearer w0rker-t0ken"}
    env = serving_env(redis_url, FM_SERVE_TOKEN="w0rker-t0ken")
    with FeatureServer(tmp_path, env, "--workers", str(workers), "--token-env", "FM_SERVE_TOKEN") as server:
        if workers > 1:
            assert len(server.children()) >= workers, server.children()
        request = {"service": "fraud_model", "entities": [entity]}
        assert server.request("POST", "/features", request)[0] == 401  # every worker knows the token
        for _ in range(20):  # several connections: with two workers both answer
            status, body = server.request("POST", "/features", request, headers=auth)
            assert status == 200, body
            assert body["results"][0]["values"] == expected
        status, ready = server.request("GET", "/readyz")
        assert status == 200 and ready["views"] >= 3
    assert "Traceback" not in server.output and "w0rker-t0ken" not in server.output


def test_serve_refuses_a_connection_cap_beyond_the_descriptor_limit(redis_url, tmp_path):
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no descriptor limit to exceed")
    proc = subprocess.run(featuremart_command() + ["serve", "--max-connections", str(soft)], cwd=tmp_path,
                          env=serving_env(redis_url), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"--max-connections {soft} needs about" in proc.stderr and "ulimit -n" in proc.stderr
    assert "Traceback" not in proc.stderr

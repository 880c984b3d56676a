"""The whole path on the reference project: dbt build → registry → sync → get, and every bad input of the CLI.

Real dbt on DuckDB, a real redis-server started by the session fixture (and the embedded one for the quick start).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import duckdb
import pytest
import redis
from rich.console import Console

from featuremart import FeatureStore
from featuremart.cli import main
from tests.conftest import dbt, nullable

pytestmark = pytest.mark.integration


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), console=Console(file=out, width=100, color_system=None))
    return code, out.getvalue()


@pytest.fixture
def env(project, redis_url, monkeypatch):
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    monkeypatch.chdir(project)
    return project


def a_pair(project) -> tuple[str, str]:
    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
    try:
        return con.sql("select customer_id, merchant_id from main.customer_merchant_pair "
                       "order by event_ts desc, customer_id, merchant_id limit 1").fetchall()[0]
    finally:
        con.close()


def test_list_describe_validate(env):
    code, out = run_cli("list")
    assert code == 0
    for text in ("customer_spend", "spend_7d", "float", "risk-data@example.com", "gold", "ttl 30d", "online yes",
                 "customer, merchant", "array<float>", "fraud_model"):
        assert text in out, text
    code, out = run_cli("describe", "customer_spend")
    assert code == 0
    assert "models/features/customer_spend.sql" in out and "stg_transactions" in out and "newest event" in out
    assert "(pass)" in out  # the generated data is fresh
    code, out = run_cli("describe", "fraud_model")
    assert code == 0 and "merchant_risk.chargeback_rate_90d" in out
    code, out = run_cli("describe", "customer_spend.spend_7d")
    assert code == 0 and "float (DOUBLE)" in out
    code, out = run_cli("validate")
    assert code == 0 and "OK: 5 feature views" in out


def test_sync_then_get(env):
    code, out = run_cli("sync")
    assert code == 0, out
    assert "sync" in out and "success" in out
    customer, merchant = a_pair(env)
    code, out = run_cli("get", "--service", "fraud_model", f"customer_id={customer}", f"merchant_id={merchant}",
                        "--json")
    assert code == 0, out
    values = json.loads(out)
    assert set(values) == {"spend_1d", "spend_7d", "txn_count_7d", "declined_count_7d", "chargeback_rate_90d",
                           "distinct_customers_30d", "pair_txn_count_30d", "pair_spend_30d"}
    assert all(v["status"] == "present" for v in values.values()), values
    code, out = run_cli("get", "--features", "customer_profile.*,customer_embedding.embedding", f"customer_id={customer}")
    assert code == 0 and "bio" in out and "embedding" in out and "present" in out
    code, out = run_cli("get", "--features", "customer_spend.spend_7d", "customer_id=NOBODY")
    assert code == 0 and "missing" in out


def test_python_api_matches_the_warehouse(env):
    with FeatureStore(env) as fs:
        run = fs.sync()
        assert run.status == "success" and {v.view for v in run.views} == set(fs.registry.views)
        customer, merchant = a_pair(env)
        [row] = fs.get_online_features([{"customer_id": customer, "merchant_id": merchant}], service="fraud_model")
    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"), read_only=True)
    expected = con.execute("select spend_7d, event_ts from main.customer_spend where customer_id = ? "
                           "order by event_ts desc limit 1", [customer]).fetchall()[0]
    con.close()
    assert row["spend_7d"].value == pytest.approx(expected[0])
    assert row["spend_7d"].event_ts.replace(tzinfo=None) == expected[1]


def test_a_batch_of_pairs_reads_each_pairs_own_values(env):
    """A batch of dict entities of plain string keys takes the column-wise key path, where each key of the two-key
    view `customer_merchant_pair` is joined from its parts: every pair reads its own latest row (the keys in
    their order, no pair's value another's), and the batch equals the same entities read one by one."""
    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"), read_only=True)
    latest = con.sql("select customer_id, merchant_id, last_pair_amount from main.customer_merchant_pair "
                     "qualify row_number() over (partition by customer_id, merchant_id order by event_ts desc) = 1 "
                     "order by event_ts desc, customer_id, merchant_id limit 40").fetchall()
    con.close()
    entities = [{"customer_id": c, "merchant_id": m} for c, m, _ in latest]
    with FeatureStore(env) as fs:
        assert fs.sync().status == "success"
        rows = fs.get_online_features(entities, features=["customer_merchant_pair.last_pair_amount"])
        one_by_one = [fs.get_online_features([e], features=["customer_merchant_pair.last_pair_amount"])[0]
                      for e in entities]
    assert [r["last_pair_amount"].status for r in rows].count("present") >= 30  # the latest pairs: within the ttl
    for (_, _, amount), row in zip(latest, rows):
        if row["last_pair_amount"].status == "present":
            assert row["last_pair_amount"].value == pytest.approx(amount)
    assert rows == one_by_one


def test_embedded_store_quick_start(project, monkeypatch):
    """With no Redis URL the CLI starts its own redis-server under target/ and the next process reads it."""
    monkeypatch.delenv("FEATUREMART_REDIS_URL", raising=False)
    monkeypatch.chdir(project)
    exe = [sys.executable, "-m", "featuremart.cli"]
    subprocess.run([*exe, "sync"], check=True, capture_output=True, text=True)
    customer, merchant = a_pair(project)
    got = subprocess.run([*exe, "get", "--service", "fraud_model", f"customer_id={customer}",
                          f"merchant_id={merchant}", "--json"], check=True, capture_output=True, text=True)
    assert {v["status"] for v in json.loads(got.stdout).values()} == {"present"}
    assert (project / "target" / "featuremart" / "redis.db").exists()


# ---- bad input: one clear message, no traceback, nothing changed ---------------------------------------------

def test_invalid_metadata_names_file_model_and_column(env):
    yml = env / "models" / "features" / "customer_spend.yml"
    yml.write_text(yml.read_text().replace("ttl: 30d", "ttl: 7 dayz").replace("timestamp: event_ts",
                                                                               "timestamp: evt_ts"))
    dbt(env, "parse")
    code, out = run_cli("validate")
    assert code == 1
    assert "error(s) in feature metadata" in out and "Traceback" not in out
    assert ("models/features/customer_spend.yml: model customer_spend: config.meta.featuremart.ttl: '7 dayz' is not "
            "a duration") in out
    assert "timestamp column 'evt_ts' is not an output column" in out


def test_unknown_entity_blocks_sync_and_changes_nothing(env, redis_url):
    yml = env / "models" / "features" / "merchant_risk.yml"
    yml.write_text(yml.read_text().replace("entity: merchant", "entity: shop"))
    dbt(env, "parse")
    code, out = run_cli("sync")
    assert code == 1 and "unknown entity 'shop'" in out
    assert redis.Redis.from_url(redis_url).dbsize() == 0


def test_failed_tests_gate_the_sync(env, redis_url):
    """A model whose keys collide fails `dbt build` (naming the keys); sync withholds it and publishes the rest."""
    sql = env / "models" / "features" / "merchant_risk.sql"
    sql.write_text(f"select * from ({sql.read_text()}) as m union all select * from ({sql.read_text()}) as d "
                   "where merchant_id = 'M00001'")
    build = dbt(env, "build", check=False)
    assert build.returncode != 0
    assert "merchant_risk has" in build.stdout and "duplicate (merchant_id, event_ts)" in build.stdout
    code, out = run_cli("sync", "--json")
    record = json.loads(out)
    views = {v["view"]: v for v in record["views"]}
    assert views["merchant_risk"]["status"] == "withheld"
    assert "feature_keys_unique" in views["merchant_risk"]["reason"] and "fail" in views["merchant_risk"]["reason"]
    assert views["customer_spend"]["status"] == "synced" and record["status"] == "withheld" and code == 2
    # What readers see afterwards: the published views read as present, the withheld one is not served, and
    # the service that needs it says why, alone.
    customer, merchant = a_pair(env)
    code, out = run_cli("get", "--features", "customer_spend.spend_7d", f"customer_id={customer}", "--json")
    assert code == 0 and json.loads(out)["spend_7d"]["status"] == "present", out
    code, out = run_cli("get", "--service", "recommender", f"customer_id={customer}", "--json")
    assert code == 0 and all(v["status"] == "present" for v in json.loads(out).values()), out
    code, out = run_cli("get", "--service", "fraud_model", f"customer_id={customer}", f"merchant_id={merchant}")
    assert code == 1 and "fraud_model' is not available online: view merchant_risk was withheld" in out, out
    assert redis.Redis.from_url(redis_url).keys("fm:{merchant_id=*}:merchant_risk:*") == []


def test_a_failing_test_on_a_changed_view_breaks_no_reader(env, redis_url):
    """The view gains a feature that a service lists, and a test on it fails: the view is withheld with its
    previous values, the service keeps its previous definition, and every reader (Python, CLI, HTTP) reads
    everything as before."""
    import warnings

    from featuremart.server import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    assert run_cli("sync")[0] == 0
    customer, merchant = a_pair(env)
    entity = {"customer_id": customer, "merchant_id": merchant}
    with FeatureStore.from_url(redis_url) as fs:
        [before] = fs.get_online_features([entity], service="fraud_model")
    sql = env / "models" / "features" / "customer_spend.sql"
    text = sql.read_text().replace(
        "        cast(rolling_activity.spend_7d as {{ featuremart.type_double() }}) as spend_7d,\n",
        "        cast(rolling_activity.spend_7d as {{ featuremart.type_double() }}) as spend_7d,\n"
        "        cast(2 * rolling_activity.spend_7d as {{ featuremart.type_double() }}) as spend_7d_doubled,\n")
    sql.write_text(text.replace("select * from final", "select * from final union all select * from final "
                                "where customer_id = (select min(customer_id) from final)"))
    exposures = env / "models" / "exposures.yml"
    exposures.write_text(exposures.read_text().replace(
        "            - customer_spend.spend_7d\n", "            - customer_spend.spend_7d\n"
        "            - customer_spend.spend_7d_doubled\n"))
    assert dbt(env, "build", check=False).returncode != 0  # feature_keys_unique fails on customer_spend
    code, out = run_cli("sync", "--json")
    record = json.loads(out)
    assert record["status"] == "withheld" and code == 2
    assert {v["view"]: v["status"] for v in record["views"]}["customer_spend"] == "withheld"
    with FeatureStore.from_url(redis_url) as fs:
        [after] = fs.get_online_features([entity], service="fraud_model")
        assert after == before  # the previous definition, the previous values
        assert fs.get_online_features([{"customer_id": customer}], service="recommender")
        with TestClient(create_app(fs.reader)) as client:
            resp = client.post("/features", json={"service": "fraud_model", "entities": [entity]})
            assert resp.status_code == 200, resp.text
            assert "spend_7d_doubled" not in resp.json()["features"]
            assert client.get("/readyz").status_code == 200
    code, out = run_cli("get", "--service", "fraud_model", f"customer_id={customer}", f"merchant_id={merchant}")
    assert code == 0 and "present" in out and "spend_7d_doubled" not in out, out


def test_mass_delete_guard_from_features_yml_and_the_cli(env, redis_url):
    """defaults.max_delete_fraction in features.yml withholds a view that lost too many entities; the
    `--allow-mass-delete` option lets the run through once the user checked the warehouse is right."""
    assert run_cli("sync")[0] == 0
    features = env / "features.yml"
    features.write_text(features.read_text().replace("defaults:\n", "defaults:\n  max_delete_fraction: 0.01\n"))
    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"))
    lost = con.execute("delete from main.merchant_risk where merchant_id in (select distinct merchant_id from "
                       "main.merchant_risk order by merchant_id limit 10)").fetchall()
    con.close()
    assert lost
    client = redis.Redis.from_url(redis_url)
    before = len(client.keys("fm:{merchant_id=*}:merchant_risk:*"))
    code, out = run_cli("sync", "--json")
    record = json.loads(out)
    views = {v["view"]: v for v in record["views"]}
    assert record["status"] == "withheld" and views["merchant_risk"]["status"] == "withheld", out
    assert code == 2
    assert "would delete 10 of its" in views["merchant_risk"]["reason"] and "max_delete_fraction 0.01" in out
    assert len(client.keys("fm:{merchant_id=*}:merchant_risk:*")) == before
    code, out = run_cli("sync", "--allow-mass-delete", "--json")
    record = json.loads(out)
    assert code == 0 and record["status"] == "success", out
    assert len(client.keys("fm:{merchant_id=*}:merchant_risk:*")) == before - 10


def test_unknown_manifest_schema(env):
    path = env / "target" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metadata"]["dbt_schema_version"] = "https://schemas.getdbt.com/dbt/manifest/v7.json"
    path.write_text(json.dumps(manifest))
    code, out = run_cli("list")
    assert code == 1 and "manifest schema" in out and "v7.json" in out and "dbt-core" in out


def test_no_target_dir(env):
    import shutil

    shutil.rmtree(env / "target")
    code, out = run_cli("sync")
    assert code == 1 and "manifest.json not found: run `dbt build`" in out and "Traceback" not in out


def test_duckdb_locked_by_a_writer(env):
    """A process holding the DuckDB file for writing (as `dbt build` does) gets a message, not a crash."""
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; "
                               f"c = duckdb.connect({str(env / 'target' / 'featuremart.duckdb')!r}); "
                               "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        code, out = run_cli("sync")
    finally:
        holder.kill()
        holder.wait()
    assert code == 3 and "is locked by another process" in out and "dbt build" in out


def test_unreachable_redis(env, monkeypatch):
    monkeypatch.setenv("FEATUREMART_REDIS_URL", "redis://user:s3cret@127.0.0.1:1/0")
    started = time.monotonic()
    code, out = run_cli("sync")
    assert code == 3 and "Cannot reach the online store" in out and "s3cret" not in out
    error = next(line for line in out.splitlines() if "Cannot reach the online store" in line)
    assert len(error) > 100 and "redis://user:***@127.0.0.1:1/0" in error  # whole, not folded at the width
    assert time.monotonic() - started < 30
    assert not (env / "target" / "featuremart" / "sync_state.duckdb").exists()


def test_sync_selection_dry_run_and_rerun(env):
    code, out = run_cli("sync", "--select", "config.meta.featuremart.tier:gold", "--exclude", "merchant_*",
                        "--dry-run", "--json")
    record = json.loads(out)
    assert code == 0 and record["status"] == "dry-run"
    assert {v["view"] for v in record["views"]} == {"customer_spend", "customer_merchant_pair"}
    assert all(v["inserted"] > 0 and v["updated"] == v["deleted"] == 0 for v in record["views"])
    code, out = run_cli("sync", "--select", "config.meta.featuremart.tags:payments", "--json")
    first = json.loads(out)
    assert code == 0 and first["status"] == "success" and first["views"]
    code, out = run_cli("sync", "--select", "config.meta.featuremart.tags:payments", "--json")
    again = json.loads(out)
    assert all(v["inserted"] == v["updated"] == v["deleted"] == 0 for v in again["views"])
    runs = (env / "target" / "featuremart" / "runs.jsonl").read_text().splitlines()
    assert [json.loads(r)["run_id"] for r in runs] == [first["run_id"], again["run_id"]]
    code, out = run_cli("sync", "--select", "tag:nothing")  # a selection of nothing is a mistake, not a success
    assert code == 1 and "tag:nothing" in out


def test_bad_selector(env):
    code, out = run_cli("sync", "--select", "owner:me")
    assert code == 1 and "--select owner:me: 'owner' is not a valid method name" in out


def test_training_set_cli_matches_the_dbt_model(env):
    import pyarrow.parquet as pq

    code, out = run_cli("training-set", "--spine", "fraud_labels", "--timestamp", "label_ts", "--service",
                        "fraud_model", "--output", str(env / "train.parquet"))
    assert code == 0, out
    assert "wrote" in out
    got = pq.read_table(env / "train.parquet")
    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"), read_only=True)
    expected = con.sql("select * from main.fraud_training_set").to_arrow_table()
    con.close()
    key = ["txn_id"]
    assert got.num_rows == expected.num_rows > 0
    assert nullable(got.select(expected.column_names)).sort_by([(k, "ascending") for k in key]).equals(
        expected.sort_by([(k, "ascending") for k in key]))
    code, out = run_cli("training-set", "--spine", "fraud_labels", "--timestamp", "label_ts", "--features",
                        "customer_spend.nope", "--output", str(env / "t.parquet"))
    assert code == 1 and "nope" in out and "Traceback" not in out
    code, out = run_cli("training-set", "--spine", "fraud_labels", "--timestamp", "label_ts", "--service",
                        "fraud_model", "--output", str(env / "t.json"))
    assert code == 1 and ".parquet or .csv" in out


def test_train_serve_consistency(env):
    """Sync at T, read online, build a training set at T for the same entities: the same values."""
    from datetime import datetime, timezone

    import pyarrow as pa

    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"), read_only=True)
    pairs = con.sql("select customer_id, merchant_id from main.customer_merchant_pair "
                    "order by hash(customer_id, merchant_id) limit 200").fetchall()
    con.close()
    pairs += [("NOBODY", "M00000")]  # an entity with no history: missing online, null offline
    entities = [{"customer_id": c, "merchant_id": m} for c, m in pairs]
    with FeatureStore(env) as fs:
        t = datetime.now(timezone.utc).replace(tzinfo=None)
        assert fs.sync().status == "success"
        online = fs.get_online_features(entities, service="fraud_model")
        spine = pa.table({"customer_id": [c for c, _ in pairs], "merchant_id": [m for _, m in pairs],
                          "ts": pa.array([t] * len(pairs), pa.timestamp("us"))})
        offline = fs.training_set(spine, "ts", service="fraud_model").to_pylist()
    assert len(offline) == len(online)
    present = 0
    for served, trained in zip(online, offline):
        for name, value in served.items():
            expected = value.value if value.status == "present" else None
            assert trained[name] == expected, name  # exact: JSON keeps doubles bit for bit
            present += value.status == "present"
    assert present > len(pairs) * 4


def test_a_view_switched_offline_leaves_the_online_store(env, redis_url):
    """`online: false` on a published view removes its keys and its registry entry: nothing stale stays served,
    and a service that needs it says so, alone."""
    assert run_cli("sync")[0] == 0
    client = redis.Redis.from_url(redis_url)
    assert client.keys("fm:{merchant_id=*}:merchant_risk:*")
    yml = env / "models" / "features" / "merchant_risk.yml"
    yml.write_text(yml.read_text().replace("          online: true\n", "          online: false\n"))
    dbt(env, "build", "-s", "merchant_risk")
    code, out = run_cli("sync", "--json")
    record = json.loads(out)
    assert code == 0 and record["status"] == "success", out
    assert {v["view"]: (v["status"], v["reason"]) for v in record["views"]}["merchant_risk"] == (
        "removed", "online: false")
    assert client.keys("fm:{merchant_id=*}:merchant_risk:*") == []
    customer, merchant = a_pair(env)
    code, out = run_cli("get", "--service", "fraud_model", f"customer_id={customer}", f"merchant_id={merchant}")
    assert code == 1 and "view merchant_risk is not online (online: false)" in out, out
    code, out = run_cli("get", "--service", "recommender", f"customer_id={customer}", "--json")
    assert code == 0 and all(v["status"] == "present" for v in json.loads(out).values()), out


def test_validate_warns_about_non_finite_values(env):
    """A NaN in a float feature: `featuremart validate` says online reads serve it as null."""
    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"))
    con.execute("update main.merchant_risk set chargeback_rate_90d = 'NaN'::double where merchant_id = "
                "(select min(merchant_id) from main.merchant_risk)")
    con.close()
    code, out = run_cli("validate")
    assert code == 0 and "chargeback_rate_90d" in out and "NaN or ±Infinity" in " ".join(out.split()), out

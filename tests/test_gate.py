"""The build gate: a view is published only when dbt built its model and every test attached to it passed after
that build, whatever dbt commands ran since; the record survives `dbt clean`; exit codes say what happened.

Real dbt on DuckDB (and one test on PostgreSQL), a real redis-server; every test reads the online store back.
"""

from __future__ import annotations

import io
import json
import shutil

import duckdb
import pytest
import redis
from rich.console import Console

from featuremart import FeatureStore
from featuremart.cli import EXIT_FAILED, EXIT_OK, EXIT_WITHHELD, main
from tests.conftest import dbt

pytestmark = pytest.mark.integration

VIEWS = {"customer_embedding", "customer_merchant_pair", "customer_profile", "customer_spend", "merchant_risk"}


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), console=Console(file=out, width=200, color_system=None))
    return code, out.getvalue()


def sync_json(*args: str) -> tuple[int, dict]:
    code, out = run_cli("sync", "--json", *args)
    return code, json.loads(out)


def statuses(record: dict) -> dict[str, str]:
    return {v["view"]: v["status"] for v in record["views"]}


def reasons(record: dict) -> dict[str, str]:
    return {v["view"]: v["reason"] for v in record["views"]}


def online_views(redis_url: str) -> set[str]:
    """The views that have values in the online store (keys are `fm:{entity}:view:version`)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return {key.decode().rsplit(":", 2)[1] for key in client.scan_iter("fm:{*}:*:*", count=10_000)}
    finally:
        client.close()


def latest_spend_7d(warehouse) -> tuple[str, float]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        return con.sql("select customer_id, spend_7d from main.customer_spend "
                       "order by event_ts desc, customer_id limit 1").fetchall()[0]
    finally:
        con.close()


def read_spend_7d(project, customer: str):
    with FeatureStore(project) as fs:
        return fs.get_online_features([{"customer_id": customer}], features=["customer_spend.spend_7d"])[0]["spend_7d"]


def break_merchant_risk(project) -> None:
    """Duplicate one merchant's rows: its `feature_keys_unique` test fails on the next build."""
    model = project / "models" / "features" / "merchant_risk.sql"
    body = model.read_text()
    model.write_text(f"select * from ({body}) as m union all select * from ({body}) as d where merchant_id = 'M00001'")


@pytest.fixture
def env(project, redis_url, monkeypatch):
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    monkeypatch.chdir(project)
    return project


def test_production_job_build_then_docs_generate_publishes_everything(env, redis_url):
    """`dbt build && dbt docs generate && featuremart sync`: docs generate rewrites run_results.json with
    compile results; the sync still knows what the build tested."""
    dbt(env, "build")
    dbt(env, "docs", "generate")
    assert json.loads((env / "target" / "run_results.json").read_text())["args"]["which"] == "generate"
    code, record = sync_json()
    assert code == EXIT_OK and record["status"] == "success", record
    assert statuses(record) == {name: "synced" for name in VIEWS}
    assert online_views(redis_url) == VIEWS
    customer, spend = latest_spend_7d(env / "target" / "featuremart.duckdb")
    value = read_spend_7d(env, customer)
    assert value.status == "present" and value.value == pytest.approx(spend)


def test_partial_dbt_test_of_another_model_still_publishes(env, redis_url):
    dbt(env, "test", "-s", "merchant_risk")
    code, record = sync_json()
    assert code == EXIT_OK and statuses(record) == {name: "synced" for name in VIEWS}, record
    assert online_views(redis_url) == VIEWS


def test_failed_test_withholds_exactly_that_view(env, redis_url):
    break_merchant_risk(env)
    assert dbt(env, "build", check=False).returncode != 0
    dbt(env, "docs", "generate")  # run_results.json no longer says which test failed: the record does
    code, out = run_cli("sync", "--json")
    record = json.loads(out)
    assert code == EXIT_WITHHELD and record["status"] == "withheld"
    assert statuses(record) == {**{name: "synced" for name in VIEWS}, "merchant_risk": "withheld"}
    reason = reasons(record)["merchant_risk"]
    assert reason.startswith("test featuremart_feature_keys_unique_merchant_risk_merchant_id__event_ts failed at ")
    assert " UTC: Got " in reason, reason
    # --json shape: one record, each view with its status and reason; counts for the published ones.
    assert set(record) >= {"run_id", "started_at", "finished_at", "status", "error", "manifest_checksum", "views"}
    assert all(set(v) >= {"view", "status", "reason", "inserted", "updated", "deleted", "unchanged"}
               for v in record["views"])
    assert online_views(redis_url) == VIEWS - {"merchant_risk"}  # the others are published, read back
    customer, spend = latest_spend_7d(env / "target" / "featuremart.duckdb")
    assert read_spend_7d(env, customer).value == pytest.approx(spend)
    code, out = run_cli("sync")  # the table says so too, with the reason
    assert code == EXIT_WITHHELD and "withheld" in out and "feature_keys_unique_merchant_risk" in out


def test_the_record_survives_dbt_clean(project, redis_url, monkeypatch):
    """A warehouse outside target/ (as in production): after `dbt clean` and a fresh parse the sync still
    knows which tests passed and which failed."""
    warehouse = project / "warehouse.duckdb"
    shutil.copy2(project / "target" / "featuremart.duckdb", warehouse)
    dbt_env = {"FEATUREMART_DUCKDB_PATH": str(warehouse)}
    monkeypatch.setenv("FEATUREMART_DUCKDB_PATH", str(warehouse))
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    monkeypatch.chdir(project)
    break_merchant_risk(project)
    assert dbt(project, "build", env=dbt_env, check=False).returncode != 0
    dbt(project, "clean", env=dbt_env)
    assert not (project / "target").exists()
    dbt(project, "parse", env=dbt_env)
    assert not (project / "target" / "run_results.json").exists()
    code, record = sync_json()
    assert code == EXIT_WITHHELD, record
    assert statuses(record) == {**{name: "synced" for name in VIEWS}, "merchant_risk": "withheld"}
    assert "feature_keys_unique_merchant_risk" in reasons(record)["merchant_risk"]
    assert online_views(redis_url) == VIEWS - {"merchant_risk"}
    customer, spend = latest_spend_7d(warehouse)
    assert read_spend_7d(project, customer).value == pytest.approx(spend)


def test_model_rebuilt_after_its_tests_is_withheld_until_tested(env, redis_url):
    dbt(env, "run", "-s", "customer_spend")
    code, record = sync_json()
    assert code == EXIT_WITHHELD and statuses(record)["customer_spend"] == "withheld"
    reason = reasons(record)["customer_spend"]
    assert reason.startswith("built at ") and "but its tests last ran at " in reason
    assert "`dbt build -s customer_spend` or `dbt test -s customer_spend`" in reason
    assert "customer_spend" not in online_views(redis_url)
    dbt(env, "test", "-s", "customer_spend")
    code, record = sync_json()
    assert code == EXIT_OK and statuses(record)["customer_spend"] == "synced"
    customer, spend = latest_spend_7d(env / "target" / "featuremart.duckdb")
    assert read_spend_7d(env, customer).value == pytest.approx(spend)


def test_model_changed_since_its_last_build_is_withheld(env, redis_url):
    model = env / "models" / "features" / "customer_profile.sql"
    model.write_text(model.read_text() + "\n-- an edit that was parsed but never built\n")
    dbt(env, "parse")
    code, record = sync_json()
    assert code == EXIT_WITHHELD
    assert reasons(record)["customer_profile"].startswith("changed since its last build at ")
    assert online_views(redis_url) == VIEWS - {"customer_profile"}


def test_without_the_record_run_results_json_alone_decides(env, redis_url):
    """A project built before the hook existed (no table): the latest build's run_results.json vouches; after
    `dbt docs generate` nothing does, and the reason says where the record should have been."""
    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"))
    con.execute("drop table main.featuremart_build_results")
    con.close()
    code, record = sync_json("--dry-run")
    assert code == EXIT_OK and set(statuses(record).values()) == {"dry-run"}, record
    dbt(env, "docs", "generate")  # runs no hook: the table stays absent
    code, record = sync_json()
    assert code == EXIT_WITHHELD and set(statuses(record).values()) == {"withheld"}
    assert reasons(record)["customer_spend"] == (
        "never built: no dbt result of model customer_spend in target/run_results.json, and "
        "main.featuremart_build_results does not exist yet (featuremart's on-run-end hook creates it during "
        "`dbt build`): run `dbt build -s customer_spend`")
    assert online_views(redis_url) == set()


def test_a_build_with_empty_vouches_for_nothing(env, redis_url):
    dbt(env, "build", "--empty", "-s", "customer_profile")
    code, record = sync_json()
    assert code == EXIT_WITHHELD and reasons(record)["customer_profile"].startswith("its latest build at ")
    assert "ran with `--empty` (no rows)" in reasons(record)["customer_profile"]
    assert online_views(redis_url) == VIEWS - {"customer_profile"}
    (env / "target" / "run_results.json").unlink()  # the record alone says so too
    code, record = sync_json()
    assert code == EXIT_WITHHELD and "--empty" in reasons(record)["customer_profile"]


def test_two_rows_of_a_node_the_newer_counts(env, redis_url):
    """Two dbt runs writing the record at once may leave two rows of a node: an older failure does not count."""
    con = duckdb.connect(str(env / "target" / "featuremart.duckdb"))
    con.execute("insert into main.featuremart_build_results (unique_id, resource_type, status, message, "
                "completed_at) values ('model.featuremart.customer_spend', 'model', 'error', 'old', "
                "timestamp '2000-01-01 00:00:00')")
    con.close()
    (env / "target" / "run_results.json").unlink()
    code, record = sync_json()
    assert code == EXIT_OK and statuses(record)["customer_spend"] == "synced", record
    assert "customer_spend" in online_views(redis_url)


def test_a_consumer_project_records_results_with_no_line_of_its_own(tmp_path):
    """The hook comes with the package: a project that only installs featuremart gets the record."""
    from tests.conftest import ROOT

    project = tmp_path / "consumer"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text("name: gate_consumer\nversion: '1.0.0'\nconfig-version: 2\n"
                                             "profile: gate_consumer\nmodel-paths: [models]\n")
    (project / "profiles.yml").write_text("gate_consumer:\n  target: dev\n  outputs:\n    dev:\n"
                                          "      type: duckdb\n      path: consumer.duckdb\n      threads: 1\n")
    (project / "packages.yml").write_text(f"packages:\n  - local: {json.dumps(str(ROOT))}\n")
    (project / "models" / "scores.sql").write_text("select 'C1' as customer_id, 0.5 as score\n")
    (project / "models" / "scores.yml").write_text(
        "models:\n  - name: scores\n    columns:\n      - name: customer_id\n        data_tests: [not_null]\n")
    dbt(project, "deps")
    dbt(project, "build", "-s", "scores")
    con = duckdb.connect(str(project / "consumer.duckdb"), read_only=True)
    try:
        rows = con.sql("select unique_id, status, command from main.featuremart_build_results "
                       "order by unique_id").fetchall()
    finally:
        con.close()
    assert [(".".join(uid.split(".")[:3]), status, command) for uid, status, command in rows] == [
        ("model.gate_consumer.scores", "success", "build"),
        ("test.gate_consumer.not_null_scores_customer_id", "pass", "build")]


def test_each_reason_on_the_real_manifest(built_project):
    """The decision per view, from given results, on the reference project's real manifest and registry."""
    from datetime import datetime, timedelta

    from featuremart.gate import BuildGate, NodeResult, newest, results_relation

    with FeatureStore(built_project) as fs:
        view, manifest = fs.registry.views["customer_spend"], fs.manifest()
        relation_of_record = results_relation(fs.project)
    model, checksum = view.model_id, manifest.models[view.model_id].checksum
    tests = sorted(t.unique_id for t in manifest.tests_on(model))
    assert len(tests) >= 2
    t0 = datetime(2026, 1, 1, 12)

    def reason(build: tuple[str, datetime] | None, **outcomes: tuple[str, datetime]) -> str | None:
        results = {uid: NodeResult(uid, status, "Got 2 results", when) for uid, (status, when) in outcomes.items()}
        if build:
            results[model] = NodeResult(model, build[0], "boom", build[1], checksum)
        return BuildGate(manifest, results, relation_of_record).withheld_reason(view)

    later = t0 + timedelta(seconds=1)
    passed = {uid: ("pass", later) for uid in tests}
    assert reason(("success", t0), **passed) is None
    assert reason(("success", t0), **{**passed, tests[0]: ("warn", later)}) is None
    assert reason(None, **passed).startswith("never built: no dbt result of model customer_spend in ")
    assert reason(("error", t0), **passed) == ("its latest build failed at 2026-01-01 12:00:00 UTC (error): boom; "
                                              "fix it, then run `dbt build -s customer_spend`")
    name = tests[1].split(".")[2]
    assert reason(("success", t0), **{**passed, tests[1]: ("fail", later)}) == (
        f"test {name} failed at 2026-01-01 12:00:01 UTC: Got 2 results")
    assert reason(("success", t0), **{**passed, tests[1]: ("error", later)}).startswith(f"test {name} ended 'error'")
    assert reason(("success", t0), **{uid: passed[uid] for uid in tests[1:]}) == (
        f"test {tests[0].split('.')[2]} has never run: run `dbt build -s customer_spend` or "
        "`dbt test -s customer_spend`")
    # A test that failed before the latest build says nothing about it: the build is untested, not failed.
    rebuilt = reason(("success", t0 + timedelta(seconds=5)), **{**passed, tests[0]: ("fail", later)})
    assert rebuilt == ("built at 2026-01-01 12:00:05 UTC but its tests last ran at 2026-01-01 12:00:01 UTC, before "
                       "it: run `dbt build -s customer_spend` or `dbt test -s customer_spend`")
    # Merging the warehouse record with run_results.json: per node the newer result, whichever holds it.
    older, newer = NodeResult(model, "success", None, t0), NodeResult(model, "error", None, later)
    assert newest({model: older}, {model: newer})[model] is newer
    assert newest({model: newer}, {model: older})[model] is newer


def test_sync_json_prints_a_failed_record_when_redis_is_down(env, monkeypatch):
    monkeypatch.setenv("FEATUREMART_REDIS_URL", "redis://user:s3cret@127.0.0.1:1/0")
    code, out = run_cli("sync", "--json")
    assert code == EXIT_FAILED
    record = json.loads(out)
    assert record["status"] == "failed" and "Cannot reach the online store" in record["error"]
    assert "s3cret" not in out and record["views"] == []


@pytest.mark.usefixtures("postgres_dsn")
def test_the_gate_on_postgres(postgres_project, redis_url, monkeypatch):
    """The hook writes the record through dbt-postgres too; a model rebuilt after its tests is withheld there."""
    import psycopg2

    from demo.load_postgres import default_dsn

    project, pg_env = postgres_project
    for name, value in {**pg_env, "FEATUREMART_REDIS_URL": redis_url}.items():
        monkeypatch.setenv(name, value)
    with psycopg2.connect(default_dsn()) as connection, connection.cursor() as cursor:
        cursor.execute(f'select resource_type, status, count(*) from "{pg_env["FEATUREMART_PG_SCHEMA"]}".'
                       "featuremart_build_results group by 1, 2 order by 1, 2")
        recorded = cursor.fetchall()
    connection.close()
    assert ("model", "success") in {(kind, status) for kind, status, _ in recorded}
    assert ("test", "pass") in {(kind, status) for kind, status, _ in recorded}
    try:
        dbt(project, "run", "-s", "customer_spend", env=pg_env)
        code, record = sync_json("--project-dir", str(project))
        assert code == EXIT_WITHHELD and statuses(record)["customer_spend"] == "withheld"
        assert "but its tests last ran at" in reasons(record)["customer_spend"]
        assert online_views(redis_url) == VIEWS - {"customer_spend"}
    finally:
        dbt(project, "test", "-s", "customer_spend", env=pg_env)  # the shared project stays fully tested
    code, record = sync_json("--project-dir", str(project))
    assert code == EXIT_OK and statuses(record)["customer_spend"] == "synced"
    assert online_views(redis_url) == VIEWS

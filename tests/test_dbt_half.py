"""The dbt half: the data generator, the reference project's build, and featuremart as a dbt package.

The dbt tests run real dbt as a subprocess (``python -m dbt.cli.main``) on copies in tmp dirs, so they
never touch the repository's target/ or the demo data.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from demo.generate import generate

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_PROJECT = ROOT / "integration_tests"
# What a consumer installs: the repository root is the dbt package (integration_tests/ installs it as `../`).
PACKAGE_FILES = ("dbt_project.yml", "macros", "models")
AS_OF = dt.date(2024, 3, 1)


def _read(data_dir: Path) -> dict:
    return {name: pq.read_table(data_dir / f"{name}.parquet") for name in ("customers", "merchants", "transactions")}


def _dbt(args: list[str], project_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run dbt in ``project_dir`` with its own profiles.yml, logs and target under it."""
    full_env = {
        **os.environ,
        "DBT_LOG_PATH": str(project_dir / "logs"),
        "DBT_TARGET_PATH": str(project_dir / "target"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_USE_COLORS": "false",
        "DBT_PARTIAL_PARSE": "false",
        **(env or {}),
    }
    command = [sys.executable, "-m", "dbt.cli.main", *args, "--project-dir", str(project_dir)]
    command += ["--profiles-dir", str(project_dir)]
    return subprocess.run(command, cwd=project_dir, env=full_env, capture_output=True, text=True, timeout=600)


def _unique_ids(project_dir: Path) -> list[str]:
    return [result["unique_id"] for result in json.loads((project_dir / "target" / "run_results.json").read_text())["results"]]


def _statuses(project_dir: Path) -> dict[str, str]:
    results = json.loads((project_dir / "target" / "run_results.json").read_text())["results"]
    return {result["unique_id"].split(".")[2]: result["status"] for result in results}


# --- generator -------------------------------------------------------------------------------------------


def test_generator_is_deterministic(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", customers=300, seed=7, as_of=AS_OF)
    second = generate(tmp_path / "b", customers=300, seed=7, as_of=AS_OF)
    assert first == second
    a, b = _read(tmp_path / "a"), _read(tmp_path / "b")
    for name in a:
        assert a[name].equals(b[name]), name
    other = _read(tmp_path / "c") if generate(tmp_path / "c", customers=300, seed=8, as_of=AS_OF) else None
    assert not a["transactions"].equals(other["transactions"])


def test_generator_shape(tmp_path: Path) -> None:
    counts = generate(tmp_path, customers=400, seed=42, as_of=AS_OF)
    assert counts["customers"] == 400
    assert counts["merchants"] == 20
    assert 400 * 3 < counts["transactions"] < 400 * 8
    tables = _read(tmp_path)
    customers, transactions = tables["customers"].to_pylist(), tables["transactions"].to_pylist()
    assert customers[123]["customer_id"] == "C0000123"
    assert tables["merchants"]["merchant_id"][5].as_py() == "M00005"
    end = dt.datetime.combine(AS_OF, dt.time())
    assert all(end - dt.timedelta(days=60) <= t["txn_ts"] < end for t in transactions)
    assert all(t["ingested_at"] >= t["txn_ts"] for t in transactions)
    assert any(t["ingested_at"] - t["txn_ts"] > dt.timedelta(hours=1) for t in transactions)
    assert {t["status"] for t in transactions} == {"approved", "declined"}
    assert any(c["country"] is None for c in customers)
    signup = {c["customer_id"]: c["signup_ts"] for c in customers}
    assert all(t["txn_ts"] >= signup[t["customer_id"]] for t in transactions)


# --- the reference project -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the root dbt project with 300 customers of generated data."""
    project = tmp_path_factory.mktemp("reference_project")
    for name in ("dbt_project.yml", "profiles.yml", "features.yml"):
        shutil.copy(ROOT / name, project / name)
    for name in ("models", "macros"):
        shutil.copytree(ROOT / name, project / name)
    generate(project / "data" / "raw", customers=300, seed=42)
    return project


@pytest.mark.integration
def test_reference_project_builds_on_duckdb(reference_project: Path) -> None:
    env = {
        "FEATUREMART_TARGET": "dev",
        "FEATUREMART_DATA_DIR": str(reference_project / "data" / "raw"),
        "FEATUREMART_DUCKDB_PATH": str(reference_project / "target" / "featuremart.duckdb"),
    }
    result = _dbt(["build"], reference_project, env)
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = _statuses(reference_project)
    assert set(statuses.values()) <= {"success", "pass", "no-op"}, statuses
    for model in ("customer_spend", "merchant_risk", "customer_profile", "customer_merchant_pair", "customer_embedding"):
        assert statuses[model] == "success"
    assert "deprecat" not in result.stdout.lower(), result.stdout


@pytest.mark.integration
@pytest.mark.postgres
def test_reference_project_builds_on_postgres(reference_project: Path, postgres_dsn: str) -> None:
    import psycopg2

    from demo.load_postgres import load

    suffix = uuid.uuid4().hex[:8]
    raw_schema, schema = f"fm_test_raw_{suffix}", f"fm_test_{suffix}"
    try:
        load(reference_project / "data" / "raw", postgres_dsn, schema=raw_schema)
        env = {"FEATUREMART_TARGET": "postgres", "FEATUREMART_RAW_SCHEMA": raw_schema, "FEATUREMART_PG_SCHEMA": schema}
        result = _dbt(["build"], reference_project, env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert set(_statuses(reference_project).values()) <= {"success", "pass", "no-op"}
    finally:
        with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
            for name in (raw_schema, schema):
                cursor.execute(f'drop schema if exists "{name}" cascade')
        connection.close()


# --- featuremart as a dbt package ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """integration_tests/ as committed (packages.yml `- local: ../`, zero adoption lines), after `dbt deps`.

    It is copied into a stand-in for the repository whose package files link to the real ones, so dbt
    writes its target/, logs and dbt_packages/ under a temp dir and the packages.yml is the committed one.
    """
    repo = tmp_path_factory.mktemp("package_repo")
    for name in PACKAGE_FILES:
        (repo / name).symlink_to(ROOT / name)
    project = repo / "integration_tests"
    shutil.copytree(
        PACKAGE_PROJECT, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "package-lock.yml")
    )
    result = _dbt(["deps"], project)
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.mark.integration
def test_package_project_does_not_build_reference_models(package_project: Path) -> None:
    result = _dbt(["ls", "--resource-type", "all", "--output", "json", "--quiet"], package_project)
    assert result.returncode == 0, result.stdout + result.stderr
    nodes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert nodes
    assert {node["package_name"] for node in nodes} == {"featuremart_consumer"}
    assert "duplicate_card_spend" not in {node["name"] for node in nodes}  # left out by the default selector


@pytest.mark.integration
def test_package_adds_only_macros_with_zero_adoption_lines(package_project: Path) -> None:
    """The consumer's dbt_project.yml says nothing about featuremart, yet it gets no model, source, exposure
    or test of the reference project (only the hook recording build results) (so `dbt source freshness` checks none of ours either), and its own
    `models:` block still decides how its feature tables materialize."""
    consumer = yaml.safe_load((package_project / "dbt_project.yml").read_text())
    for block in ("models", "seeds", "sources", "exposures", "data_tests", "tests"):
        assert "featuremart" not in (consumer.get(block) or {}), f"an adoption line in {block}:"
    result = _dbt(["parse"], package_project)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((package_project / "target" / "manifest.json").read_text())
    enabled = {
        unique_id: node
        for kind in ("nodes", "sources", "exposures", "metrics", "semantic_models", "saved_queries", "unit_tests")
        for unique_id, node in manifest.get(kind, {}).items()
    }
    ours = sorted(unique_id for unique_id, node in enabled.items() if node["package_name"] == "featuremart")
    # Only the on-run-end hook that records build results for the sync's gate (docs/operations.md).
    assert ours == ["operation.featuremart.featuremart-on-run-end-0"], f"featuremart nodes in a consumer: {ours}"
    disabled = {unique_id.split(".")[0] for unique_id in manifest["disabled"] if ".featuremart." in unique_id}
    assert {"model", "source", "exposure", "test"} <= disabled  # they were seen, and switched off
    macros = {macro["name"] for macro in manifest["macros"].values() if macro["package_name"] == "featuremart"}
    assert {"test_feature_keys_unique", "test_feature_freshness", "training_set"} <= macros
    assert manifest["nodes"]["model.featuremart_consumer.card_spend"]["config"]["materialized"] == "table"
    freshness = _dbt(["source", "freshness"], package_project)
    assert freshness.returncode == 0, freshness.stdout + freshness.stderr
    assert "raw." not in freshness.stdout


@pytest.mark.integration
def test_package_project_builds(package_project: Path) -> None:
    result = _dbt(["build"], package_project)
    assert result.returncode == 0, result.stdout + result.stderr
    statuses = _statuses(package_project)
    assert statuses["card_spend"] == "success"
    assert set(statuses.values()) <= {"success", "pass", "no-op"}, statuses
    # Nothing of the package ran but its hook recording build results (docs/operations.md).
    ours = {u for u in _unique_ids(package_project) if u.split(".")[1] == "featuremart"}
    assert ours == {"operation.featuremart.featuremart-on-run-end-0"}, ours
    with duckdb.connect(str(package_project / "target" / "consumer.duckdb"), read_only=True) as connection:
        kind = connection.execute("select table_type from information_schema.tables where table_name = 'card_spend'")
        assert kind.fetchall() == [("BASE TABLE",)]  # the consumer's `models:` block decided, not ours
    # The inverted unique test on the broken seed passes because it found the collisions, and says which.
    assert "featuremart: duplicate_card_events has 2 duplicate (customer_id, event_date)" in result.stdout


@pytest.mark.integration
def test_package_tests_fail_when_they_must(package_project: Path) -> None:
    result = _dbt(["build", "--select", "tag:expect_failure"], package_project)
    assert result.returncode != 0, result.stdout
    assert (
        "featuremart: duplicate_card_spend has 2 duplicate (customer_id, event_ts): "
        "customer_id=C0000003 event_ts=2024-01-02 00:00:00 (3 rows), "
        "customer_id=C0000001 event_ts=2024-01-01 00:00:00 (2 rows)"
    ) in result.stdout
    statuses = _statuses(package_project)
    assert statuses["featuremart_feature_keys_unique_duplicate_card_spend_customer_id__event_ts"] == "fail"
    assert statuses["freshness_aging_warns"] == "warn"
    assert statuses["freshness_stale_errors"] == "fail"
    assert statuses["freshness_warn_only_warns"] == "warn"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{keys: customer_id, timestamp: event_ts}", "feature_keys_unique: `keys` must be a list of column names"),
        ("{keys: [customer_id], timestamp: [event_ts]}", "feature_keys_unique: `timestamp` must be a column name"),
        ("{keys: [customer_id]}", "feature_keys_unique: the argument `timestamp` is required, e.g. arguments: {timestamp: event_ts}"),
        ("{timestamp: event_ts}", "feature_keys_unique: the argument `keys` is required, e.g. arguments: {keys: [customer_id]}"),
    ],
)
def test_bad_test_arguments_name_the_test_and_value(package_project: Path, tmp_path: Path, arguments: str, message: str) -> None:
    project = tmp_path / "consumer"
    shutil.copytree(package_project, project, symlinks=True, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "models" / "bad_arguments.yml").write_text(
        "version: 2\nmodels:\n  - name: card_spend\n    data_tests:\n"
        f"      - featuremart.feature_keys_unique:\n          arguments: {arguments}\n"
    )
    result = _dbt(["parse"], project)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{timestamp: event_ts}", "feature_freshness: set warn_after or error_after"),
        ("{timestamp: event_ts, warn_after: {count: 2, period: week}}", "feature_freshness: `warn_after` must look like"),
        ("{warn_after: {count: 2, period: day}}", "feature_freshness: the argument `timestamp` is required"),
    ],
)
def test_bad_freshness_arguments(package_project: Path, tmp_path: Path, arguments: str, message: str) -> None:
    project = tmp_path / "consumer"
    shutil.copytree(package_project, project, symlinks=True, ignore=shutil.ignore_patterns("target", "logs"))
    (project / "models" / "bad_arguments.yml").write_text(
        "version: 2\nmodels:\n  - name: card_spend\n    data_tests:\n"
        f"      - featuremart.feature_freshness:\n          arguments: {arguments}\n"
    )
    result = _dbt(["parse"], project)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr

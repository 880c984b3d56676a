"""Shared fixtures: a private redis-server per session, and the reference project built for real.

Tests never touch a Redis they did not start, and run dbt on a copy of the project in a temp directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import pytest

from tests.redis_server import RedisCluster, RedisServer

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("dbt_project.yml", "profiles.yml", "features.yml", "models", "macros")
DEMO_CUSTOMERS = 300
AS_OF = date.today()
#: Loaded dbt projects are cached (featuremart.dbtcore.load_cache_dir) per test session, not in ~/.cache.
os.environ.setdefault("FEATUREMART_CACHE_DIR", tempfile.mkdtemp(prefix="fm-test-cache-"))


def dbt(project_dir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real dbt CLI on a project directory; returns the completed process (output captured)."""
    cmd = [str(Path(sys.executable).with_name("dbt")), *args, "--project-dir", str(project_dir),
           "--profiles-dir", str(project_dir)]
    full_env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=project_dir, capture_output=True, text=True, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return proc


def nullable(table):
    """`table` with every field nullable: featuremart's training-set Parquet marks the columns DuckDB knows are
    never null as required (docs/training-sets.md); compare with tables read elsewhere on names, types, values."""
    import pyarrow as pa

    return table.cast(pa.schema([field.with_nullable(True) for field in table.schema]))


def copy_project(dest: Path) -> Path:
    """A copy of the reference project's dbt files (not target/, not data/) in `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    return dest


def build_reference_project(dest: Path, customers: int = DEMO_CUSTOMERS) -> Path:
    from demo.generate import generate

    copy_project(dest)
    generate(dest / "data" / "raw", customers=customers, seed=7, as_of=AS_OF)
    dbt(dest, "build")
    return dest


@pytest.fixture(scope="session")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the session's private server (which nothing else uses)."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster():
    """A private Redis Cluster for the session: three masters on free loopback ports (tests/redis_server.py)."""
    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(redis_cluster):
    """The URL of one master of the session's cluster, every master flushed, every node up and agreeing."""
    redis_cluster.heal()
    redis_cluster.wait_ok()
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture(scope="session")
def built_project(tmp_path_factory):
    """The reference project, built once per session with `dbt build` on DuckDB. Treat it as read-only."""
    return build_reference_project(tmp_path_factory.mktemp("reference"))


@pytest.fixture
def project(built_project, tmp_path):
    """A private copy of the built project (its target/ included), free to change."""
    dest = tmp_path / "project"
    shutil.copytree(built_project, dest, ignore=shutil.ignore_patterns("logs"))
    return dest


def in_ci() -> bool:
    """CI sets CI=true (GitHub Actions, GitLab, .ci/run): there every test must run, none may be skipped."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip (with the reason) where a service is missing on a laptop; fail in CI, where a skip would hide it."""
    if in_ci():
        pytest.fail(f"CI=true, so this test must run, but: {reason}", pytrace=False)
    pytest.skip(reason)


def _fail_skips_in_ci(report) -> None:
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true, so this test must run, but it was skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped test fails, whatever skipped it (a test's own "no PostgreSQL" check included)."""
    _fail_skips_in_ci((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """In CI a skipped module (e.g. `pytest.importorskip` of a missing test dependency) fails too."""
    _fail_skips_in_ci((yield).get_result())


@pytest.fixture(scope="session")
def postgres_dsn():
    """The local PostgreSQL server's DSN. Where none answers the test is skipped with the reason (never
    passed); in CI (CI=true) it fails instead: .ci/run starts PostgreSQL before the tests."""
    psycopg2 = pytest.importorskip("psycopg2")
    from demo.load_postgres import default_dsn

    dsn = default_dsn()
    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
    except psycopg2.OperationalError as error:
        skip_or_fail_in_ci(f"no PostgreSQL server reachable at {_redacted(dsn)} "
                           f"(set PGHOST/PGPORT/PGUSER/PGDATABASE): {str(error).strip()}")
    return dsn


def _redacted(dsn: str) -> str:
    return " ".join(part for part in dsn.split() if not part.startswith("password="))


@pytest.fixture(scope="session")
def postgres_project(tmp_path_factory, postgres_dsn):
    """The reference project built on PostgreSQL in throwaway schemas (dropped afterwards), same data as
    `built_project`. Yields (project dir, env vars that select its target and schemas)."""
    import uuid

    import psycopg2

    from demo.load_postgres import load

    project = copy_project(tmp_path_factory.mktemp("reference_pg"))
    from demo.generate import generate

    generate(project / "data" / "raw", customers=DEMO_CUSTOMERS, seed=7, as_of=AS_OF)
    suffix = uuid.uuid4().hex[:8]
    env = {"FEATUREMART_TARGET": "postgres", "FEATUREMART_RAW_SCHEMA": f"fm_raw_{suffix}",
           "FEATUREMART_PG_SCHEMA": f"fm_{suffix}"}
    try:
        load(project / "data" / "raw", postgres_dsn, schema=env["FEATUREMART_RAW_SCHEMA"])
        dbt(project, "build", env=env)
        yield project, env
    finally:
        with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
            for schema in (env["FEATUREMART_RAW_SCHEMA"], env["FEATUREMART_PG_SCHEMA"]):
                cursor.execute(f'drop schema if exists "{schema}" cascade')
        connection.close()


def spark_env(project: Path) -> dict[str, str]:
    """The environment that selects the `spark` target of a project copy, its Spark files under its target/,
    and the settings that suit the tests' small data (no code generation, one shuffle partition)."""
    return {"FEATUREMART_TARGET": "spark", "FEATUREMART_SPARK_DIR": str(project / "target" / "spark"),
            "FEATUREMART_SPARK_CODEGEN": "false", "FEATUREMART_SPARK_PARTITIONS": "1"}


def require_java() -> None:
    """Skip (fail in CI) where Spark cannot run: no pyspark (the `spark` extra) or no Java runtime."""
    import importlib.util

    if importlib.util.find_spec("pyspark") is None:
        skip_or_fail_in_ci("pyspark is not installed: pip install -e '.[spark]'")
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        skip_or_fail_in_ci("no Java runtime for Spark (install Java 17, or set JAVA_HOME)")


@pytest.fixture(scope="session")
def spark_project(tmp_path_factory):
    """The reference project built on Apache Spark (dbt-spark session mode), once per test session, from the same
    generated data as `built_project`. Yields (project dir, env vars that select its target). Building it runs
    dbt in a subprocess, whose JVM and Derby metastore are gone when it exits: the test process then starts the
    one SparkSession it may have."""
    require_java()
    project = copy_project(tmp_path_factory.mktemp("reference_spark"))
    from demo.generate import generate

    generate(project / "data" / "raw", customers=DEMO_CUSTOMERS, seed=7, as_of=AS_OF)
    env = spark_env(project)
    # built in Kolkata (the dbt process and its JVM's default zone): the profile pins Spark's session to UTC
    dbt(project, "build", env={**env, "TZ": "Asia/Kolkata"})
    return project, env

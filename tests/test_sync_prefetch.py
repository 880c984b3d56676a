"""A sync starts its first view's warehouse reads before the rest of its start-up (warehouse.Prefetch): what it
publishes equals a sync that does not; a view the build gate withholds still publishes nothing; a read the sync
turns out not to need is interrupted, not waited for; and the DuckDB file is free for `dbt build` afterwards."""

from __future__ import annotations

import time

import duckdb
import pytest
import redis

from featuremart import FeatureStore
from featuremart.online import keys
from featuremart.warehouse import DuckDBLimits, DuckDBWarehouse, temp_directory
from tests.conftest import dbt

pytestmark = pytest.mark.integration

SLOW = "select count(*) from range(100000000000) t(i) where hash(i) = 0"  # minutes, unless interrupted


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create table t as select i, i * 2 as j from range(50000) r(i)")
    wh = DuckDBWarehouse(path)
    yield wh
    wh.close()


def test_a_prefetch_hands_over_exactly_its_queries_results(warehouse):
    queries = ("select max(j) as m from t", "select i, j from t order by i")
    with warehouse.prefetch(queries, 1000) as early:
        whole, batches = early.take(queries)
        assert whole[0].column("m").to_pylist() == [99998]
        rows = [r for b in batches for r in b.column("i").to_pylist()]
    assert rows == list(range(50000))
    with warehouse.prefetch(("select * from missing_table",), 1000) as early:
        with pytest.raises(duckdb.CatalogException, match="missing_table"):
            early.take(("select * from missing_table",))


def test_a_prefetch_not_needed_is_interrupted_not_waited_for(warehouse):
    started = time.perf_counter()
    early = warehouse.prefetch((SLOW,), 1000)
    time.sleep(0.2)  # running
    assert early.take(("select 1",)) is None  # other queries: dropped
    early.close()  # idempotent
    assert time.perf_counter() - started < 10
    assert warehouse.con.execute("select count(*) from t").fetchone() == (50000,)  # the warehouse's own is fine
    warehouse.close()
    with duckdb.connect(str(warehouse.path)) as writer:  # read-write: no read-only connection of ours is left
        writer.execute("insert into t values (-1, -2)")


def _rows(url: str) -> dict[str, tuple[bytes, int]]:
    client = redis.Redis.from_url(url)
    found = {k: (client.get(k), client.pexpiretime(k)) for k in client.scan_iter(keys.row_key_pattern("fm"), 10_000)}
    client.close()
    return found


def test_a_prefetched_sync_publishes_what_an_unprefetched_one_does(project, redis_url, monkeypatch):
    started = []
    prefetch = DuckDBWarehouse.prefetch
    monkeypatch.setattr(DuckDBWarehouse, "prefetch", lambda self, *a: started.append(a[0]) or prefetch(self, *a))
    with FeatureStore(project, redis_url=redis_url) as fs:
        assert fs.sync().status == "success"
        assert len(started) == 1  # the first view's watermark and payload, or its payload alone
        assert fs.sync().status == "success"  # a rerun diffs the views without changed_at: prefetched again
    prefetched = _rows(redis_url)
    redis.Redis.from_url(redis_url).flushdb()
    (project / "target" / "featuremart" / "sync_state.duckdb").unlink()
    monkeypatch.setattr(DuckDBWarehouse, "prefetch", lambda self, *a: None)
    with FeatureStore(project, redis_url=redis_url) as fs:
        assert fs.sync().status == "success"
    assert prefetched and _rows(redis_url) == prefetched


def test_a_withheld_view_publishes_nothing_though_its_read_had_started(project, redis_url, monkeypatch):
    """The failed build of merchant_risk withholds it: its prefetched read is dropped, no key of it is written,
    and the DuckDB file is free for the next `dbt build` (no connection of the sync is left open)."""
    sql = project / "models" / "features" / "merchant_risk.sql"
    sql.write_text(f"select * from ({sql.read_text()}) as m union all select * from ({sql.read_text()}) as d "
                   "where merchant_id = 'M00001'")
    assert dbt(project, "build", check=False).returncode != 0
    started = []
    prefetch = DuckDBWarehouse.prefetch
    monkeypatch.setattr(DuckDBWarehouse, "prefetch", lambda self, *a: started.append(a[0]) or prefetch(self, *a))
    with FeatureStore(project, redis_url=redis_url) as fs:
        run = fs.sync(select=["merchant_risk"])
    assert started and "merchant_risk" in started[0][-1]
    assert run.status == "withheld" and run.views[0].status == "withheld", run
    assert redis.Redis.from_url(redis_url).keys("fm:{merchant_id=*}:merchant_risk:*") == []
    with duckdb.connect(str(project / "target" / "featuremart.duckdb")) as writer:  # read-write: fails if held
        writer.execute("select count(*) from main.merchant_risk").fetchone()


def test_a_sync_process_of_an_unchanged_project_loads_no_validator_or_progress_bar(project, redis_url):
    """Its features.yml and registry were validated by this process (featuremart.validated): a `featuremart sync
    --json` process reads them back and imports neither pydantic, yaml, rich's progress bar nor
    pyarrow.compute; and it publishes what it should."""
    import json
    import os
    import subprocess
    import sys

    with FeatureStore(project, redis_url=redis_url) as fs:
        fs.registry  # validated here; the child's key is the same (same files, working directory, cache dir)
    code = ("import sys, json\nfrom featuremart.cli import main\n"
            f"rc = main(['sync', '--json', '--project-dir', {str(project)!r}])\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'yaml')\n"
            "                or m in ('rich.progress', 'pyarrow.compute'))\n"
            "print(json.dumps([rc, loaded]), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "DO_NOT_TRACK": "1", "FEATUREMART_REDIS_URL": redis_url})
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [0, []], proc.stderr
    assert json.loads(proc.stdout)["status"] == "success"


def test_validation_errors_are_never_kept_and_an_edit_is_validated_again(project, tmp_path, monkeypatch):
    """A features.yml made invalid fails on every run (an error is not cached); fixed, it loads again; a
    registry kept for one manifest is not used for another (the edited model's new ttl is read)."""
    from featuremart.errors import ConfigProblems

    monkeypatch.setenv("FEATUREMART_CACHE_DIR", str(tmp_path / "cache"))
    yml = project / "features.yml"
    good = yml.read_text()
    assert FeatureStore(project).config.online_store.key_prefix == "fm"
    yml.write_text(good.replace("  online: true", "  online: yes please"))
    for _ in range(2):
        with pytest.raises(ConfigProblems, match="defaults.online"):
            FeatureStore(project)
    yml.write_text(good)
    with FeatureStore(project) as fs:
        ttl = fs.registry.views["merchant_risk"].ttl
    assert list((tmp_path / "cache" / "validated").glob("registry-*.pickle"))
    meta = project / "models" / "features" / "merchant_risk.yml"
    meta.write_text(meta.read_text().replace(f"ttl: {FeatureStore(project).registry.views['merchant_risk'].ttl_text}",
                                             "ttl: 3d"))
    dbt(project, "parse")
    with FeatureStore(project) as fs:
        assert fs.registry.views["merchant_risk"].ttl.days == 3 != ttl.days


def test_a_connection_that_spilled_can_be_bounded_again(tmp_path):
    """A prefetched aggregate that spilled to the temp directory, then the sync bounding the same connection
    with the same limits (as FeatureStore.sync does): DuckDB refuses to set a temp directory it has used, so the
    second bounding must not try, and the connection still answers."""
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create table t as select i from range(3000000) r(i)")
    wh = DuckDBWarehouse(path)
    (tmp_path / "state").mkdir()
    limits, spill = DuckDBLimits("32MB", 1), temp_directory(tmp_path / "state")
    wh.bound_memory(limits, spill)
    query = "select i % 1000000 as k, max(i) as m from t group by k"
    with wh.prefetch((query,), 100_000) as early:
        _, batches = early.take((query,))
        assert sum(b.num_rows for b in batches) == 1_000_000
    assert spill.exists()  # DuckDB creates it at its first spill
    wh.bound_memory(limits, spill)  # raised "Cannot switch temporary directory" before
    assert wh.con.execute("select count(*) from t").fetchone() == (3_000_000,)
    wh.close()

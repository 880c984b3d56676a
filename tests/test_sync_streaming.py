"""Bounded memory and parallel writes in the sync: a tiny DuckDB memory limit makes every step spill to disk and
the values read back still equal the warehouse; a write rejected on one of several connections stops them all
and publishes nothing; limits set in the environment are checked and named."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import duckdb
import pytest

from featuremart.errors import ConfigError
from featuremart.state import temp_directory
from featuremart.sync import _writers_from_env
from featuremart.warehouse import DuckDBLimits
from tests.test_sync import Harness

pytestmark = pytest.mark.integration


class SpillWatch:
    """Polls the sync's DuckDB temp directory and records the most bytes it ever held (DuckDB empties it)."""

    def __init__(self, folder: Path):
        self.folder, self.most = folder, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            try:
                size = sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())
            except FileNotFoundError:  # a temp file removed while counted
                continue
            self.most = max(self.most, size)

    def __enter__(self) -> SpillWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def memory_capped(client, headroom: int):
    """Our test server refuses writes (noeviction) once it holds `headroom` more bytes than now."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", client.info("memory")["used_memory"] + headroom)
    try:
        yield
    finally:
        client.config_set("maxmemory", 0)


@pytest.fixture
def wide(tmp_path, redis_url):
    """200k entities with a 200-byte string feature: about 60 MB staged, far over a 32 MB limit."""
    h = Harness(tmp_path, redis_url, features=("a", "b", "c"))
    h.sql("alter table feats add column c varchar")
    h.sql("insert into feats (customer_id, ts, a, b, c) select 'C' || i, ?, i, i / 4, "
          "repeat(chr((97 + i % 26)::integer), 200) from range(200000) t(i)", [h.t0])
    yield h
    h.store.close()


def test_a_tiny_memory_limit_spills_and_the_store_equals_the_warehouse(wide):
    """With 32 MB per DuckDB connection a full sync (streamed: nothing online yet), an unchanged rerun and a 1%
    change (both staged and diffed, spilling to <state dir>/duckdb_tmp) all complete, and every value read back
    from Redis equals the warehouse's."""
    tiny = DuckDBLimits("32MB", 1)
    first = wide.sync(limits=tiny)
    assert first.status == "success" and first.views[0].inserted == 200_000, first
    assert wide.online() == wide.expected()

    with SpillWatch(temp_directory(wide.root / "state")) as spill:
        again = wide.sync(limits=tiny, incremental=False)
    assert spill.most > 0, f"DuckDB should have spilled past its 32 MB limit; its temp dir held {spill.most}"
    assert again.status == "success" and (again.views[0].inserted, again.views[0].updated) == (0, 0)
    wide.sql("update feats set a = a + 1, ts = ts + interval 1 second where hash(customer_id) % 100 = 0")
    changed = wide.sync(limits=tiny, incremental=False)
    assert changed.status == "success" and 1_000 < changed.views[0].updated < 3_000, changed
    assert wide.online() == wide.expected()


def test_a_read_that_spills_on_a_fresh_runner_creates_its_temp_directory(tmp_path):
    """A fresh runner has no target/featuremart yet when the prefetched first read (warehouse.Prefetch) spills past
    its limit: DuckDB creates the temp directory but not its parents, so the limits create them (a sync of 10M
    entities failed here with "Failed to create directory")."""
    state_dir = tmp_path / "target" / "featuremart"
    con = duckdb.connect()
    DuckDBLimits("32MB", 1).apply(con, temp_directory(state_dir))
    con.execute("set enable_progress_bar = false")
    query = ("select count(*), max(n) from (select hash(i)::varchar || 'x' as s, count(*) as n from range(3000000) t(i) "
             "group by s)")  # 3M groups: past 32 MB, so it spills
    assert con.execute(query).fetchone() == (3_000_000, 1)
    assert temp_directory(state_dir).is_dir()
    con.close()


def test_a_memory_limit_too_small_fails_loudly_and_keeps_the_previous_values(wide):
    """A limit DuckDB cannot work within: the run fails naming the limit and how to raise it; what was served
    stays served, and a sync with the default limits converges."""
    assert wide.sync().status == "success"
    before = wide.online()
    wide.sql("update feats set a = a + 1")
    run = wide.sync(limits=DuckDBLimits("1MB", 1))
    assert run.status == "failed" and "FEATUREMART_DUCKDB_MEMORY_LIMIT" in run.error and "1MB" in run.error, run
    assert wide.online() == before
    assert wide.sync().status == "success" and wide.online() == wide.expected()


def test_a_write_rejected_on_one_of_several_connections_stops_all_and_publishes_nothing(harness, redis_server):
    """Four writers; Redis runs out of memory mid-way: the run fails naming the rejected key, no writer thread
    is left running, readers keep the previous registry and values, and the rerun converges."""
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(1000) t(i)",
                [harness.t0])
    assert harness.sync().status == "success"
    client = redis_server.client()
    registry_before = client.get("fm:registry")
    before = harness.online()
    harness.sql("update feats set a = a + 1000")
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(1000, 60000) t(i)",
                [harness.t0])
    with memory_capped(client, 500_000):
        run = harness.sync(writers=4)
    assert run.status == "failed" and "Redis rejected" in run.error and "fm:{customer_id=C" in run.error, run.error
    assert not [t for t in threading.enumerate() if t.name.startswith("featuremart-writer")]
    assert client.get("fm:registry") == registry_before
    online = harness.online()
    assert set(before) <= set(online)  # every entity still served (old or new value)
    rerun = harness.sync(writers=4)
    assert rerun.status == "success" and harness.online() == harness.expected()
    client.close()


@pytest.fixture
def harness(tmp_path, redis_url):
    h = Harness(tmp_path, redis_url)
    yield h
    h.store.close()


@pytest.mark.parametrize("name, value, named", [
    ("FEATUREMART_DUCKDB_MEMORY_LIMIT", "lots", "is not a size"),
    ("FEATUREMART_DUCKDB_THREADS", "0", "is not a positive whole number"),
    ("FEATUREMART_SYNC_WRITERS", "many", "is not a whole number from 1 to 64"),
])
def test_a_bad_limit_in_the_environment_is_named(monkeypatch, name, value, named):
    """What a sync reads from the environment (Syncer's defaults) is checked before anything runs."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}='{value}' {named}"):
        DuckDBLimits.from_env()
        _writers_from_env()


def test_limits_from_the_environment():
    assert DuckDBLimits.from_env({}) == DuckDBLimits()
    assert DuckDBLimits.from_env({"FEATUREMART_DUCKDB_MEMORY_LIMIT": "2GB", "FEATUREMART_DUCKDB_THREADS": "8"}) == \
        DuckDBLimits("2GB", 8)


def test_a_first_sync_streams_and_its_state_diffs_like_a_staged_one(harness, redis_server):
    """Nothing online: the rows are written as the warehouse is read (no diff). What it records is what a staged
    sync would: an unchanged rerun diffing every entity writes nothing, a change is found, and both equal the
    warehouse read back from Redis."""
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(50000) t(i)",
                [harness.t0])
    first = harness.sync()
    assert first.status == "success" and first.views[0].streamed and first.views[0].inserted == 50_000, first
    assert harness.online() == harness.expected()
    again = harness.sync(incremental=False)
    view = again.views[0]
    assert not view.streamed and (view.inserted, view.updated, view.unchanged) == (0, 0, 50_000), view
    harness.sql("update feats set a = a + 1, ts = ts + interval 1 second where hash(customer_id) % 10 = 0")
    changed = harness.sync(incremental=False)
    assert changed.status == "success" and 4_000 < changed.views[0].updated < 6_000, changed
    assert harness.online() == harness.expected()


def test_a_streamed_first_sync_killed_mid_write_then_rerun_converges(harness, redis_server):
    """SIGKILL while a first sync streams into an empty store: the state's open transaction is lost with the
    process (nothing half-recorded), the next run rebuilds the view from a SCAN of what was written and
    converges to the warehouse, keys and values."""
    import time

    from tests.test_sync import kill_sync_mid_write

    n = 200_000
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(?) t(i)",
                [harness.t0, n])
    client = redis_server.client()
    written = kill_sync_mid_write(harness, redis_server.url, client, 5_000)
    assert 5_000 < written < n, f"the sync should have been killed mid-write ({written} of {n} written)"
    assert client.get("fm:meta:{fm}:registry") is None  # nothing published
    time.sleep(2.5)  # the killed run's lock expires
    rerun = harness.sync()
    view = rerun.views[0]
    assert rerun.status == "success" and view.rebuilt and not view.streamed, rerun  # the SCAN found its keys
    assert view.inserted + view.updated == n, view
    assert harness.online() == harness.expected()
    unchanged = harness.sync(incremental=False)
    assert (unchanged.views[0].inserted, unchanged.views[0].updated) == (0, 0), unchanged
    client.close()


def test_a_streamed_first_sync_that_fails_after_some_slices_committed_converges(harness, redis_server,
                                                                                monkeypatch):
    """The streamed first sync commits its state every few batches (bounded memory). Redis rejects writes
    part-way: the run fails and publishes nothing; the slices it had committed are never diffed against (the
    view stays untrusted), and the next run rewrites what is missing and equals the warehouse."""
    import featuremart.state

    monkeypatch.setattr(featuremart.state, "STREAM_COMMIT_ROWS", 20_000)
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(150000) t(i)",
                [harness.t0])
    client = redis_server.client()
    with memory_capped(client, 8_000_000):
        failed = harness.sync(writers=1)
    assert failed.status == "failed" and "Redis rejected" in failed.error, failed
    assert client.get("fm:meta:{fm}:registry") is None
    written = len(harness.online())
    assert 0 < written < 150_000, f"the writes should have been refused part-way ({written} written)"
    rerun = harness.sync()
    view = rerun.views[0]
    assert rerun.status == "success" and view.rebuilt and not view.streamed, rerun
    assert harness.online() == harness.expected() and len(harness.online()) == 150_000
    client.close()


@pytest.mark.parametrize("configured, streaming", [("128MB", "48MB"), ("32MB", "32MB"), ("2GB", "48MB")])
def test_a_streamed_first_sync_appends_under_a_small_limit_then_restores_the_configured_one(tmp_path, configured,
                                                                                             streaming):
    """While a first sync only appends, the state connection's memory limit is the smaller of its own and
    STREAM_MEMORY_LIMIT (written blocks are not cached up to 128 MB); the configured limit is back afterwards,
    also when the streamed sync fails, since the diffs of later syncs need it."""
    import duckdb

    from featuremart.state import SyncState

    def limit(con) -> str:
        return con.execute("select current_setting('memory_limit')").fetchall()[0][0]

    reference = duckdb.connect()
    expected = {}
    for size in (configured, streaming):
        reference.execute("set memory_limit = ?", [size])
        expected[size] = limit(reference)
    reference.close()
    state = SyncState(tmp_path / "state.duckdb", limits=DuckDBLimits(configured, 1))
    try:
        assert limit(state.con) == expected[configured]
        with state.first_sync("v"):
            assert limit(state.con) == expected[streaming]
            state.commit_first("v", "v1", "store")
        assert limit(state.con) == expected[configured]
        with pytest.raises(RuntimeError, match="injected"), state.first_sync("v"):
            assert limit(state.con) == expected[streaming]
            raise RuntimeError("injected: a write failed mid-stream")
        assert limit(state.con) == expected[configured]
    finally:
        state.close()

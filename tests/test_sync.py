"""Sync correctness on a real DuckDB file and a real redis-server: incremental diffs against a brute-force
expected state, corrections to older rows, schema switches readers never see half-done, locks and faults, the
mass-delete guard, unreadable state files, and snapshots every reader can load."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featuremart.config import Entity
from featuremart.gate import BuildGate, NodeResult
from featuremart.manifest import Manifest
from featuremart.online import keys
from featuremart.online.reader import OnlineReader
from featuremart.online.store import OnlineStore
from featuremart.registry import Feature, FeatureView, Registry, Relation
from featuremart.sql import to_us
from featuremart.sync import Syncer
from featuremart.warehouse import DuckDBWarehouse

TTL = timedelta(hours=1)
FRESH_AGES = [timedelta(minutes=m) for m in (5, 10, 20, 30)]  # well inside the ttl during a test
STALE_AGES = [timedelta(minutes=m) for m in (90, 180)]  # well past it


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Harness:
    """One feature view in a DuckDB file, synced by the real Syncer into a real Redis."""

    def __init__(self, root: Path, redis_url: str, features=("a", "b"), create: bool = True):
        self.root = root
        self.db = root / "warehouse.duckdb"
        self.t0 = utcnow()
        self.generated_at = ""  # the manifest's generated_at
        if create:
            con = duckdb.connect(str(self.db))
            con.execute("create table feats (customer_id varchar, ts timestamp, a bigint, b double, "
                        "changed_at timestamp default now()::timestamp)")
            con.close()
        self.store = OnlineStore.connect(redis_url, embedded_dir=root, prefix="fm")
        self.set_features(features)

    def set_features(self, names, view_name: str = "feats", changed_at: str | None = None) -> None:
        types = {"a": "int", "b": "float", "c": "string"}
        self.view = FeatureView(
            name=view_name, changed_at=changed_at, entities=("customer",), join_keys=(("customer_id", "string"),), timestamp="ts", ttl=TTL,
            relation=Relation(None, "main", "feats"), model_id="model.t.feats",
            features=tuple(Feature("feats", n, types[n]) for n in names))
        self.registry = Registry({"customer": Entity("customer", (("customer_id", "string"),))},
                                 {view_name: self.view}, {})

    def sql(self, query: str, params=None) -> None:
        con = duckdb.connect(str(self.db))
        con.execute(query, params or [])
        con.close()

    def sync(self, build_status: str = "success", **kw):
        manifest = Manifest(self.db, 12, "1.11", self.generated_at, "duckdb", "checksum", {}, (), {}, {})
        built = {self.view.model_id: NodeResult(self.view.model_id, build_status, None, utcnow())}  # no tests attached
        gate = BuildGate(manifest, built, Relation(None, "main", "featuremart_build_results"))
        lock_ttl = kw.pop("lock_ttl", 30)
        guard = {k: kw.pop(k) for k in ("allow_mass_delete", "max_delete_fraction", "now", "limits", "writers")
                 if k in kw}
        with DuckDBWarehouse(self.db) as wh:
            return Syncer(self.registry, manifest, gate, wh, self.store, self.root / "state",
                          lock_ttl=lock_ttl, **guard).run([self.view], **kw)

    def online(self) -> dict[str, list]:
        keys = sorted(k.decode() for k in self.store.scan("fm:{*}:feats:*"))
        return {k: json.loads(v) for k, v in zip(keys, self.store.mget(keys))}

    def expected(self) -> dict[str, list]:
        """Brute force: per entity, its latest row not after now, if within the ttl."""
        now = utcnow()
        con = duckdb.connect(str(self.db), read_only=True)
        cols = ", ".join(f.name for f in self.view.features)
        rows = con.execute(f"select customer_id, ts, {cols} from feats").fetchall()  # changed_at is no feature
        con.close()
        latest: dict[str, tuple] = {}
        for row in rows:
            if row[1] <= now and (row[0] not in latest or row[1] > latest[row[0]][1]):
                latest[row[0]] = row
        return {f"fm:{{customer_id={c}}}:feats:{self.view.version}": [to_us(r[1]), *r[2:]]
                for c, r in latest.items() if r[1] >= now - TTL}


@pytest.fixture
def harness(tmp_path, redis_url):
    h = Harness(tmp_path, redis_url)
    yield h
    h.store.close()


def retract_latest(h: Harness, cid: str) -> None:
    """A correction: the entity's latest row was wrong and is deleted, so its latest row is now an older one."""
    h.sql("delete from feats where customer_id = ? and ts = (select max(ts) from feats where customer_id = ?)",
          [cid, cid])


operations = st.lists(st.tuples(
    st.sampled_from(["upsert", "upsert", "stale", "delete", "retract"]),
    st.integers(0, 7),  # entity
    st.sampled_from(range(len(FRESH_AGES))),
    st.integers(-8, 8),  # value
), min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(operations, min_size=1, max_size=4))
def test_incremental_sync_converges_to_the_brute_force_state(redis_server, steps):
    client = redis_server.client()
    client.flushall()
    root = Path(tempfile.mkdtemp())
    h = Harness(root, redis_server.url)
    try:
        for ops in steps:
            for op, entity, age, value in ops:
                cid = f"C{entity}"
                if op == "delete":
                    h.sql("delete from feats where customer_id = ?", [cid])
                elif op == "retract":
                    retract_latest(h, cid)
                else:
                    ages = FRESH_AGES if op == "upsert" else STALE_AGES
                    ts = h.t0 - ages[age % len(ages)]
                    h.sql("delete from feats where customer_id = ? and ts = ?", [cid, ts])
                    h.sql("insert into feats (customer_id, ts, a, b) values (?, ?, ?, ?)", [cid, ts, value, value / 4])
            before = h.online()
            run = h.sync(allow_mass_delete=True)  # the guard has its own tests
            assert run.status == "success", run
            expected = h.expected()
            assert h.online() == expected
            [v] = run.views
            changed = {k for k in expected if before.get(k) != expected[k]}
            assert v.inserted + v.updated == len(changed)
            assert v.deleted == len(set(before) - set(expected))
            again = h.sync().views[0]  # an unchanged rerun writes nothing
            assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)
    finally:
        h.store.close()
        shutil.rmtree(root)


def test_dry_run_counts_and_writes_nothing(harness):
    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 1, 0.5), ('C2', ?, 2, 1.5)", [harness.t0, harness.t0])
    run = harness.sync(dry_run=True)
    assert run.status == "dry-run" and (run.views[0].inserted, run.views[0].deleted) == (2, 0)
    assert harness.online() == {}
    assert harness.sync().views[0].inserted == 2
    harness.sql("delete from feats where customer_id = 'C1'")
    harness.sql("update feats set a = 3")
    dry = harness.sync(dry_run=True).views[0]
    assert (dry.inserted, dry.updated, dry.deleted) == (0, 1, 1)
    assert len(harness.online()) == 2


def test_full_refresh_rewrites_everything(harness):
    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 1, 0.5), ('C2', ?, 2, 1.5)", [harness.t0, harness.t0])
    harness.sync()
    v = harness.sync(full_refresh=True).views[0]
    assert v.updated == 2 and harness.online() == harness.expected()


def test_a_correction_to_an_older_latest_row_is_published(harness):
    """The warehouse is the truth: when an entity's latest row is removed, the older one it falls back to is
    served, with its own expiry (a value the warehouse no longer has is never served as present)."""
    new, old = harness.t0 - timedelta(minutes=5), harness.t0 - timedelta(minutes=20)
    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 2, 2.0), ('C1', ?, 1, 1.0)", [new, old])
    harness.sync()
    harness.sql("delete from feats where ts = ?", [new])  # the warehouse now says the latest row is older
    v = harness.sync().views[0]
    assert (v.status, v.updated) == ("synced", 1)
    assert harness.online() == harness.expected()
    [(key, value)] = harness.online().items()
    assert value[1:] == [1, 1.0]
    expire_at_ms = redis.Redis.from_url(harness.store.url).pexpiretime(key)
    assert expire_at_ms == to_us(old) // 1000 + int(TTL.total_seconds() * 1000)


def test_keys_expire_in_redis_at_event_time_plus_ttl(harness):
    ts = harness.t0 - timedelta(minutes=30)
    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 1, 0.5)", [ts])
    harness.sync()
    [key] = harness.online()
    client = redis.Redis.from_url(harness.store.url)
    expire_at_ms = client.pexpiretime(key)
    assert expire_at_ms == (to_us(ts) // 1000) + int(TTL.total_seconds() * 1000)


def test_a_store_that_lost_its_data_is_rewritten(harness, redis_server):
    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 1, 0.5)", [harness.t0])
    harness.sync()
    redis_server.client().flushall()  # e.g. a restarted server without persistence
    v = harness.sync().views[0]
    assert v.updated + v.inserted == 1 and harness.online() == harness.expected()


def test_second_sync_is_refused_while_one_holds_the_lock(harness):
    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 1, 0.5)", [harness.t0])
    with harness.store.lock("sync", 30):
        run = harness.sync()
    assert run.status == "failed" and "holds the lock" in run.error
    assert harness.sync().status == "success"


def test_schema_change_switches_atomically_for_readers(harness, redis_url):
    """Readers looping during a sync that adds a feature see all-old or all-new rows, never a mix or a gap."""
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(2000) t(i)", [harness.t0])
    harness.sync()
    reader_store = OnlineStore.connect(redis_url, embedded_dir=harness.root, prefix="fm")
    reader = OnlineReader(reader_store)
    entities = [{"customer_id": f"C{i}"} for i in range(0, 2000, 50)]
    seen, errors, stop = set(), [], threading.Event()

    def loop():
        while not stop.is_set():
            try:
                rows = reader.get(entities, features=["feats.*"])
            except Exception as exc:  # noqa: BLE001 - any failure is a finding
                errors.append(exc)
                return
            shapes = {tuple(sorted(r)) for r in rows}
            statuses = {v.status for r in rows for v in r.values()}
            seen.update(shapes)
            if len(shapes) != 1 or statuses != {"present"}:
                errors.append((shapes, statuses))

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        time.sleep(0.1)
        harness.sql("alter table feats add column c varchar default 'x'")
        harness.set_features(("a", "b", "c"))
        run = harness.sync()
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join()
        reader_store.close()
    assert run.status == "success" and run.views[0].version_switch
    assert not errors, errors[:3]
    assert seen == {("a", "b"), ("a", "b", "c")}
    assert all(k.endswith(harness.view.version) for k in harness.online())  # old version's keys are gone


def set_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_set", {}).get("calls", 0)


def wait_for_writes(client: redis.Redis, more_than: int, timeout: float = 60) -> int:
    """Block until the server has executed more than `more_than` SETs (writes of a running sync); returns them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            calls = set_calls(client)
            if calls > more_than:
                return calls
        except redis.RedisError:
            pass
        time.sleep(0.002)
    raise AssertionError("the sync never started writing")


def test_redis_killed_mid_write_then_rerun_converges(tmp_path):
    """Redis killed and restarted empty while the sync writes: the writer reconnects to a server that lost the
    acknowledged writes, so the sync fails (it never reports a partial store as success); the rerun converges."""
    from tests.redis_server import RedisServer

    with RedisServer() as server:
        h = Harness(tmp_path, server.url)
        h.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(300000) t(i)", [h.t0])
        client = server.client()
        at_kill: list[int] = []

        def restart_mid_write() -> None:
            wait_for_writes(client, 20_000)
            at_kill.append(client.dbsize())
            server.kill()
            server.restart()  # empty: no persistence

        restarter = threading.Thread(target=restart_mid_write)
        restarter.start()
        try:
            run = h.sync()
        finally:
            restarter.join()
        [written] = at_kill
        assert 20_000 <= written < 300_000, "Redis should have been restarted in the middle of the writes"
        assert run.status == "failed" and "restarted" in run.error and "127.0.0.1" in run.error, run
        assert client.get("fm:meta:{fm}:registry") is None  # nothing published on the new, incomplete server
        rerun = h.sync()
        assert rerun.status == "success" and rerun.views[0].inserted == 300_000
        assert h.online() == h.expected()
        client.close()
        h.store.close()


def test_failed_write_keeps_previous_values_and_state(harness, redis_server):
    """A sync that fails mid-way (here: Redis out of memory) leaves served values readable and is redone."""
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(1000) t(i)", [harness.t0])
    harness.sync()
    before = harness.online()
    harness.sql("update feats set a = a + 1000")
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(1000, 20000) t(i)", [harness.t0])
    client = redis_server.client()
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + 200_000)
    try:
        run = harness.sync()
    finally:
        client.config_set("maxmemory", 0)
    assert run.status == "failed" and "Redis rejected" in run.error and "maxmemory" in run.error
    online = harness.online()
    assert set(before) <= set(online)  # every entity still served (old or new value), none lost
    assert harness.sync().status == "success" and harness.online() == harness.expected()


def kill_sync_mid_write(harness: Harness, url: str, client: redis.Redis, after: int) -> int:
    """Run the harness's sync in another process (lock ttl 2 s) and SIGKILL it once it has written more than
    `after` values; returns how many SETs it had sent."""
    import subprocess
    import sys

    calls = set_calls(client)
    script = ("import sys; from pathlib import Path; from tests.test_sync import Harness; "
              "h = Harness(Path(sys.argv[1]), sys.argv[2], create=False); h.sync(lock_ttl=2)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(harness.root), url],
                            cwd=Path(__file__).resolve().parent.parent)
    wait_for_writes(client, calls + after)
    proc.kill()
    proc.wait()
    return set_calls(client) - calls


def test_sync_process_killed_mid_write_then_rerun_converges(harness, redis_server):
    """A sync killed with SIGKILL while it rewrites a populated store: every entity stays served (old or new
    value), its lock expires, and the next run converges."""
    n = 100_000
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(?) t(i)",
                [harness.t0 - timedelta(minutes=5), n])
    assert harness.sync().status == "success"
    before = harness.online()
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i + 1000000, i from range(?) t(i)",
                [harness.t0, n])
    after = harness.expected()
    client = redis_server.client()
    rewritten = kill_sync_mid_write(harness, redis_server.url, client, 5_000)
    assert 5_000 < rewritten < n, "the sync should have been killed mid-write"
    locked = harness.sync()
    assert locked.status == "failed" and "holds the lock" in locked.error
    online = harness.online()
    assert set(online) == set(before)  # nothing lost
    assert all(online[k] in (before[k], after[k]) for k in online)
    assert 0 < sum(online[k] == after[k] for k in online) < n  # some rewritten, some not yet
    time.sleep(2.5)
    rerun = harness.sync()
    assert rerun.status == "success" and rerun.views[0].rebuilt  # the killed run left the state untrusted
    assert harness.online() == harness.expected()


def test_a_renamed_view_replaces_the_old_one(harness):
    """The old name's keys and its statistics history go (the history described values no longer served)."""
    from featuremart.durable import StatsHistory

    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 1, 0.5), ('C2', ?, 2, 1.5)", [harness.t0, harness.t0])
    harness.sync()
    assert len(StatsHistory(harness.store).read("feats")) == 1
    harness.set_features(("a", "b"), view_name="spend")
    run = harness.sync()
    assert run.status == "success"
    assert {(v.view, v.status, v.inserted, v.deleted) for v in run.views} == {
        ("spend", "synced", 2, 0), ("feats", "removed", 0, 2)}
    keys = sorted(k.decode() for k in harness.store.scan("fm:{*"))
    assert keys == [f"fm:{{customer_id=C{i}}}:spend:{harness.view.version}" for i in (1, 2)]
    history = StatsHistory(harness.store)
    assert history.read("feats") == [] and [r["view"] for r in history.read("spend")] == ["spend"]


def test_sync_over_tls(tmp_path):
    """rediss:// end to end: the hand-encoded bulk writes and the reads go through TLS like everything else."""
    import subprocess

    from tests.redis_server import free_port, redis_server_binary

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen([redis_server_binary(), "--port", "0", "--tls-port", str(port), "--tls-cert-file",
                               cert, "--tls-key-file", key, "--tls-ca-cert-file", cert, "--tls-auth-clients", "no",
                               "--save", "", "--appendonly", "no", "--dir", tmp_path],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None:
                    pytest.skip(f"this redis-server has no TLS support: {server.stdout.read()[-300:]}")
                assert time.monotonic() < deadline, "TLS redis-server did not start"
                time.sleep(0.05)
        h = Harness(tmp_path, url)
        h.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(30000) t(i)", [h.t0])
        assert h.sync().status == "success"
        assert h.online() == h.expected()
        reader = OnlineReader(h.store)
        [row] = reader.get([{"customer_id": "C7"}], features=["feats.*"])
        assert (row["a"].value, row["a"].status) == (7, "present")
        h.store.close()
    finally:
        server.kill()
        server.wait()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.lists(st.tuples(st.sampled_from(["upsert", "upsert", "stale", "correct"]), st.integers(0, 7),
                                         st.sampled_from(range(len(FRESH_AGES))), st.integers(-8, 8)),
                               min_size=1, max_size=6), min_size=2, max_size=4))
def test_incremental_sync_with_changed_at_converges(redis_server, steps):
    """A view with a changed_at column: after the first sync, only changed entities are read, and the online
    state still equals the brute-force one (rows are added and rewritten, and corrected so that an entity's
    latest row becomes older; deletions need --no-incremental)."""
    client = redis_server.client()
    client.flushall()
    root = Path(tempfile.mkdtemp())
    h = Harness(root, redis_server.url)
    h.set_features(("a", "b"), changed_at="changed_at")
    corrections, watermarked = 0, False
    try:
        for n, ops in enumerate(steps):
            for op, entity, age, value in ops:
                if op == "correct":  # the latest row's time was wrong: it moves back, older than every fresh row
                    corrections += 1
                    h.sql("update feats set ts = ?, a = a + 100, changed_at = now()::timestamp where customer_id = ? "
                          "and ts = (select max(ts) from feats where customer_id = ?)",
                          [h.t0 - timedelta(minutes=45, seconds=corrections), f"C{entity}", f"C{entity}"])
                    continue
                ages = FRESH_AGES if op == "upsert" else STALE_AGES
                ts = h.t0 - ages[age % len(ages)]
                h.sql("delete from feats where customer_id = ? and ts = ?", [f"C{entity}", ts])
                h.sql("insert into feats values (?, ?, ?, ?, now()::timestamp)", [f"C{entity}", ts, value, value / 4])
            con = duckdb.connect(str(h.db), read_only=True)
            has_rows = con.execute("select count(*) from feats").fetchall()[0][0] > 0
            con.close()
            run = h.sync()
            assert run.status == "success", run
            assert run.views[0].incremental == watermarked  # once a sync has seen a changed_at
            watermarked = watermarked or has_rows
            assert h.online() == h.expected()
    finally:
        h.store.close()
        shutil.rmtree(root)


def test_incremental_reads_only_changed_entities_and_a_full_diff_finds_deletes(harness):
    harness.set_features(("a", "b"), changed_at="changed_at")
    harness.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(1000) t(i)",
                [harness.t0 - timedelta(minutes=10)])
    first = harness.sync().views[0]
    assert (first.incremental, first.inserted) == (False, 1000)
    harness.sql("insert into feats (customer_id, ts, a, b) values ('C1', ?, 100, 1.0), ('C2000', ?, 1, 1.0)",
                [harness.t0, harness.t0])
    harness.sql("delete from feats where customer_id = 'C5'")
    v = harness.sync().views[0]
    assert v.incremental and (v.inserted, v.updated, v.unchanged, v.deleted) == (1, 1, 0, 0)
    full = harness.sync(incremental=False).views[0]
    assert not full.incremental and (full.inserted, full.updated, full.deleted) == (0, 0, 1)
    assert harness.online() == harness.expected()


# ---- the mass-delete guard ---------------------------------------------------------------------------------------

def insert_entities(h: Harness, n: int, age: timedelta = timedelta(minutes=5)) -> None:
    h.sql("insert into feats (customer_id, ts, a, b) select 'C' || i, ?, i, i / 4 from range(?) t(i)", [h.t0 - age, n])


def test_a_view_rebuilt_empty_is_withheld_and_keeps_its_values(harness):
    insert_entities(harness, 100)
    assert harness.sync().status == "success"
    before = harness.online()
    harness.sql("delete from feats")  # e.g. an upstream table loaded empty: the model builds, its tests pass
    run = harness.sync()
    [v] = run.views
    assert run.status == "withheld" and v.status == "withheld"
    assert "would delete 100 of its 100 entities online (100%)" in v.reason and "--allow-mass-delete" in v.reason
    assert harness.online() == before  # nothing written, nothing deleted
    assert harness.sync(dry_run=True).views[0].status == "withheld"  # a dry run says so too
    run = harness.sync(allow_mass_delete=True)
    assert run.status == "success" and run.views[0].deleted == 100 and harness.online() == {}


def test_mass_delete_threshold_defaults_to_half_and_is_configurable(harness):
    insert_entities(harness, 100)
    harness.sync()
    harness.sql("delete from feats where a < 50")  # exactly half: allowed
    assert harness.sync().views[0].deleted == 50
    harness.sql("delete from feats where a < 60")  # 10 of 50: allowed by default, not with 0.1
    assert harness.sync(max_delete_fraction=0.1).views[0].status == "withheld"
    harness.view = replace(harness.view, max_delete_fraction=1.0)  # the model's meta turns the guard off
    harness.registry.views[harness.view.name] = harness.view
    harness.sql("delete from feats")
    run = harness.sync(max_delete_fraction=0.1)
    assert run.status == "success" and run.views[0].deleted == 50 and harness.online() == {}


def test_entities_past_their_ttl_are_not_counted_as_a_mass_deletion(harness):
    insert_entities(harness, 10)
    harness.sync()
    run = harness.sync(now=harness.t0 + 2 * TTL)  # by then every value expired: deleting them loses nothing
    assert run.status == "success" and run.views[0].deleted == 10


def test_a_zero_ttl_is_refused(harness):
    insert_entities(harness, 10)
    harness.sync()
    before = harness.online()
    harness.view = replace(harness.view, ttl=timedelta(0))
    harness.registry.views[harness.view.name] = harness.view
    run = harness.sync()
    assert run.status == "withheld" and "ttl is 0" in run.views[0].reason
    assert harness.online() == before


# ---- the state: unreadable, lost, or not describing the store ------------------------------------------------------

@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_an_unreadable_state_is_named_and_full_refresh_rebuilds_it(harness, damage):
    import os

    insert_entities(harness, 20)
    harness.sync()
    before = harness.online()
    path = harness.root / "state" / "sync_state.duckdb"
    data = path.read_bytes()
    path.write_bytes(os.urandom(len(data)) if damage == "random bytes" else data[:len(data) // 3])
    harness.sql("delete from feats where a < 5")
    run = harness.sync()
    assert run.status == "failed" and "in use" not in run.error
    assert f"sync state {path} is unreadable" in run.error and "`featuremart sync --full-refresh`" in run.error
    assert harness.online() == before
    run = harness.sync(full_refresh=True)
    assert run.status == "success", run
    [note] = run.notes
    aside = next(path.parent.glob("sync_state.duckdb.corrupt-*"))
    assert f"moved it to {aside}" in note
    assert harness.online() == harness.expected() and len(harness.online()) == 15  # the 5 deleted are gone
    assert harness.sync().views[0].unchanged == 15  # and the rebuilt state is trusted


@pytest.mark.parametrize("durable", [True, False])
def test_state_lost_while_entities_left_removes_the_orphans(harness, durable):
    """A new checkout (no state) after entities left the model: the keys they left are deleted, known from the
    durable state in the store or, without one (e.g. the first sync after an upgrade), found by SCAN; keys
    under the prefix that are not of featuremart's shapes, and other prefixes, are left alone."""
    insert_entities(harness, 20)
    harness.sync()
    client = redis.Redis.from_url(harness.store.url)
    foreign = {b"fm:{not a row key": b"1", b"fm:other": b"2", b"other:{customer_id=C1}:feats:0000abcd": b"3",
               b"fm:{customer_id=C1}:feats:NOTHEX00": b"4"}
    client.mset(foreign)
    shutil.rmtree(harness.root / "state")
    if not durable:
        client.delete(*client.keys("fm:state*"), keys.state_index_key("fm"))
    harness.sql("delete from feats where a < 5")
    run = harness.sync()
    assert run.status == "success" and run.views[0].deleted == 5
    assert (run.views[0].restored, run.views[0].rebuilt) == (durable, not durable)
    assert client.mget(list(foreign)) == list(foreign.values())
    client.delete(*foreign)
    assert harness.online() == harness.expected() and len(harness.online()) == 15


def test_full_refresh_removes_keys_no_published_view_serves(harness):
    insert_entities(harness, 3)
    harness.sync()
    client = redis.Redis.from_url(harness.store.url)
    ghosts = [f"fm:{{customer_id=GHOST}}:feats:{harness.view.version}", "fm:{customer_id=C1}:feats:0123abcd",
              "fm:{customer_id=C1}:dropped_view:89abcdef"]
    for key in ghosts:  # e.g. left by a sync whose state was later lost
        client.set(key, "[0]")
    assert harness.sync().views[0].unchanged == 3  # a normal sync trusts its state
    run = harness.sync(full_refresh=True)
    assert run.status == "success" and any("deleted 2 keys no published view serves" in n for n in run.notes)
    assert client.exists(*ghosts) == 0
    assert harness.online() == harness.expected()


def test_a_store_restored_from_an_older_snapshot_is_detected_and_repaired(tmp_path):
    """Same store_id, older contents (an RDB restore, a lagging replica): the generation recorded in the local
    state does not match, so it is not trusted. The durable state came back with the snapshot, consistent with
    the values it holds: the view is restored from it and diffed, not rebuilt."""
    from tests.redis_server import RedisServer

    with RedisServer() as server:
        h = Harness(tmp_path, server.url)
        insert_entities(h, 50)
        assert h.sync().status == "success"
        server.client().save()  # the snapshot a later restore goes back to
        h.sql("update feats set a = a + 100")
        h.sql("delete from feats where customer_id in ('C0', 'C1')")
        insert_entities(h, 0)
        h.sql("insert into feats (customer_id, ts, a, b) values ('NEW', ?, 1, 1)", [h.t0])
        assert h.sync().status == "success" and h.online() == h.expected()
        server.kill()
        server.restart()  # loads the older snapshot
        assert h.online() != h.expected()  # stale values, orphans and missing keys, served as present
        run = h.sync()
        assert run.status == "success" and run.views[0].restored and not run.views[0].rebuilt
        assert (run.views[0].inserted, run.views[0].deleted) == (1, 2)  # NEW back, C0 and C1 gone again
        assert h.online() == h.expected()
        h.store.close()


# ---- the published snapshot ---------------------------------------------------------------------------------------

def test_a_withheld_view_never_breaks_reads(harness, redis_url):
    """A view withheld by the build gate while the project added a feature to it and to a service: readers keep
    loading the snapshot; the service keeps its previous definition, a new one naming the new feature is
    unavailable on its own with the reason, and everything else reads as before."""
    from featuremart.errors import UnavailableError
    from featuremart.registry import FeatureService

    def with_services(**services):
        harness.registry = Registry(harness.registry.entities, {harness.view.name: harness.view},
                                    {name: FeatureService(name, tuple(harness.view.feature(f) for f in feats))
                                     for name, feats in services.items()})

    insert_entities(harness, 10)
    with_services(scoring=("a", "b"))
    assert harness.sync().status == "success"
    harness.sql("alter table feats add column c varchar default 'x'")
    harness.set_features(("a", "b", "c"))
    with_services(scoring=("a", "b", "c"), ranking=("c",))
    run = harness.sync(build_status="error")
    assert run.views[0].status == "withheld"
    reader_store = OnlineStore.connect(redis_url, embedded_dir=harness.root, prefix="fm")
    try:
        reader = OnlineReader(reader_store)
        [row] = reader.get([{"customer_id": "C3"}], service="scoring")
        assert {k: (v.value, v.status) for k, v in row.items()} == {"a": (3, "present"), "b": (0.75, "present")}
        [row] = reader.get([{"customer_id": "C3"}], features=["feats.*"])
        assert set(row) == {"a", "b"}
        with pytest.raises(UnavailableError, match="ranking.*not available online.*feats was withheld"):
            reader.get([{"customer_id": "C3"}], service="ranking")
    finally:
        reader_store.close()
    assert harness.sync().status == "success"  # once the view is published, so is every service
    reader_store = OnlineStore.connect(redis_url, embedded_dir=harness.root, prefix="fm")
    try:
        [row] = OnlineReader(reader_store).get([{"customer_id": "C3"}], service="ranking")
        assert row["c"].value == "x"
    finally:
        reader_store.close()


def test_a_new_ttl_rewrites_every_expiry(harness):
    """The ttl is not part of a view's version, but it is part of each key's expiry: a changed ttl rewrites
    every key, so the expiry equals what a full refresh would write."""
    insert_entities(harness, 5)
    harness.sync()
    harness.view = replace(harness.view, ttl=2 * TTL)
    harness.registry.views[harness.view.name] = harness.view
    v = harness.sync().views[0]
    assert (v.status, v.updated, v.unchanged) == ("synced", 5, 0)
    client = redis.Redis.from_url(harness.store.url)
    ts_ms = to_us(harness.t0 - timedelta(minutes=5)) // 1000
    assert {client.pexpiretime(k) for k in harness.online()} == {ts_ms + int(2 * TTL.total_seconds() * 1000)}

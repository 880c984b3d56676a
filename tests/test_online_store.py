"""OnlineStore against a real redis-server started for these tests (never a shared one, never fakeredis)."""

from __future__ import annotations

import fnmatch
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from featuremart.errors import OnlineStoreError, StoreChangedError, SyncLockedError
from featuremart.online.store import OnlineStore, redact_url
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration  # every test but the encoding one starts redis-server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def client(redis_server):
    c = redis_server.client()
    c.flushall()  # our own server: safe to empty
    yield c
    c.close()


@pytest.fixture
def store(redis_server, client, tmp_path):
    s = OnlineStore.connect(redis_server.url, embedded_dir=tmp_path / "embedded")
    yield s
    s.close()


def far_future_ms() -> int:
    return int(time.time() * 1000) + 3_600_000


def test_write_mget_round_trip_binary_and_unicode(store):
    keys = [b"fm:{k=1}:v:1", "fm:{k=é}:v:1", b"fm:{k=\x00\xff}:v:1"]
    values = [b"\x00\r\n$*-+\xff", "naïve ☃ 日本".encode(), "str value é"]
    assert store.write(keys, values, [far_future_ms()] * 3) == 3
    got = store.mget(keys + [b"fm:{k=absent}:v:1"])
    assert got == [values[0], values[1], "str value é".encode(), None]


@pytest.mark.parametrize("kind", ["ascii str", "non-ascii str", "bytes", "mixed", "long key"])
def test_mget_encodes_every_kind_of_key_batch(store, kind):
    """A batch of 16+ keys takes the hand-encoded MGET for ASCII str keys and hiredis' packer otherwise: each
    kind reads back exactly what was written, in order, None where absent."""
    names = [f"fm:{{k=K{i:03d}}}:v:1" for i in range(40)]
    if kind == "non-ascii str":
        names[17] = "fm:{k=é☃}:v:1"
    elif kind == "bytes":
        names = [n.encode() for n in names]
    elif kind == "mixed":
        names[3] = names[3].encode() + b"\xff"
    elif kind == "long key":
        names[5] = "fm:{k=" + "x" * 5000 + "}:v:1"
    present = names[::2]
    store.write(present, [b"v" + str(i).encode() for i in range(len(present))], [far_future_ms()] * len(present))
    expected = [b"v" + str(i // 2).encode() if i % 2 == 0 else None for i in range(len(names))]
    assert store.mget(names) == expected
    assert store.mget(names[:3]) == expected[:3]


def test_mget_per_thread_connections_survive_a_killed_connection_and_close(store, client):
    """Each thread reads on its own connection; a connection killed by the server is replaced on the next read
    (the read retries), and `close` closes every thread's connection."""
    keys = [f"fm:{{k={i}}}:v:1" for i in range(20)]
    store.write(keys, [k.encode() for k in keys], [far_future_ms()] * 20)
    results: list[list] = []

    def read() -> None:
        results.append(store.mget(keys))

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[k.encode() for k in keys]] * 3
    assert store.mget(keys[:2]) == [keys[0].encode(), keys[1].encode()]
    killed = client.client_kill_filter(_type="normal", skipme=True)  # every connection but this client's
    assert killed >= 1
    assert store.mget(keys) == [k.encode() for k in keys]
    before = {c["id"] for c in client.client_list()}
    store.close()
    time.sleep(0.1)
    after = {c["id"] for c in client.client_list()}
    assert len(after) < len(before) and after <= before


def test_an_error_reply_to_a_read_raises_and_the_connection_keeps_serving(store, client, redis_server, tmp_path):
    """An MGET the server refuses (here: the user lost the permission) raises OnlineStoreError with the server's
    words, once, not after retries; once allowed again, the next read reads the values, and the connection that
    got the error reply was not dropped."""
    client.acl_setuser("fm_reader", enabled=True, nopass=True, keys=["*"], commands=["+@all"])
    try:
        url = redis_server.url.replace("redis://", "redis://fm_reader@")
        with OnlineStore.connect(url, embedded_dir=tmp_path) as s:
            s.write([b"k1", b"k2"], [b"one", b"two"], [far_future_ms()] * 2)
            assert s.mget([b"k1", b"k2"]) == [b"one", b"two"]
            [before] = [c["id"] for c in client.client_list() if c["user"] == "fm_reader" and c["cmd"] == "mget"]
            client.acl_setuser("fm_reader", commands=["-mget"])
            started = time.monotonic()
            with pytest.raises(OnlineStoreError, match="(?i)no permissions.*mget"):
                s.mget([b"k1", b"k2"])
            assert time.monotonic() - started < 1.0  # a permanent error: no backoff
            client.acl_setuser("fm_reader", commands=["+mget"])
            assert s.mget([b"k2", b"absent", b"k1"]) == [b"two", None, b"one"]
            assert before in [c["id"] for c in client.client_list() if c["user"] == "fm_reader"]  # not dropped
    finally:
        client.acl_deluser("fm_reader")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_reads_on_its_own_connection(store):
    """A child forked after the parent read gets the values on a connection of its own (sharing the parent's
    socket would interleave their replies), and the parent's connection still reads after the child is done."""
    store.write([b"p"], [b"parent"], [far_future_ms()])
    assert store.mget([b"p"]) == [b"parent"]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it read, and leave (whatever happens) without running pytest's cleanup
        try:
            ok = all(store.mget([b"p", b"absent"]) == [b"parent", None] for _ in range(200))
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        for _ in range(200):
            assert store.mget([b"p"]) == [b"parent"]
        answered, _, _ = select.select([read], [], [], 60)
        assert answered, "the forked child did not answer in 60 s"
        assert os.read(read, 1) == b"1"
    finally:
        if not os.waitpid(pid, os.WNOHANG)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(read)
    assert store.mget([b"absent", b"p"]) == [None, b"parent"]


def test_write_with_no_expiry_and_empty_write(store, client):
    assert store.write([], [], []) == 0
    store.write([b"k"], [b"v"], [None])
    assert client.pttl(b"k") == -1


def test_pxat_expiry_really_expires(store, client):
    soon = int(time.time() * 1000) + 300
    store.write([b"short"], [b"v"], [soon])
    store.write([b"long"], [b"v"], [far_future_ms()])
    assert client.pexpiretime(b"short") == soon
    assert store.mget([b"short", b"long"]) == [b"v", b"v"]
    time.sleep(0.45)
    assert store.mget([b"short", b"long"]) == [None, b"v"]


def test_write_100k_rows(store, client):
    n = 100_000
    keys = [b"fm:{customer_id=C%07d}:customer_spend:ab12cd34" % i for i in range(n)]
    values = [b"%d|" % i + b"x" * 100 for i in range(n)]
    expire = [far_future_ms() + i for i in range(n)]
    assert store.write(keys, values, expire, chunk_rows=7_000) == n  # chunks that do not divide n
    assert client.dbsize() == n
    sample = [0, 1, 6_999, 7_000, 50_000, n - 1]
    assert store.mget([keys[i] for i in sample]) == [values[i] for i in sample]
    assert client.pexpiretime(keys[n - 1]) == expire[n - 1]
    assert store.delete(keys) == n
    assert client.dbsize() == 0


def test_mget_large_is_chunked_but_ordered(store, monkeypatch):
    import featuremart.online.store as mod

    monkeypatch.setattr(mod, "MGET_CHUNK_KEYS", 3)
    keys = [b"k%d" % i for i in range(10)]
    store.write(keys, keys, [far_future_ms()] * 10)
    assert store.mget(keys + [b"nope"]) == keys + [None]


def test_json_and_scan(store):
    assert store.get_json("fm:meta") is None
    store.set_json("fm:meta", {"b": [1, 2], "a": "é"})
    assert store.get_json("fm:meta") == {"a": "é", "b": [1, 2]}
    store.write([b"fm:{a}:x", b"fm:{b}:x", b"other"], [b"1", b"2", b"3"], [far_future_ms()] * 3)
    assert sorted(set(store.scan("fm:{*}:x"))) == [b"fm:{a}:x", b"fm:{b}:x"]
    assert store.delete([b"fm:{a}:x", b"missing"]) == 1


def test_error_reply_names_the_key(store, client):
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", used + 200_000)
    client.config_set("maxmemory-policy", "noeviction")
    try:
        keys = [b"fm:{id=%d}:big" % i for i in range(20_000)]
        with pytest.raises(OnlineStoreError) as err:
            store.write(keys, [b"x" * 200] * len(keys), [far_future_ms()] * len(keys))
        message = str(err.value)
        assert "OOM" in message and "key b'fm:{id=" in message
    finally:
        client.config_set("maxmemory", 0)
    # The connection the failed write used was not returned to the pool out of step.
    assert store.mget([b"fm:{id=0}:big"]) == [b"x" * 200]


def test_write_never_reports_acknowledged_writes_lost_in_a_restart_as_success(tmp_path):
    """The server restarts empty between two writes: the acknowledged write is gone, so the next write fails
    saying so (it would otherwise succeed on the new server and hide the loss); the one after writes again."""
    with RedisServer() as server:
        store = OnlineStore.connect(server.url, embedded_dir=tmp_path)
        store.write([b"before"], [b"1"], [far_future_ms()])
        server.kill()
        restarter = threading.Thread(target=server.restart, kwargs={"delay": 0.3})
        restarter.start()
        try:
            keys = [b"after%d" % i for i in range(25_000)]
            try:
                written = store.write(keys, keys, [far_future_ms()] * len(keys))
            except StoreChangedError as exc:
                assert "restarted or failed over" in str(exc) and "may be lost" in str(exc)
                assert store.mget([b"before"]) == [None]  # really lost: the error was the truth
            else:  # only acceptable if nothing acknowledged was lost
                assert written == len(keys) and store.mget([b"before"]) == [b"1"]
            assert store.write(keys, keys, [far_future_ms()] * len(keys)) == len(keys)
            assert store.mget([keys[0], keys[-1]]) == [keys[0], keys[-1]]
        finally:
            restarter.join()
        server.kill()
        threading.Timer(0.3, server.restart).start()
        assert store.mget([b"x"]) == [None]  # reads retry too
        server.kill()
        with pytest.raises(OnlineStoreError, match="attempts"):
            store.mget([b"x"])  # a server that stays down: a bounded wait, then a clear error
        store.close()


def test_a_restart_in_the_middle_of_a_bulk_write_fails_it(tmp_path):
    """Killed and restarted empty while chunks are in flight: the writer reconnects, sees a new server and
    stops, instead of resending the rest and reporting every row written."""
    with RedisServer() as server:
        store = OnlineStore.connect(server.url, embedded_dir=tmp_path)
        client = server.client()
        n = 400_000
        keys = [b"k%d" % i for i in range(n)]

        def restart_when_half_written() -> None:
            while client.dbsize() < 10_000:
                time.sleep(0.001)
            server.kill()
            server.restart()

        restarter = threading.Thread(target=restart_when_half_written)
        restarter.start()
        try:
            with pytest.raises(StoreChangedError, match="during the write"):
                store.write(keys, keys, [far_future_ms()] * n)
        finally:
            restarter.join()
        assert 0 <= client.dbsize() < n
        store.close()


def test_fenced_sets_only_while_nothing_changed(store, client, redis_server):
    from featuremart.online import keys
    from featuremart.online.store import Fence

    store_id, generation, registry = keys.store_id_key("fm"), keys.generation_key("fm"), keys.registry_key("fm")

    client.set(store_id, '"s1"')
    lock = store.lock("sync", 30).acquire()
    fence = Fence(store_id, '"s1"', generation, "", lock.key, lock.value, store.server_id())
    store.fenced(fence, {generation: '"g1"'})
    assert client.get(generation) == b'"g1"'
    for change, what in ((lambda: client.set(generation, '"older"'), "generation"),
                         (lambda: client.set(store_id, '"s2"'), "store_id"),
                         (lambda: client.delete(lock.key), "lock")):
        fence = Fence(store_id, client.get(store_id).decode(), generation,
                      client.get(generation).decode(), lock.key, lock.value, store.server_id())
        change()
        with pytest.raises(StoreChangedError, match=what):
            store.fenced(fence, {registry: "new"})
        assert client.get(registry) is None
        client.set(store_id, '"s1"')
        client.set(lock.key, lock.value)
    fence = Fence(store_id, '"s1"', generation, client.get(generation).decode(), lock.key,
                  lock.value, "0" * 40)
    with pytest.raises(StoreChangedError, match="restarted or failed over"):
        store.fenced(fence, {registry: "new"})


def test_unreachable_url_names_it_with_the_password_redacted(tmp_path):
    url = f"redis://fm_user:hunter2-secret@127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    with pytest.raises(OnlineStoreError) as err:
        OnlineStore.connect(url, embedded_dir=tmp_path)
    message = str(err.value)
    assert "hunter2" not in message and "hunter2" not in repr(err.value.__cause__)
    assert "redis://fm_user:***@127.0.0.1" in message
    assert "FEATUREMART_REDIS_URL" in message and "running" in message
    assert time.monotonic() - t0 < 10


def test_redact_url():
    assert redact_url("rediss://u:p%40ss@h:6380/1") == "rediss://u:***@h:6380/1"
    assert redact_url("redis://:pw@h") == "redis://:***@h"
    assert redact_url("redis://h:6379") == "redis://h:6379"
    assert "sekret" not in redact_url("unix:///tmp/r.sock?db=0&password=sekret")


def test_acl_user_in_url_and_no_secret_in_repr(store, client, redis_server, tmp_path):
    client.acl_setuser("fm_acl", enabled=True, passwords=["+s3cr3t-pw"], keys=["*"], commands=["+@all"])
    try:
        url = redis_server.url.replace("redis://", "redis://fm_acl:s3cr3t-pw@")
        with OnlineStore.connect(url, embedded_dir=tmp_path) as s:
            s.write([b"acl"], [b"ok"], [far_future_ms()])
            assert s.mget([b"acl"]) == [b"ok"]
            assert "s3cr3t" not in repr(s) and "s3cr3t" not in s.url
        with pytest.raises(OnlineStoreError) as err:
            OnlineStore.connect(url.replace("s3cr3t-pw", "wrong-pw"), embedded_dir=tmp_path)
        assert "wrong-pw" not in str(err.value) and "credentials" in str(err.value)
    finally:
        client.acl_deluser("fm_acl")


def test_lock_excludes_a_second_holder(store, redis_server, client, tmp_path):
    other = OnlineStore.connect(redis_server.url, embedded_dir=tmp_path)
    try:
        with store.lock("sync", ttl_seconds=30) as held:
            with pytest.raises(SyncLockedError) as err:
                other.lock("sync", ttl_seconds=30).acquire()
            message = str(err.value)
            assert "since" in message and "expires at" in message and f"{os.getpid()}" in message
            held.refresh()
        with other.lock("sync", ttl_seconds=30):  # released on exit: free again
            pass
        assert client.exists("fm:meta:{fm}:lock:sync") == 0
    finally:
        other.close()


def test_lock_is_released_only_by_its_owner(store, client):
    lock = store.lock("sync", ttl_seconds=30).acquire()
    client.set(lock.key, "someone else's token", px=30_000)  # as if ours expired and another took it
    assert lock.release() is False
    assert lock.key == "fm:meta:{fm}:lock:sync" and client.get(lock.key) == b"someone else's token"
    with pytest.raises(SyncLockedError):
        store.lock("sync", ttl_seconds=30).acquire()


def test_lock_expires_and_refresh_extends_it(store, redis_server, client, tmp_path):
    other = OnlineStore.connect(redis_server.url, embedded_dir=tmp_path)
    try:
        lock = store.lock("sync", ttl_seconds=0.5).acquire()
        time.sleep(0.3)
        lock.refresh()
        time.sleep(0.3)  # 0.6 s after acquiring, still held thanks to refresh()
        with pytest.raises(SyncLockedError):
            other.lock("sync", ttl_seconds=0.5).acquire()
        time.sleep(0.35)  # now expired
        taken = other.lock("sync", ttl_seconds=5).acquire()
        with pytest.raises(OnlineStoreError, match="expired"):
            lock.refresh()
        assert lock.release() is False
        assert taken.release() is True
    finally:
        other.close()


# ---- embedded server ---------------------------------------------------------------------------------------------

def _run(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from featuremart.online.store import OnlineStore
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=True)


@pytest.fixture
def embedded_dir(tmp_path):
    directory = tmp_path / "embedded"
    yield directory
    pidfile = directory / "redis.pid"  # a test that failed half-way must not leave its server behind
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), 9)
        except (ProcessLookupError, ValueError):
            pass


WRITE = """
store = OnlineStore.connect(None, embedded_dir=Path(sys.argv[1]))
store.write([sys.argv[2].encode()], [sys.argv[3].encode()], [int(time.time() * 1000) + 3_600_000])
store.close()
"""
READ = """
store = OnlineStore.connect(None, embedded_dir=Path(sys.argv[1]))
print(store.mget([k.encode() for k in sys.argv[2:]]))
store.close()
"""


def test_embedded_store_persists_across_processes(embedded_dir):
    _run(WRITE, str(embedded_dir), "fm:{a}:x", "synced")
    assert (embedded_dir / "redis.db").exists()
    assert not (embedded_dir / "redis.sock").exists()  # the last user stopped the server, after saving
    out = _run(READ, str(embedded_dir), "fm:{a}:x", "absent").stdout
    assert out.strip() == "[b'synced', None]"


def test_embedded_store_shared_by_concurrent_processes(embedded_dir):
    # A long-lived reader (a server process, say) holds the embedded store while writers come and go.
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from pathlib import Path
            from featuremart.online.store import OnlineStore
            store = OnlineStore.connect(None, embedded_dir=Path(sys.argv[1]))
            print("ready", flush=True)
            sys.stdin.readline()
            print(store.mget([b"w0", b"w1", b"w2", b"w3"]), flush=True)
            store.close()
        """), str(embedded_dir)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        # Four writers starting at the same moment: one server, nothing lost.
        writers = [subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                                     "from featuremart.online.store import OnlineStore\n" + WRITE,
                                     str(embedded_dir), f"w{i}", f"v{i}"], cwd=ROOT) for i in range(4)]
        assert [w.wait(timeout=60) for w in writers] == [0, 0, 0, 0]
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "[b'v0', b'v1', b'v2', b'v3']"
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert _run(READ, str(embedded_dir), "w0", "w3").stdout.strip() == "[b'v0', b'v3']"


def test_embedded_concurrent_cold_start(embedded_dir):
    writers = [subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                                 "from featuremart.online.store import OnlineStore\n" + WRITE,
                                 str(embedded_dir), f"c{i}", f"v{i}"], cwd=ROOT) for i in range(6)]
    assert [w.wait(timeout=60) for w in writers] == [0] * 6
    out = _run(READ, str(embedded_dir), *[f"c{i}" for i in range(6)]).stdout.strip()
    assert out == repr([f"v{i}".encode() for i in range(6)])


def test_embedded_survives_a_killed_client(embedded_dir):
    # A process killed without close() leaves the server running with its data; the next user adopts it.
    proc = subprocess.run([sys.executable, "-c", "import os, sys, time\nfrom pathlib import Path\n"
                           "from featuremart.online.store import OnlineStore\n"
                           "store = OnlineStore.connect(None, embedded_dir=Path(sys.argv[1]))\n"
                           "store.write([b'k'], [b'v'], [None])\nos._exit(0)\n", str(embedded_dir)], cwd=ROOT)
    assert proc.returncode == 0
    assert _run(READ, str(embedded_dir), "k").stdout.strip() == "[b'v']"
    assert not (embedded_dir / "redis.sock").exists()
    assert _run(READ, str(embedded_dir), "k").stdout.strip() == "[b'v']"


def test_embedded_in_process(tmp_path):
    embedded_dir = tmp_path / "dir with spaces 'and' quotes"  # quoted in redis.conf
    with OnlineStore.connect(None, embedded_dir=embedded_dir) as s:
        assert s.url.startswith("unix://")
        s.set_json("fm:meta", {"n": 1})
    with OnlineStore.connect(None, embedded_dir=embedded_dir) as s:
        assert s.get_json("fm:meta") == {"n": 1}


def test_encoding_matches_redis_py():
    from redis.connection import Connection

    from featuremart.online.store import _encode_set_pxat

    pack = Connection().pack_command
    keys, values = [b"k\r\n", "é".encode(), b""], [b"", b"\x00" * 3, b"v"]
    for expiry in ([1_700_000_000_000, 1_700_000_000_001, 9_999_999_999_999], [5, None, 10**14]):
        expected = b"".join(
            b"".join(pack("SET", k, v) if e is None else pack("SET", k, v, "PXAT", e))
            for k, v, e in zip(keys, values, expiry)
        )
        assert _encode_set_pxat(keys, values, expiry) == expected


def test_parse_row_key_accepts_what_the_sync_writes_and_nothing_else():
    """Sweeps delete only keys of exactly the shape featuremart writes: check the parser against the writer's
    key builder, with adversarial key values, and against look-alikes."""
    from featuremart.online import keys

    values = ["C1", "a:b", "a}b", "{x}", "=,%", "é 日本", "", "x" * 300, 42, -7]
    for value in values:
        for pairs in ([("customer_id", value)], [("customer_id", value), ("merchant_id", "M:1")]):
            key = keys.row_key("fm", "customer_spend", "0a1b2c3d", pairs)
            assert keys.parse_row_key("fm", key) == ("customer_spend", "0a1b2c3d"), key
    bookkeeping = [keys.registry_key("fm"), keys.registry_id_key("fm"), keys.store_id_key("fm"),
                   keys.generation_key("fm"), keys.lock_key("fm", "sync"), keys.runs_key("fm")]
    assert not any(fnmatch.fnmatchcase(key, keys.row_key_pattern("fm")) for key in bookkeeping)  # SCAN skips them
    for other in [*bookkeeping, "fm:registry", "fm:registry:id", "fm:store_id", "fm:{fm}:registry",
                  "fm:{customer_id=C1}:customer_spend", "fm:{customer_id=C1}:customer_spend:0A1B2C3D",
                  "fm:{customer_id=C1}:customer_spend:0a1b2c3", "fm:{customer_id=C1}x:v:0a1b2c3d",
                  "fm:{noequals}:v:0a1b2c3d", "fm:{a={b}}:v:0a1b2c3d", "fm2:{customer_id=C1}:v:0a1b2c3d",
                  "other:{customer_id=C1}:v:0a1b2c3d", "fm:{customer_id=C1}:a:b:0a1b2c3d:x"]:
        assert keys.parse_row_key("fm", other) is None, other
    assert keys.row_key_pattern("fm") == "fm:{*" and keys.row_key_pattern("a*b") == "a\\*b:{*"


def test_a_rejected_write_amid_acknowledged_ones_is_named_exactly(store, client):
    """The replies of a bulk write are compared as runs of `+OK`; the first one that differs is parsed reply by
    reply. Wherever the rejected command sits (first, last, mid-chunk, a later chunk), its own key is named, the
    commands before it were applied, and the store writes again afterwards."""
    from featuremart.online.store import _encode_command

    def chunk(start: int, count: int, bad: int | None) -> tuple[bytes, list[bytes]]:
        keys = [b"fm:{id=%d}:v" % i for i in range(start, start + count)]
        return b"".join(_encode_command([b"SET", key, b"v%d" % i, b"PXAT",
                                         b"soon" if i == bad else b"%d" % far_future_ms()])
                        for i, key in zip(range(start, start + count), keys)), keys

    for bad in (0, 4_999, 10_000, 12_345, 29_999):
        client.flushall()
        with pytest.raises(OnlineStoreError) as err:
            store.write_encoded([chunk(start, 10_000, bad) for start in range(0, 30_000, 10_000)])
        assert "key b'fm:{id=%d}:v'" % bad in str(err.value), (bad, str(err.value))
        assert "not an integer" in str(err.value)
        if bad:
            assert client.get(b"fm:{id=%d}:v" % (bad - 1)) == b"v%d" % (bad - 1)
        assert client.get(b"fm:{id=%d}:v" % bad) is None
    client.flushall()
    assert store.write_encoded([chunk(start, 10_000, None) for start in range(0, 30_000, 10_000)]) == 30_000
    assert client.dbsize() == 30_000 and client.get(b"fm:{id=29999}:v") == b"v29999"

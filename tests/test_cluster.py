"""featuremart on a real Redis Cluster (three masters started by the session fixture): the whole path equals a
single node's, writes follow a resharding (MOVED, ASK) and end equal to a single node's, and a master killed during
a sync fails the run without switching readers, with a rerun that converges once it is back."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
import urllib.request
from pathlib import Path

import duckdb
import pytest
import redis
from redis.crc import key_slot

from featuremart import FeatureStore
from featuremart.online import keys
from featuremart.errors import OnlineStoreError
from featuremart.online.store import OnlineStore
from tests.feature_server import FeatureServer, serving_env
from tests.test_end_to_end import run_cli
from tests.test_sync import Harness

pytestmark = pytest.mark.integration

UNUSED = Path("unused")  # the embedded server's directory: never used with a URL


def contents(url: str, cluster: bool) -> dict[bytes, bytes]:
    """Every value key and its value in the store (all masters of a cluster), read straight from the servers."""
    client = redis.cluster.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    try:
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()] if cluster else [client]
        found = {}
        for node in nodes:
            names = [k for k in node.scan_iter(count=10_000) if keys.parse_row_key("fm", k.decode()) is not None]
            for start in range(0, len(names), 1000):  # one node owns these keys, but MGET needs one slot: pipeline
                pipe = node.pipeline(transaction=False)
                for name in names[start:start + 1000]:
                    pipe.get(name)
                found.update(zip(names[start:start + 1000], pipe.execute()))
        return found
    finally:
        client.close()


def entities(project) -> list[dict]:
    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
    try:
        rows = con.sql("select distinct customer_id, merchant_id from main.customer_merchant_pair "
                       "order by 1, 2").fetchall()
    finally:
        con.close()
    return [{"customer_id": c, "merchant_id": m} for c, m in rows] + [{"customer_id": "NOBODY", "merchant_id": "X"}]


def plain(rows) -> list[dict]:
    return [{name: (v.value, v.status, v.event_ts) for name, v in row.items()} for row in rows]


def test_connect_detects_a_cluster_from_any_node(redis_cluster, cluster_url, redis_url):
    for node in redis_cluster.nodes:
        with OnlineStore.connect(node.url, embedded_dir=UNUSED, prefix="fm") as store:
            assert store.cluster and "cluster" in repr(store)
    with OnlineStore.connect(redis_url, embedded_dir=UNUSED, prefix="fm") as store:
        assert not store.cluster


def test_bookkeeping_keys_share_one_slot_and_no_value_key_pattern():
    names = [keys.registry_key("fm"), keys.registry_id_key("fm"), keys.store_id_key("fm"), keys.generation_key("fm"),
             keys.runs_key("fm"), keys.lock_key("fm", "sync"), keys.meta_key("fm", "state:customer_spend")]
    assert len({key_slot(n.encode()) for n in names}) == 1
    assert all(keys.parse_row_key("fm", n) is None for n in names)
    assert key_slot(keys.registry_key("fm").encode()) != key_slot(keys.registry_key("other").encode())


def test_the_whole_path_on_a_cluster_equals_a_single_node(project, tmp_path, cluster_url, redis_url, monkeypatch):
    """Sync the reference project to a single node and to the cluster; every value key, and reads through Python,
    the CLI and the HTTP server, are the same."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(project, other)
    with FeatureStore(project, redis_url=redis_url) as single, FeatureStore(other, redis_url=cluster_url) as on_cluster:
        assert single.sync().status == "success"
        run = on_cluster.sync()
        assert run.status == "success", run.error
        assert on_cluster.reader.store.cluster
        wanted = entities(project)
        expected = single.get_online_features(wanted, service="fraud_model")
        got = on_cluster.get_online_features(wanted, service="fraud_model")
        assert plain(got) == plain(expected)
        assert sum(v.status == "present" for row in got for v in row.values()) > len(wanted)  # real values compared
        profile = ["customer_profile.*", "customer_embedding.embedding"]
        assert plain(on_cluster.get_online_features(wanted, features=profile)) == plain(
            single.get_online_features(wanted, features=profile))
    single_keys, cluster_keys = contents(redis_url, False), contents(cluster_url, True)
    assert cluster_keys == single_keys and len(single_keys) > 300
    with OnlineStore.connect(cluster_url, embedded_dir=UNUSED) as store:
        assert store.read_registry(keys.registry_key("fm"))[0]["views"].keys() == single.registry.views.keys()
    # Every master holds some of the values: the writer really spread them.
    client = redis.cluster.RedisCluster.from_url(cluster_url)
    assert all(client.get_redis_connection(n).dbsize() > 0 for n in client.get_primaries())
    client.close()

    monkeypatch.setenv("FEATUREMART_REDIS_URL", cluster_url)
    monkeypatch.chdir(other)
    pair = wanted[0]
    code, out = run_cli("get", "--service", "fraud_model", f"customer_id={pair['customer_id']}",
                        f"merchant_id={pair['merchant_id']}", "--json")
    assert code == 0, out
    assert {k: v["status"] for k, v in json.loads(out).items()} == {k: v[1] for k, v in plain(expected)[0].items()}

    with FeatureServer(tmp_path, serving_env(cluster_url)) as server:
        body = json.dumps({"service": "fraud_model", "entities": wanted[:50]}).encode()
        request = urllib.request.Request(f"{server.url}/features", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            results = json.loads(response.read())["results"]
    for result, row in zip(results, plain(expected[:50])):
        assert {k: (v["status"], v["value"]) for k, v in result["values"].items()} == {
            k: (v[1], v[0]) for k, v in row.items()}


def asking_get(node: redis.Redis, key: bytes) -> bytes | None:
    """GET on the node importing the key's slot (ASKING first, on the same connection)."""
    pipe = node.pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.get(key)
    return pipe.execute()[1]


def test_writes_follow_ask_and_moved(redis_cluster, cluster_url):
    """A slot half migrated (MIGRATING/IMPORTING): new keys are answered ASK and written on the target; the slot
    then moved for good: a store with the old slot map is answered MOVED and writes on the new owner."""
    admin = redis_cluster.client()
    tag = "{customer_id=C42}"
    slot = key_slot(tag.encode())
    source = admin.get_node_from_key(tag)
    target = next(n for n in admin.get_primaries() if n.name != source.name)
    src, dst = admin.get_redis_connection(source), admin.get_redis_connection(target)
    source_id, target_id = src.cluster("myid"), dst.cluster("myid")
    old = [f"fm:{tag}:old{i}:0a1b2c3d".encode() for i in range(3)]
    with OnlineStore.connect(cluster_url, embedded_dir=UNUSED) as store, \
            OnlineStore.connect(cluster_url, embedded_dir=UNUSED) as stale:
        store.server_id()
        stale.server_id()
        store.write(old, [b"before"] * 3, [None] * 3)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", old[0])  # one moved already
        new = [f"fm:{tag}:v{i}:0a1b2c3d".encode() for i in range(50)]
        other = [f"fm:{{customer_id=X{i}}}:v:0a1b2c3d".encode() for i in range(500)]
        written = store.write(new + old + other, [b"ask"] * 53 + [b"x"] * 500, [None] * 553)
        assert written == 553 and store.redirected["ASK"] >= 51  # the 50 new keys and the one migrated key
        assert asking_get(dst, new[0]) == asking_get(dst, old[0]) == src.get(old[1]) == b"ask"
        for name in src.cluster("getkeysinslot", slot, 1000):
            src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", name)
        for node in redis_cluster.nodes:
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        redis_cluster.wait_ok()
        assert stale.write(new, [b"moved"] * 50, [None] * 50) == 50
        assert stale.redirected["MOVED"] == 50
        assert stale.mget(new) == [b"moved"] * 50 and store.mget(old) == [b"ask"] * 3
    admin.close()


def _reshard(cluster, slots: int, done: threading.Event, errors: list) -> None:
    """Move `slots` slots (keys included) between masters, with redis-cli, until `done` (at least one round)."""
    client = cluster.client()
    try:
        ids = sorted(client.get_redis_connection(n).cluster("myid") for n in client.get_primaries())
        step = 0
        while step == 0 or not done.is_set():
            source, target = ids[step % len(ids)], ids[(step + 1) % len(ids)]
            cluster.cli("--cluster", "reshard", cluster.url.removeprefix("redis://").removesuffix("/0"),
                        "--cluster-from", source, "--cluster-to", target, "--cluster-slots", str(slots),
                        "--cluster-yes", "--cluster-pipeline", "20")
            step += 1
    except BaseException as exc:  # reported by the test
        errors.append(exc)
    finally:
        client.close()


def test_a_resharding_during_a_sync_ends_equal_to_a_single_node(tmp_path, redis_cluster, cluster_url, redis_url):
    """Slots move between masters (redis-cli --cluster reshard, keys migrated) while a sync writes 60k entities:
    the cluster ends with exactly the keys and values of the same sync on a single node."""
    (tmp_path / "c").mkdir()
    (tmp_path / "s").mkdir()
    on_cluster, single = Harness(tmp_path / "c", cluster_url), Harness(tmp_path / "s", redis_url)
    event = on_cluster.t0 - timedelta(minutes=5)  # one time for both, so their values are the same bytes
    for h in (on_cluster, single):
        h.sql("insert into feats select 'C' || i, ?, i, i / 7.0, ? from range(60000) t(i)", [event, event])
    try:
        done, errors = threading.Event(), []
        mover = threading.Thread(target=_reshard, args=(redis_cluster, 1500, done, errors))
        mover.start()
        try:
            time.sleep(0.3)  # the first slots are migrating
            run = on_cluster.sync()
        finally:
            done.set()
            mover.join()
        assert not errors, errors
        assert run.status == "success", run.error
        assert on_cluster.store.redirected["MOVED"] + on_cluster.store.redirected["ASK"] > 0  # the fault happened
        assert single.sync().status == "success"
        redis_cluster.wait_ok()
        assert contents(cluster_url, True) == contents(redis_url, False)
        assert on_cluster.online() == on_cluster.expected() and len(on_cluster.expected()) == 60000
    finally:
        on_cluster.store.close()
        single.store.close()


def a_master_without_bookkeeping(cluster):
    """A master that neither holds the bookkeeping keys nor is the one the URL names (so readers still connect)."""
    admin = cluster.client()
    bookkeeping = admin.get_node_from_key(keys.registry_key("fm")).name
    admin.close()
    return next(n for n in cluster.nodes[1:] if f"127.0.0.1:{n.port}" != bookkeeping)


def test_a_master_down_during_a_sync_fails_switches_nothing_and_a_rerun_converges(tmp_path, redis_cluster,
                                                                                    cluster_url):
    h = Harness(tmp_path, cluster_url, features=("a",))
    h.sql("insert into feats select 'C' || i, now()::timestamp - interval 5 minute, i, 0, now()::timestamp "
          "from range(100000) t(i)")  # ten write chunks: most are still to send when the node dies
    try:
        assert h.sync().status == "success"
        registry_id = h.store.mget([keys.registry_id_key("fm")])[0]
        assert registry_id is not None
        # A new version of the view (a feature added): readers must keep reading the old one until a sync ends.
        h.sql("update feats set a = a + 1000000")
        h.set_features(("a", "b"))
        victim = a_master_without_bookkeeping(redis_cluster)
        killed = []

        def progress(view, phase, done, total):
            if phase == "writing" and done > 0 and not killed:
                victim.kill()
                killed.append(done)

        run = h.sync(progress=progress)
        assert killed, "the node was not killed during the write"
        assert run.status == "failed" and str(victim.port) in run.error, run.error
        with OnlineStore.connect(cluster_url, embedded_dir=UNUSED) as reader:  # the URL's node is up
            assert reader.mget([keys.registry_id_key("fm")])[0] == registry_id  # readers keep the old registry

        victim.restart()  # empty: the values it held are gone
        redis_cluster.wait_ok()
        rerun = h.sync()
        assert rerun.status == "success", rerun.error
        assert h.online() == h.expected() and len(h.expected()) == 100000
        assert all(v[1] >= 1000000 for v in h.online().values())
    finally:
        h.store.close()


def test_a_reader_connects_while_the_first_master_is_down(redis_cluster, cluster_url):
    """redis-py sends its start-up COMMAND to its default node, the first master of CLUSTER SLOTS: with that master
    down, a reader connecting through a live node must still start and serve the keys on live masters."""
    admin = redis_cluster.client()
    first = admin.get_default_node().name
    admin.close()
    victim = next(n for n in redis_cluster.nodes if f"127.0.0.1:{n.port}" == first)
    live = next(n for n in redis_cluster.nodes if n is not victim)
    names = [f"k{i}".encode() for i in range(300)]
    with OnlineStore.connect(cluster_url, embedded_dir=UNUSED) as writer:
        writer.write(names, [b"v" + n for n in names], [None] * len(names))
    victim.kill()
    try:
        with OnlineStore.connect(live.url, embedded_dir=UNUSED) as reader:
            on_live = [n for n in names if reader._redis.get_node_from_key(n).name != first]
            assert on_live and reader.mget(on_live) == [b"v" + n for n in on_live]
            with pytest.raises(OnlineStoreError, match=str(victim.port)):
                reader.mget(names)
    finally:
        victim.restart()
        redis_cluster.wait_ok()


def test_the_cli_exits_non_zero_with_a_master_down(project, redis_cluster, cluster_url, monkeypatch):
    monkeypatch.setenv("FEATUREMART_REDIS_URL", cluster_url)
    monkeypatch.chdir(project)
    victim = a_master_without_bookkeeping(redis_cluster)
    victim.kill()
    try:
        code, out = run_cli("sync")
        assert code != 0 and str(victim.port) in out.replace("\n", ""), out
    finally:
        victim.restart()
        redis_cluster.wait_ok()
    code, out = run_cli("sync")
    assert code == 0, out


def test_a_master_restarted_empty_between_syncs_is_rewritten(tmp_path, redis_cluster, cluster_url):
    """The store_id lives on one master: another one losing its values between two syncs must not leave the next
    (incremental) sync trusting its state. The seal recorded every master's run_id; the next sync sees one changed
    and rebuilds."""
    h = Harness(tmp_path, cluster_url, features=("a",))
    h.sql("insert into feats select 'C' || i, now()::timestamp - interval 5 minute, i, 0, now()::timestamp "
          "from range(5000) t(i)")
    try:
        assert h.sync().status == "success"
        assert h.online() == h.expected()
        victim = a_master_without_bookkeeping(redis_cluster)
        victim.kill()
        victim.restart()  # empty, same slots
        redis_cluster.wait_ok()
        assert 0 < len(h.online()) < len(h.expected())  # values are gone for real
        run = h.sync()
        assert run.status == "success", run.error
        assert h.online() == h.expected() and len(h.expected()) == 5000
        assert any("a master of the cluster restarted" in note for note in run.notes), run.notes
        again = h.sync()  # the new record is trusted: nothing to rewrite
        assert again.views[0].rebuilt is False and not again.notes and h.online() == h.expected()
    finally:
        h.store.close()

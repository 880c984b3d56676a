"""The durable sync state (featuremart.durable): syncs from fresh runners (no target/featuremart) are as
incremental as syncs from one directory, and every record that must not be trusted is refused with a note and
the view rebuilt. Real dbt build on DuckDB, real redis-server; faults are injected into the records in Redis."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from featuremart import FeatureStore, durable
from featuremart.errors import OnlineStoreError
from featuremart.online import keys
from tests.test_invariant import dump
from tests.test_sync import Harness, harness, insert_entities  # noqa: F401 (harness: a fixture)

pytestmark = pytest.mark.integration


class Writes:
    """The feature value keys a sync SETs and deletes, seen through Redis keyspace notifications (buffered by
    the server for this subscriber without limit, then drained after the sync)."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url)
        self.client.config_set("notify-keyspace-events", "E$g")
        self.client.config_set("client-output-buffer-limit", "pubsub 0 0 0")
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe("__keyevent@*__:*")
        self.pubsub.get_message(timeout=1)  # the subscription confirmation

    def during(self, fn):
        """Run `fn`; returns its result and the (event, key) pairs on value keys while it ran."""
        done = "fm-test-writes-done"
        result = fn()
        self.client.set(done, 1)  # notifications arrive in order: once this one is seen, all were
        events = []
        while True:
            message = self.pubsub.get_message(timeout=10)
            assert message is not None, "keyspace notifications stopped"
            if message["type"] != "pmessage":
                continue
            event, key = message["channel"].decode().rsplit(":", 1)[1], message["data"].decode()
            if key == done:
                break
            events.append((event, key))
        self.client.delete(done)
        self.pubsub.get_message(timeout=1)  # the `del` of the marker
        return result, [(e, k) for e, k in events if k.startswith("fm:{")]

    def close(self) -> None:
        self.pubsub.close()
        self.client.config_set("notify-keyspace-events", "")
        self.client.close()


def fresh_copy(built_project: Path, dest: Path) -> Path:
    shutil.copytree(built_project, dest, ignore=shutil.ignore_patterns("logs"))
    shutil.rmtree(dest / "target" / "featuremart", ignore_errors=True)
    return dest


def change_warehouse(project: Path, step: int) -> None:
    """The same warehouse change in each copy of the project: a few values change, a few entities leave."""
    import duckdb

    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"))
    try:
        if step == 2:
            con.execute("update main.customer_spend set spend_7d = spend_7d + 1 where customer_id in "
                        "(select distinct customer_id from main.customer_spend order by 1 limit 5)")
        elif step == 3:
            con.execute("delete from main.merchant_risk where merchant_id in "
                        "(select distinct merchant_id from main.merchant_risk order by 1 limit 2)")
    finally:
        con.close()


def counts(run) -> dict[str, tuple[int, int, int, int]]:
    return {v.view: (v.inserted, v.updated, v.deleted, v.unchanged) for v in run.views}


def sync_in(project: Path):
    with FeatureStore(project) as fs:
        return fs.sync()


def test_alternating_fresh_runners_are_as_incremental_as_one_directory(built_project, tmp_path, redis_url,
                                                                         monkeypatch):
    """Two runners that never keep target/featuremart, syncing in turn, write exactly what one directory's
    syncs write (same counts, the same value keys SET and deleted), never rebuild, and leave what a full
    refresh into an empty store leaves."""
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    single = fresh_copy(built_project, tmp_path / "single")
    runners = [fresh_copy(built_project, tmp_path / name) for name in ("a", "b")]
    writes = Writes(redis_url)
    steps = range(4)  # first sync, unchanged rerun, a few values changed, a few entities left
    try:
        expected = []
        for step in steps:
            change_warehouse(single, step)
            run, events = writes.during(lambda: sync_in(single))
            assert run.status == "success", run
            expected.append((counts(run), sorted(events)))
        redis.Redis.from_url(redis_url).flushall()
        for step in steps:
            for project in runners:
                change_warehouse(project, step)
            project = runners[step % 2]
            shutil.rmtree(project / "target" / "featuremart", ignore_errors=True)  # a fresh runner every time
            run, events = writes.during(lambda: sync_in(project))
            assert run.status == "success", run
            assert counts(run) == expected[step][0], f"step {step}"
            assert sorted(events) == expected[step][1], (step, set(events) ^ set(expected[step][1]))
            if step:
                assert all(v.restored and not v.rebuilt for v in run.views), run.views
        assert expected[1][1] == []  # the unchanged rerun wrote and deleted no value key
        assert sum(c[1] for c in expected[2][0].values()) == 5 and sum(e == "set" for e, _ in expected[2][1]) == 5
        assert sum(c[2] for c in expected[3][0].values()) == 2
    finally:
        writes.close()
    # What a full refresh of the same warehouse into an empty store holds (database 1 of the same server).
    online = dump(redis_url)
    reference_url = redis_url.rsplit("/", 1)[0] + "/1"
    redis.Redis.from_url(reference_url).flushdb()
    monkeypatch.setenv("FEATUREMART_REDIS_URL", reference_url)
    reference = fresh_copy(runners[1], tmp_path / "reference")
    with FeatureStore(reference) as fs:
        assert fs.sync(full_refresh=True).status == "success"
    assert online == dump(reference_url) and len(online) > 100
    redis.Redis.from_url(reference_url).flushdb()


# ---- the durable keys, on the one-view harness of test_sync -------------------------------------------------------

INDEX = keys.state_index_key("fm")


def state_keys(client: redis.Redis) -> set[str]:
    found = {k.decode() for k in client.scan_iter(match="fm:state*")}
    return found | ({INDEX} if client.exists(INDEX) else set())


def edit(client: redis.Redis, key: str, **fields) -> None:
    record = json.loads(client.get(key))
    record.update(fields)
    client.set(key, json.dumps(record))


def fresh_sync(h: Harness, **kw):
    """A sync from a runner with no local state (a new checkout, `dbt clean`)."""
    shutil.rmtree(h.root / "state", ignore_errors=True)
    return h.sync(**kw)


@pytest.fixture
def client(harness):
    c = redis.Redis.from_url(harness.store.url)
    yield c
    c.close()


def test_only_changed_views_are_uploaded_and_no_part_is_left_behind(harness, client):
    insert_entities(harness, 30)
    assert harness.sync().status == "success"
    record_key = keys.view_state_key("fm", "feats")
    first = json.loads(client.get(record_key))
    assert first["rows"] == 30 and first["parts"] >= 1 and first["pending"] is None
    assert state_keys(client) == {INDEX, record_key, *(f"{record_key}:{first['token']}:{n}"
                                                           for n in range(first["parts"]))}
    assert harness.sync().views[0].unchanged == 30  # unchanged: nothing uploaded
    assert json.loads(client.get(record_key))["token"] == first["token"]
    index = json.loads(client.get(INDEX))
    assert index["views"] == {"feats": first["token"]} and index["generation"] == json.loads(
        client.get(keys.generation_key("fm")))
    harness.sql("update feats set a = a + 1 where customer_id = 'C1'")
    assert fresh_sync(harness).views[0].updated == 1
    second = json.loads(client.get(record_key))
    assert second["token"] != first["token"]
    assert state_keys(client) == {INDEX, record_key, *(f"{record_key}:{second['token']}:{n}"
                                                           for n in range(second["parts"]))}
    run = harness.sync(full_refresh=True)  # the sweep of unserved keys leaves the state's keys alone
    assert run.status == "success" and client.exists(record_key, INDEX) == 2
    assert harness.online() == harness.expected()


@pytest.mark.parametrize("field,value,named", [("project", "someone_else", "project 'someone_else'"),
                                               ("prefix", "other", "prefix 'other'")])
@pytest.mark.parametrize("where", ["index", "record"])
def test_a_state_record_of_another_project_or_prefix_is_refused(harness, client, field, value, named, where):
    insert_entities(harness, 12)
    harness.sync()
    harness.sql("update feats set a = a + 1 where customer_id = 'C2'")
    edit(client, INDEX if where == "index" else keys.view_state_key("fm", "feats"), **{field: value})
    run = fresh_sync(harness)
    assert run.status == "success" and run.views[0].rebuilt and not run.views[0].restored
    note = next(n for n in run.notes if "refused the durable sync state" in n)
    assert named in note and "key_prefix" in note and "rebuilt from a SCAN" in note
    assert harness.online() == harness.expected()
    assert fresh_sync(harness).views[0].restored  # the sync put back a record of its own


def test_a_state_record_of_a_newer_manifest_is_used_with_a_note(harness, client):
    """Written by a runner with a newer manifest: it still describes what is online, so it is used (no
    rebuild), and this sync publishes its own manifest's definitions over it (docs/operations.md)."""
    insert_entities(harness, 12)
    harness.sync()
    later = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    edit(client, keys.view_state_key("fm", "feats"), manifest={"checksum": "newer", "generated_at": later})
    harness.sql("update feats set a = a + 1 where customer_id = 'C3'")
    harness.generated_at = datetime.now(timezone.utc).isoformat()  # this runner's manifest: older
    run = fresh_sync(harness)
    view = run.views[0]
    assert run.status == "success" and view.restored and not view.rebuilt and (view.updated, view.unchanged) == (1, 11)
    assert any("newer manifest" in n and later in n for n in run.notes), run.notes
    assert harness.online() == harness.expected()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing part"])
def test_a_corrupt_or_truncated_part_is_ignored_with_a_note(harness, client, damage):
    insert_entities(harness, 40)
    harness.sync()
    record = json.loads(client.get(keys.view_state_key("fm", "feats")))
    part = keys.view_state_part_key("fm", "feats", record["token"], 0)
    data = client.get(part)
    if damage == "flipped byte":
        client.set(part, data[:10] + bytes([data[10] ^ 1]) + data[11:])
    elif damage == "truncated":
        client.set(part, data[: len(data) // 2])
    else:
        client.delete(part)
    harness.sql("delete from feats where customer_id = 'C4'")
    run = fresh_sync(harness)
    assert run.status == "success" and run.views[0].rebuilt and run.views[0].deleted == 1
    assert any("not restored from the durable sync state" in n and ("sha256" in n or "missing" in n)
               for n in run.notes), run.notes
    assert harness.online() == harness.expected()


def test_an_interrupted_upload_is_never_trusted_and_leaves_no_orphans(harness, client, monkeypatch):
    """The connection fails after the first part of a new upload: the sync fails (its values are written, the
    generation did not move); the record stays pending, so the next fresh runner rebuilds, and the parts of
    the interrupted upload are deleted."""
    monkeypatch.setattr(durable, "PART_BYTES", 256)  # several parts
    insert_entities(harness, 40)
    harness.sync()
    harness.sql("update feats set a = a + 1")
    real_set_bytes, calls = harness.store.set_bytes, []

    def failing_set_bytes(key, data):
        calls.append(key)
        if len(calls) == 2:
            raise OnlineStoreError(f"SET {key!r} failed: connection reset (injected)")
        real_set_bytes(key, data)

    monkeypatch.setattr(harness.store, "set_bytes", failing_set_bytes)
    run = harness.sync()
    assert run.status == "failed" and "injected" in run.error
    monkeypatch.setattr(harness.store, "set_bytes", real_set_bytes)
    record = json.loads(client.get(keys.view_state_key("fm", "feats")))
    assert record["pending"] and client.exists(keys.view_state_part_key("fm", "feats", record["pending"], 0))
    run = fresh_sync(harness)
    assert run.status == "success" and run.views[0].rebuilt
    assert any("did not complete" in n for n in run.notes), run.notes
    record = json.loads(client.get(keys.view_state_key("fm", "feats")))
    assert state_keys(client) == {INDEX, keys.view_state_key("fm", "feats"),
                                  *(keys.view_state_part_key("fm", "feats", record["token"], n)
                                    for n in range(record["parts"]))}
    assert harness.online() == harness.expected()


def test_a_sync_failing_between_its_upload_and_the_seal_leaves_no_trusted_copy(harness, client, monkeypatch):
    """The durable copy is uploaded (the record switched to the run's token) but the seal fails: the index still
    names the previous token, so a fresh runner trusts neither copy; it rebuilds from a SCAN, serves the
    warehouse's values, and no part of either upload is left behind."""
    insert_entities(harness, 30)
    assert harness.sync().status == "success"  # the durable copy the index names
    harness.sql("update feats set a = a + 1 where customer_id = 'C1'")
    real_fenced = harness.store.fenced

    def failing_seal(fence, values=None):
        if values and keys.generation_key("fm") in values:  # the seal (the registry's switch passes)
            raise OnlineStoreError("connection reset during the seal (injected)")
        return real_fenced(fence, values)

    monkeypatch.setattr(harness.store, "fenced", failing_seal)
    run = harness.sync()
    assert run.status == "failed" and "injected" in run.error
    monkeypatch.undo()
    record = json.loads(client.get(keys.view_state_key("fm", "feats")))
    assert record["pending"] is None and record["rows"] == 30  # uploaded, never sealed
    run = fresh_sync(harness)
    assert run.status == "success" and run.views[0].rebuilt and not run.views[0].restored, run.notes
    assert harness.online() == harness.expected()
    record = json.loads(client.get(keys.view_state_key("fm", "feats")))
    assert state_keys(client) == {INDEX, keys.view_state_key("fm", "feats"),
                                  *(keys.view_state_part_key("fm", "feats", record["token"], n)
                                    for n in range(record["parts"]))}


def test_a_sync_interrupted_while_writing_values_makes_the_record_untrusted(harness, client):
    """The record is marked pending before any value is written: a sync that dies in the middle of the
    writes can never leave a record that looks current."""
    insert_entities(harness, 20)
    harness.sync()
    harness.sql("update feats set a = a + 7")

    def stop(view, phase, done, total):
        if phase == "writing":
            raise OnlineStoreError("the runner was stopped (injected)")

    assert harness.sync(progress=stop).status == "failed"
    assert json.loads(client.get(keys.view_state_key("fm", "feats")))["pending"]
    run = fresh_sync(harness)
    assert run.status == "success" and run.views[0].rebuilt and run.views[0].updated == 20
    assert harness.online() == harness.expected()


def test_a_view_removed_on_a_fresh_runner_takes_its_keys_and_state_keys_with_it(harness, client):
    insert_entities(harness, 10)
    harness.sync()
    old_record = keys.view_state_key("fm", "feats")
    harness.set_features(("a", "b"), view_name="feats_v2")
    run = fresh_sync(harness)
    assert run.status == "success"
    removed = [v for v in run.views if v.status == "removed"]
    assert [v.view for v in removed] == ["feats"] and removed[0].deleted == 10
    assert not client.exists(old_record) and not any(k.startswith(old_record) for k in state_keys(client))
    assert not list(client.scan_iter(match="fm:{*}:feats:*"))


# ---- sizing: describe prints the expected and actual memory of a view ----------------------------------------------

def test_describe_prints_expected_and_actual_memory(project, redis_url, monkeypatch):
    import io
    import re

    from rich.console import Console

    from featuremart.cli import main
    from featuremart.online.sizing import KEY_OVERHEAD_BYTES

    def describe(name: str) -> str:
        out = io.StringIO()
        assert main(["describe", name, "--project-dir", str(project)],
                    console=Console(file=out, width=400, color_system=None)) == 0
        return " ".join(out.getvalue().split())

    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    assert "online memory unknown: no sync recorded" in describe("customer_spend")
    with FeatureStore(project) as fs:
        run = fs.sync()
    synced = next(v for v in run.views if v.view == "customer_spend")
    text = describe("customer_spend")
    found = re.search(r"online memory expected ([\d.]+) (k?B) \(([\d,]+) entities x \((\d+) B per key \+ (\d+) B "
                      r"key \+ (\d+) B value\)\), actual ([\d.]+) (k?B) \(MEMORY USAGE of (\d+) keys x entities\); "
                      r"durable sync state ([\d.]+) (k?B)", text)
    assert found, text
    entities = int(found[3].replace(",", ""))
    assert entities == synced.inserted and int(found[4]) == KEY_OVERHEAD_BYTES and int(found[9]) == min(entities, 200)
    scale = {"B": 1, "kB": 1000}
    expected, actual = float(found[1]) * scale[found[2]], float(found[7]) * scale[found[8]]
    assert 0.5 < expected / actual < 2, (expected, actual)  # the formula and the measurement agree roughly
    # The key and value lengths are the real ones: read one key back.
    client = redis.Redis.from_url(redis_url)
    key = next(client.scan_iter(match="fm:{*}:customer_spend:*"))
    assert abs(len(key) - int(found[5])) <= 2
    client.close()
    monkeypatch.setenv("FEATUREMART_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    assert "online memory unknown: Cannot reach the online store" in describe("customer_spend")

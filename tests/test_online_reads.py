"""Online reads through the real path: a tiny dbt project with every supported type → `dbt build` on DuckDB →
`featuremart sync` into the session's redis-server → OnlineReader (records, columns, Arrow).

Also: missing and expired statuses, the inclusive ttl boundary, clear errors for unknown names, and a registry
refresh while threads read (every result is all-old or all-new).
"""

from __future__ import annotations

import json
import shutil
import threading
from datetime import date, datetime, timedelta, timezone
from types import MappingProxyType

import orjson
import pyarrow as pa
import pytest
import redis
import yaml

from featuremart import FeatureStore
from featuremart.errors import UnknownNameError
from featuremart.online.reader import EXPIRED, MISSING, PRESENT, FeatureValue
from tests.conftest import ROOT, dbt

pytestmark = pytest.mark.integration

EVENT = datetime(2025, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
TTL = timedelta(days=3650)
BIG = "x" * 100_000 + "é"
UNICODE = 'naïve ☃ 日本 "quoted" \\ back\nslash'
ODD_KEY = "a,b=c{d}%25"

FEATURES_YML = """\
version: 1
online_store: {url_env: FEATUREMART_REDIS_URL, key_prefix: fm}
defaults: {online: true}
"""
ENTITIES = {"thing": {"join_keys": {"thing_id": "string"}}, "account": {"join_keys": {"account_id": "int"}}}

ALL_TYPES_SQL = """\
select
    thing_id,
    cast(event_ts as timestamp) as event_ts,
    cast(f_int as bigint) as f_int,
    cast(f_float as double) as f_float,
    cast(f_whole as double) as f_whole,
    cast(f_bool as boolean) as f_bool,
    cast(f_str as varchar) as f_str,
    cast(f_big as varchar) as f_big,
    cast(f_ts as timestamp) as f_ts,
    cast(f_date as date) as f_date,
    cast(f_vec as double[]) as f_vec,
    cast(f_ints as bigint[]) as f_ints,
    cast(f_strs as varchar[]) as f_strs{extra}
from (values
    ('a', '2025-01-01 12:00:00.123456', 42, 1.5, 3.0, true, {unicode}, {big}, '2024-02-29 23:59:59.999999',
     '2024-02-29', [0.25, 1.0], [1, -2], ['x', 'ÿ']),
    ('a', '2024-12-01 00:00:00', 1, 1.0, 1.0, false, 'older', 'older', null, null, [], [], []),
    ('b', '2025-01-01 12:00:00.123456', null, null, null, null, null, null, null, null, [], [], []),
    ('c', '2025-01-01 12:00:00.123456', null, null, null, null, null, null, null, null, null, null, null),
    ({odd}, '2025-01-01 12:00:00.123456', -9007199254740993, -0.0, 1e300, false, '', '', '1970-01-01 00:00:00',
     '1970-01-01', [1e-300], [9007199254740993], [''])
) as t(thing_id, event_ts, f_int, f_float, f_whole, f_bool, f_str, f_big, f_ts, f_date, f_vec, f_ints, f_strs)
"""

ALL_TYPES_YML = """\
version: 2
models:
  - name: all_types
    description: One row per thing per change.
    config:
      meta:
        featuremart: {entity: thing, timestamp: event_ts, ttl: 3650d}
  - name: balances
    config:
      meta:
        featuremart: {entity: account, timestamp: event_ts, ttl: 3650d}
"""

BALANCES_SQL = "select 7 as account_id, timestamp '2025-01-01 00:00:00' as event_ts, 10.5 as balance\n"


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def write_models(project, extra: str = "") -> None:
    models = project / "models"
    models.mkdir(exist_ok=True)
    (models / "all_types.sql").write_text(ALL_TYPES_SQL.format(
        unicode=sql_text(UNICODE), big="repeat('x', 100000) || 'é'", odd=sql_text(ODD_KEY), extra=extra))
    (models / "all_types.yml").write_text(ALL_TYPES_YML)
    (models / "balances.sql").write_text(BALANCES_SQL)


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A dbt project with one feature view of every type (built once; tests that change it work on a copy)."""
    project = tmp_path_factory.mktemp("tiny")
    shutil.copy2(ROOT / "profiles.yml", project / "profiles.yml")
    dbt_project = yaml.safe_load((ROOT / "dbt_project.yml").read_text())
    dbt_project["vars"]["featuremart_entities"] = ENTITIES
    (project / "dbt_project.yml").write_text(yaml.safe_dump(dbt_project))
    shutil.copytree(ROOT / "macros", project / "macros")
    (project / "features.yml").write_text(FEATURES_YML)
    write_models(project)
    dbt(project, "build")
    return project


@pytest.fixture
def synced(tiny_project, redis_url):
    with FeatureStore(tiny_project, redis_url=redis_url) as fs:
        run = fs.sync()
        assert run.status == "success", run.to_json()
    store = FeatureStore.from_url(redis_url)
    yield store
    store.close()


def test_every_type_round_trips(synced):
    rows = synced.get_online_features([{"thing_id": "a"}, {"thing_id": "b"}, {"thing_id": "c"},
                                       {"thing_id": ODD_KEY}], features=["all_types.*"])
    a, b, c, odd = ({k: v.value for k, v in r.items()} for r in rows)
    assert a == {"f_int": 42, "f_float": 1.5, "f_whole": 3.0, "f_bool": True, "f_str": UNICODE, "f_big": BIG,
                 "f_ts": datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone.utc),
                 "f_date": date(2024, 2, 29), "f_vec": [0.25, 1.0], "f_ints": [1, -2], "f_strs": ["x", "ÿ"]}
    assert type(a["f_whole"]) is float and type(a["f_vec"][1]) is float
    assert all(v.status == PRESENT and v.event_ts == EVENT for v in rows[0].values())
    assert b == {**dict.fromkeys(a), "f_vec": [], "f_ints": [], "f_strs": []}
    assert c == dict.fromkeys(a)  # nulls are present and null, not missing
    assert all(v.status == PRESENT for v in rows[2].values())
    assert odd == {"f_int": -9007199254740993, "f_float": -0.0, "f_whole": 1e300, "f_bool": False, "f_str": "",
                   "f_big": "", "f_ts": datetime(1970, 1, 1, tzinfo=timezone.utc), "f_date": date(1970, 1, 1),
                   "f_vec": [1e-300], "f_ints": [9007199254740993], "f_strs": [""]}


def test_reads_pause_the_garbage_collector_and_give_back_the_state_they_found(synced, monkeypatch):
    """The rows are decoded and the records built with Python's cyclic collector paused (a thousand tracked
    objects per 100-entity read, none in a cycle: bench/README.md). It runs again afterwards, also when
    building fails half-way; an application that turned it off finds it off."""
    import gc

    from featuremart.online.reader import OnlineResult, _Plan

    seen = []
    for cls, name in ((_Plan, "decode"), (OnlineResult, "_value_columns")):
        def spy(*args, __original=getattr(cls, name), __name=name, **kwargs):
            seen.append((__name, gc.isenabled()))
            return __original(*args, **kwargs)
        monkeypatch.setattr(cls, name, spy)
    entities = [{"thing_id": "a"}, {"thing_id": "nobody"}]
    assert gc.isenabled()
    [a, nobody] = synced.get_online_features(entities, features=["all_types.f_int"])
    assert (a["f_int"].value, nobody["f_int"].status) == (42, MISSING)
    assert seen == [("decode", False), ("_value_columns", False)] and gc.isenabled()

    def broken(*args, **kwargs):
        raise RuntimeError("half-way")
    monkeypatch.setattr(OnlineResult, "_value_columns", broken)
    with pytest.raises(RuntimeError, match="half-way"):
        synced.get_online_features(entities, features=["all_types.f_int"])
    assert gc.isenabled()
    monkeypatch.undo()

    gc.disable()
    try:
        synced.get_online_features(entities, features=["all_types.f_int"])
        synced.get_online_features_columns(entities, features=["all_types.f_int"])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_int_keys_and_missing_entities(synced):
    [hit, by_text, miss] = synced.get_online_features([{"account_id": 7}, {"account_id": "7"}, {"account_id": 8}],
                                                      features=["balances.balance"])
    assert hit["balance"] == FeatureValue(10.5, datetime(2025, 1, 1, tzinfo=timezone.utc), PRESENT)
    assert by_text == hit
    assert miss["balance"] == FeatureValue(None, None, MISSING)


def test_ttl_boundary_is_inclusive_and_expired_is_never_served(synced):
    entities = [{"thing_id": "a"}]
    [at] = synced.reader.get(entities, features=["all_types.f_int"], now=EVENT + TTL)
    assert at["f_int"] == FeatureValue(42, EVENT, PRESENT)
    [past] = synced.reader.get(entities, features=["all_types.f_int"], now=EVENT + TTL + timedelta(microseconds=1))
    assert past["f_int"] == FeatureValue(None, EVENT, EXPIRED)
    columns = synced.reader.read(entities, features=["all_types.f_int"], now=EVENT + TTL * 2).to_columns()
    assert columns == {"thing_id": ["a"], "f_int": [None], "f_int__status": [EXPIRED], "f_int__event_ts": [EVENT]}


def test_columns_and_arrow(synced):
    entities = [{"thing_id": "a"}, {"thing_id": "nobody"}]
    columns = synced.get_online_features_columns(entities, features=["all_types.f_float", "all_types.f_vec"])
    assert columns == {"thing_id": ["a", "nobody"], "f_float": [1.5, None], "f_float__status": [PRESENT, MISSING],
                       "f_float__event_ts": [EVENT, None], "f_vec": [[0.25, 1.0], None],
                       "f_vec__status": [PRESENT, MISSING], "f_vec__event_ts": [EVENT, None]}
    table = synced.get_online_features_arrow(entities, features=["all_types.*"])
    assert table.num_rows == 2
    assert table.schema.field("f_int").type == pa.int64()
    assert table.schema.field("f_ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("f_date").type == pa.date32()
    assert table.schema.field("f_vec").type == pa.list_(pa.float64())
    assert table.schema.field("f_strs").type == pa.list_(pa.string())
    assert table.column("f_big__status").to_pylist() == [PRESENT, MISSING]
    assert table.column("f_big__event_ts").to_pylist() == [EVENT, None]
    assert table.column("f_str").to_pylist() == [UNICODE, None]


def test_unknown_names_list_what_exists(synced):
    one = [{"thing_id": "a"}]
    with pytest.raises(UnknownNameError, match=r"no feature service 'nope'; services .*: none"):
        synced.get_online_features(one, service="nope")
    with pytest.raises(UnknownNameError, match=r"no feature view 'nope'; feature views: all_types, balances"):
        synced.get_online_features(one, features=["nope.f"])
    with pytest.raises(UnknownNameError, match=r"has no feature 'nope'; its features: f_int, f_float"):
        synced.get_online_features(one, features=["all_types.nope"])
    with pytest.raises(UnknownNameError, match=r"should be written view.feature"):
        synced.get_online_features(one, features=["f_int"])
    with pytest.raises(UnknownNameError, match=r"no features requested"):
        synced.get_online_features(one, features=[])
    with pytest.raises(UnknownNameError, match=r"missing entity key\(s\) thing_id; unknown entity key\(s\) thing: "
                                               r"this request needs thing_id \(entity keys known: account_id, "
                                               r"thing_id\); the entity gives thing"):
        synced.get_online_features([{"thing": "a"}], features=["all_types.f_int"])
    with pytest.raises(UnknownNameError, match=r"unknown entity key\(s\) shop"):
        synced.get_online_features([{"thing_id": "a", "shop": 1}], features=["all_types.f_int"])
    with pytest.raises(UnknownNameError, match=r"thing_id is a string key; got 1 \(int\)"):
        synced.get_online_features([{"thing_id": 1}], features=["all_types.f_int"])
    with pytest.raises(UnknownNameError, match=r"account_id is an int key; got True"):
        synced.get_online_features([{"account_id": True}], features=["balances.balance"])
    with pytest.raises(UnknownNameError, match=r"an entity is an object of join keys"):
        synced.get_online_features(["a"], features=["all_types.f_int"])
    # A known key that this request does not need is fine (one entity dict for several services).
    synced.get_online_features([{"thing_id": "a", "account_id": 7}], features=["all_types.f_int"])


def test_registry_refresh_under_concurrent_reads(tiny_project, tmp_path, redis_url):
    """Threads read while a sync publishes a new version of the view: every result is all-old or all-new."""
    project = tmp_path / "tiny"
    shutil.copytree(tiny_project, project, ignore=shutil.ignore_patterns("logs"))
    with FeatureStore(project, redis_url=redis_url) as fs:
        assert fs.sync().status == "success"
    write_models(project, extra=",\n    f_int * 10 as f_new")
    dbt(project, "build")

    reader = FeatureStore.from_url(redis_url)
    old_version = reader.reader.read([{"thing_id": "a"}], features=["all_types.*"]).versions["all_types"]
    stop = threading.Event()
    seen: dict[str, int] = {}
    failures: list[str] = []

    def read_loop() -> None:
        while not stop.is_set():
            try:
                result = reader.reader.read([{"thing_id": "a"}, {"thing_id": "b"}], features=["all_types.*"])
                version = result.versions["all_types"]
                [a, b] = result.to_records()
                new = version != old_version
                if ("f_new" in result.names) != new or any(v.status != PRESENT for v in (*a.values(),
                                                                                          *b.values())):
                    failures.append(f"mixed: {version} {list(result.names)} {a} {b}")
                if new and a["f_new"].value != 420:
                    failures.append(f"new version without its value: {a}")
                seen[version] = seen.get(version, 0) + 1
            except Exception as exc:  # noqa: BLE001 - any error fails the test below
                failures.append(repr(exc))

    threads = [threading.Thread(target=read_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with FeatureStore(project, redis_url=redis_url) as fs:
            run = fs.sync()
        assert run.status == "success", run.to_json()
        deadline = datetime.now() + timedelta(seconds=1)
        while datetime.now() < deadline and len(seen) < 2:
            pass
    finally:
        stop.set()
        for t in threads:
            t.join()
        reader.close()
    assert not failures, failures[:3]
    assert old_version in seen and len(seen) == 2, seen


def test_numpy_scalars_are_entity_keys(synced):
    """Keys taken from numpy arrays or pandas frames (numpy.int64, numpy.str_) read like plain ints and strs."""
    import numpy as np

    plain = synced.get_online_features([{"account_id": 7, "thing_id": "a"}],
                                       features=["balances.balance", "all_types.f_int"])
    for account, thing in ((np.int64(7), np.str_("a")), (np.int32(7), "a"), (np.uint8(7), np.str_("a"))):
        assert synced.get_online_features([{"account_id": account, "thing_id": thing}],
                                          features=["balances.balance", "all_types.f_int"]) == plain
    table = synced.get_online_features_arrow([{"account_id": np.int64(7), "thing_id": np.str_("a")}],
                                             features=["balances.balance", "all_types.f_int"])
    assert table.column("account_id").to_pylist() == [7] and table.column("thing_id").to_pylist() == ["a"]
    assert table.column("balance").to_pylist() == [10.5]
    for wrong in (np.float64(7.0), np.bool_(True), "²", "7.0", 7.0):
        with pytest.raises(UnknownNameError, match=r"account_id is an int key; got .*give an integer"):
            synced.get_online_features([{"account_id": wrong}], features=["balances.balance"])


SHORT_TTL_SQL = """\
select 'gone' as thing_id, timestamp '2000-01-01 00:00:00' as event_ts, 1 as v
union all
select 'here', timestamp '2025-01-01 00:00:00', 2
"""
SHORT_TTL_YML = """\
version: 2
models:
  - name: short_ttl
    config:
      meta:
        featuremart: {entity: thing, timestamp: event_ts, ttl: 3650d}
"""


def test_an_outlived_value_reads_missing_and_expired_only_while_its_key_remains(tiny_project, tmp_path,
                                                                                  redis_url):
    """What docs/serving.md says: keys expire in Redis at event time + ttl, so an entity whose value outlived
    its ttl reads `missing` (nothing is kept for it); `expired` is what a read sees of a key still there past
    the ttl (the instant before Redis removes it, or a read with an explicit later `now`)."""

    project = tmp_path / "tiny"
    shutil.copytree(tiny_project, project, ignore=shutil.ignore_patterns("logs"))
    (project / "models" / "short_ttl.sql").write_text(SHORT_TTL_SQL)
    (project / "models" / "short_ttl.yml").write_text(SHORT_TTL_YML)
    dbt(project, "build")
    with FeatureStore(project, redis_url=redis_url) as fs:
        run = fs.sync(full_refresh=True)  # the copied target/ holds the state of another test's sync
        assert run.status == "success", run.to_json()
    with FeatureStore.from_url(redis_url) as fs:
        entities = [{"thing_id": "gone"}, {"thing_id": "here"}, {"thing_id": "never"}]
        gone, here, never = (r["v"] for r in fs.get_online_features(entities, features=["short_ttl.v"]))
        assert gone == never == FeatureValue(None, None, MISSING)
        assert here.status == PRESENT and here.value == 2
        [later] = fs.reader.get([{"thing_id": "here"}], features=["short_ttl.v"], now=here.event_ts + TTL + timedelta(seconds=1))
        assert later["v"] == FeatureValue(None, here.event_ts, EXPIRED)
    client = redis.Redis.from_url(redis_url)
    try:
        assert not list(client.scan_iter(match="fm:{thing_id=gone}:*"))
        [key] = client.scan_iter(match="fm:{thing_id=here}:short_ttl:*")
        expires_ms = client.pexpiretime(key)
        assert expires_ms == int((here.event_ts + TTL).timestamp() * 1000)
    finally:
        client.close()



def test_http_results_of_every_type_are_what_orjson_writes_of_the_records(synced, redis_url):
    """`to_json` writes the HTTP response's results as text, column by column: for every type (commas and
    quotes inside strings and arrays, -0.0, 1e300, microsecond timestamps, nulls, empty arrays) and an int
    beyond 64 bits put into Redis by hand (which orjson refuses), the text parses to what orjson writes of
    the records, one dict per value, keys in request order."""
    client = redis.Redis.from_url(redis_url)
    try:
        [key] = client.scan_iter(match="fm:{thing_id=b}:all_types:*")
        position = 1 + [f.name for f in synced.reader.registry.view("all_types").features].index("f_int")
        row = orjson.loads(client.get(key))
        row[position] = "BIG"
        client.set(key, orjson.dumps(row).replace(b'"BIG"', b"%d" % (1 << 70)), keepttl=True)
    finally:
        client.close()
    entities = [{"thing_id": "a"}, {"thing_id": "b"}, {"thing_id": "nobody"},
                MappingProxyType({"thing_id": "c"}), {"thing_id": ODD_KEY}]  # any Mapping is an entity
    result = synced.reader.read(entities, features=["all_types.f_strs", "all_types.*"])
    records = result.to_records()
    assert records[1]["f_int"].value == 1 << 70
    text = result.to_json()
    assert b"%d" % (1 << 70) in text  # exact, not a float
    expected = json.loads(json.dumps([{"entity": dict(e), "values": {k: {**v._asdict(), "event_ts": v.event_ts}
                                                              for k, v in r.items()}}
                                      for e, r in zip(entities, records)], default=_iso))
    assert json.loads(text) == expected
    assert [list(r["values"]) for r in json.loads(text)] == [list(records[0])] * len(entities)


def _iso(value):
    return value.isoformat()

BALANCE_EVENT = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_a_batch_mixes_statuses_across_views_in_every_shape(synced):
    """A batch is shaped column by column (no Python step per value): rows present, missing and expired in
    two views, with the requested names interleaved across the views, read back through records, the HTTP
    dicts, columns and Arrow, each value where it belongs."""
    now = BALANCE_EVENT + TTL + timedelta(microseconds=1)  # balances just past its ttl, all_types within it
    entities = [{"thing_id": "a", "account_id": 7}, {"thing_id": "nobody", "account_id": 8},
                {"thing_id": ODD_KEY, "account_id": 7}, {"thing_id": "c", "account_id": 8}]
    result = synced.reader.read(entities, features=["all_types.f_int", "balances.balance", "all_types.f_str"],
                                now=now)
    expired = FeatureValue(None, BALANCE_EVENT, EXPIRED)
    missing = FeatureValue(None, None, MISSING)
    expected = [
        {"f_int": FeatureValue(42, EVENT, PRESENT), "balance": expired, "f_str": FeatureValue(UNICODE, EVENT, PRESENT)},
        {"f_int": missing, "balance": missing, "f_str": missing},
        {"f_int": FeatureValue(-9007199254740993, EVENT, PRESENT), "balance": expired,
         "f_str": FeatureValue("", EVENT, PRESENT)},
        {"f_int": FeatureValue(None, EVENT, PRESENT), "balance": missing, "f_str": FeatureValue(None, EVENT, PRESENT)},
    ]
    records = result.to_records()
    assert records == expected
    assert [list(r) for r in records] == [["f_int", "balance", "f_str"]] * 4  # request order, not view order
    assert all(type(v) is FeatureValue for r in records for v in r.values())
    def as_json(v: FeatureValue) -> dict:  # what the HTTP response carries: the event time as ISO 8601 text
        return {**v._asdict(), "event_ts": None if v.event_ts is None else v.event_ts.isoformat()}

    response = orjson.loads(result.to_json())
    assert response == [{"entity": e, "values": {k: as_json(v) for k, v in r.items()}}
                        for e, r in zip(entities, expected)]
    assert [list(r["values"]) for r in response] == [["f_int", "balance", "f_str"]] * 4
    columns = result.to_columns()
    for name in ("f_int", "balance", "f_str"):
        assert columns[name] == [r[name].value for r in expected], name
        assert columns[name + "__status"] == [r[name].status for r in expected], name
        assert columns[name + "__event_ts"] == [r[name].event_ts for r in expected], name
    assert result.to_arrow().to_pydict() == columns
    assert result.status_counts() == {PRESENT: 6, MISSING: 4, EXPIRED: 2}


def test_a_batch_of_string_keys_reads_as_one_entity_at_a_time(synced):
    """Plain string keys of a batch are checked and formatted column by column; what needs a closer look
    (escaping, a wrong type, a missing or unknown key, an entity that is no dict) takes the per-entity path,
    with the same values and the same errors as entities read one at a time."""
    features = ["all_types.f_int", "all_types.f_str"]
    plain = [{"thing_id": t} for t in ("a", "b", "c", "nobody")]
    plan = synced.reader._plan(None, features)
    assert plan._string_keys(plain) is not None  # the column-by-column path is the one measured here
    for batch in (plain, [*plain, {"thing_id": ODD_KEY}], [{"thing_id": "a", "account_id": 7}, *plain]):
        one_by_one = [synced.get_online_features([e], features=features)[0] for e in batch]
        assert synced.get_online_features(batch, features=features) == one_by_one
    assert synced.get_online_features([*plain, {"thing_id": ODD_KEY}], features=features)[-1]["f_int"].value \
        == -9007199254740993
    bad = [({"thing_id": 1}, r"thing_id is a string key; got 1 \(int\)"),
           ({"thing": "a"}, r"missing entity key\(s\) thing_id; unknown entity key\(s\) thing"),
           ({"thing_id": "a", "shop": "x"}, r"unknown entity key\(s\) shop"),
           ("a", r"an entity is an object of join keys")]
    for entity, message in bad:
        with pytest.raises(UnknownNameError, match=message):
            synced.get_online_features([*plain, entity, *plain], features=features)


def test_arrow_is_the_columns_typed_for_every_type_and_batch(synced):
    """`to_arrow` builds one array per Arrow type and slices it into columns, with a cached status column when a
    view is all present: every column equals `to_columns`, whatever the mix of types, lengths and statuses,
    and a later read with missing values leaves an earlier table's shared all-present statuses unchanged."""
    features = ["all_types.*", "balances.balance"]
    present = [{"thing_id": "a", "account_id": 7}, {"thing_id": ODD_KEY, "account_id": 7}]
    mixed = [*present, {"thing_id": "nobody", "account_id": 8}]
    first = synced.reader.read(present, features=features)
    table = first.to_arrow()
    assert table.to_pydict() == first.to_columns()
    assert set(table.column("balance__status").to_pylist()) == {PRESENT}
    assert table.column("f_ts").to_pylist()[1] == datetime(1970, 1, 1, tzinfo=timezone.utc)
    for batch in (present[:1], mixed, mixed[2:], []):
        result = synced.reader.read(batch, features=features)
        other = result.to_arrow()
        assert other.to_pydict() == result.to_columns()
        assert other.column_names == table.column_names and other.schema == table.schema
    assert table.to_pydict() == first.to_columns()  # unchanged by the reads since


def test_record_builder_takes_any_name_as_data():
    """Records are built by a generated dict display: names with quotes, braces, backslashes, code or non-ASCII
    text are keys, never source, and a plan of thousands of names builds too."""
    from featuremart.online.reader import _record_builder

    names = ["a'b", 'c"}', "x\\", "__import__('os').getcwd()", "é ☃", "v0"]
    assert _record_builder(names)(*range(6)) == dict(zip(names, range(6)))
    many = [f"f{i}" for i in range(5000)]
    assert _record_builder(many)(*range(5000)) == dict(zip(many, range(5000)))


def test_arrow_types_and_values_are_the_records_for_every_status_and_type(synced):
    """`to_arrow` fills the groups laid out once per plan and assembles the table against the plan's cached
    schema (pyarrow casts a column to the schema's type silently, so a wrong cached type would change the
    table, not fail): every type, nulls, a missing entity and an expired view, one entity and a batch, read back
    column by column and compared with the records API, with the exact Arrow types and the statuses' full
    three-value dictionary."""
    now = BALANCE_EVENT + TTL + timedelta(microseconds=1)  # balances just past its ttl, all_types within it
    features = ["all_types.*", "balances.balance"]
    batch = [{"thing_id": "a", "account_id": 7}, {"thing_id": "c", "account_id": 8},
             {"thing_id": "nobody", "account_id": 7}, {"thing_id": ODD_KEY, "account_id": 8}]
    value_types = {"f_int": pa.int64(), "f_float": pa.float64(), "f_whole": pa.float64(), "f_bool": pa.bool_(),
                   "f_str": pa.string(), "f_big": pa.string(), "f_ts": pa.timestamp("us", tz="UTC"),
                   "f_date": pa.date32(), "f_vec": pa.list_(pa.float64()), "f_ints": pa.list_(pa.int64()),
                   "f_strs": pa.list_(pa.string()), "balance": pa.float64()}
    status_type, ts_type = pa.dictionary(pa.int8(), pa.string()), pa.timestamp("us", tz="UTC")
    expected_schema = pa.schema([("thing_id", pa.string()), ("account_id", pa.int64()),
                                 *((c, t) for name, vt in value_types.items()
                                   for c, t in ((name, vt), (name + "__status", status_type),
                                                (name + "__event_ts", ts_type)))])
    for entities in (batch[:1], batch, batch[2:3], batch * 30):
        result = synced.reader.read(entities, features=features, now=now)
        table, records = result.to_arrow(), result.to_records()
        assert table.schema == expected_schema
        assert table.num_rows == len(entities)
        assert table.column("thing_id").to_pylist() == [e["thing_id"] for e in entities]
        for name in value_types:
            assert table.column(name).to_pylist() == [r[name].value for r in records], name
            assert table.column(name + "__status").to_pylist() == [r[name].status for r in records], name
            assert table.column(name + "__event_ts").to_pylist() == [r[name].event_ts for r in records], name
            for chunk in table.column(name + "__status").chunks:
                assert chunk.dictionary.to_pylist() == [PRESENT, MISSING, EXPIRED], name
    assert {r["f_int"].status for r in records} == {PRESENT, MISSING} and \
        {r["balance"].status for r in records} == {EXPIRED, MISSING}


def _store_all_types_value(synced, redis_url, feature: str, value) -> None:
    """Overwrite thing a's stored `all_types.<feature>` with `value`, as another writer of the format might."""
    position = 1 + [f.name for f in synced.reader.registry.view("all_types").features].index(feature)
    _edit_all_types_row(redis_url, lambda row: row.__setitem__(position, value))


def _edit_all_types_row(redis_url, edit) -> None:
    """Apply `edit` to thing a's stored `all_types` row (a JSON array) in place in Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        [key] = client.scan_iter(match="fm:{thing_id=a}:all_types:*")
        row = orjson.loads(client.get(key))
        edit(row)
        client.set(key, orjson.dumps(row), keepttl=True)
    finally:
        client.close()


def test_a_bool_in_an_int_feature_is_1_or_0_in_arrow_with_or_without_nulls(synced, redis_url):
    """A stored `true` where an int feature belongs (no sync writes one; another writer of the documented format
    might) reads as True in records and columns and as 1 in Arrow's int64 column, whether the column's values
    go through the buffer path (no null) or through `pa.array` (a null beside it), never an error in one case and
    a value in the other: 1 == True, so Arrow still equals the records API."""
    _store_all_types_value(synced, redis_url, "f_int", True)
    for entities, expected in (([{"thing_id": "a"}], [1]), ([{"thing_id": "a"}, {"thing_id": "c"}], [1, None])):
        result = synced.reader.read(entities, features=["all_types.f_int"])
        values = [r["f_int"].value for r in result.to_records()]
        assert values == [True, None][:len(entities)] and values[0] is True
        column = result.to_arrow().column("f_int")
        assert column.type == pa.int64() and column.to_pylist() == expected == values


def test_a_bool_in_an_int_array_feature_is_1_or_0_in_arrow(synced, redis_url):
    """A stored `true` inside an int array feature (another writer of the documented format might write one)
    reads as True in records and columns and as 1 in Arrow's list<int64> column, as a bool in an int feature
    does, for one entity and beside an empty and a null array, where `pa.array` alone refuses a bool as int64."""
    _store_all_types_value(synced, redis_url, "f_ints", [True, -2, False])
    for others, expected in (([], []), ([{"thing_id": "b"}], [[]]), ([{"thing_id": "c"}], [None])):
        result = synced.reader.read([{"thing_id": "a"}, *others], features=["all_types.f_ints"])
        values = [r["f_ints"].value for r in result.to_records()]
        assert values[0] == [True, -2, False] and values[0][0] is True
        column = result.to_arrow().column("f_ints")
        assert column.type == pa.list_(pa.int64()) and column.to_pylist() == [[1, -2, 0], *expected] == values


def test_one_entity_arrow_through_ipc_is_the_columns_from_every_thread(synced):
    """One present entity of int and float features (string or int key) is read into Arrow through a per-thread
    IPC stream reader fed a message packed from a template (`_OneRow`): every column, type and status equals
    `to_columns` and the records, for keys with characters that need escaping, a bool in an int feature, from
    several threads at once, and a table stays unchanged by the reads after it; null values too (their validity
    bits and null counts packed, beside present values). Statuses other than present and other types take the
    general path, with the same results."""
    features = ["all_types.f_int", "all_types.f_float", "all_types.f_whole"]
    cases = [([{"thing_id": "a"}], features), ([{"thing_id": ODD_KEY}], features),
             ([{"account_id": 7}], ["balances.balance"]), ([{"thing_id": "b"}], features),  # b: nulls
             ([{"thing_id": "nobody"}], features), ([{"thing_id": "a"}], ["all_types.*"])]
    covered = {i for i, (entities, fs) in enumerate(cases)
               if synced.reader.read(entities, features=fs)._plan.arrow_layout().one is not None}
    assert covered == {0, 1, 2, 3, 4}

    def check(entities, fs, through_ipc=False):
        result = synced.reader.read(entities, features=fs)
        table = result.to_arrow()
        assert table.to_pydict() == result.to_columns()
        if through_ipc:  # built by the reader, not by the general path after a failed packing
            assert result._plan.arrow_layout().one.table(entities[0], result._rows).equals(table)
        assert table.schema == result._plan.arrow_layout().schema
        for name, value in result.to_records()[0].items():
            assert table.column(name).to_pylist() == [value.value]
            assert table.column(name + "__status").to_pylist() == [value.status]
            assert table.column(name + "__event_ts").to_pylist() == [value.event_ts]
        return table

    first = check(*cases[0], through_ipc=True)
    assert first.column("f_int").to_pylist() == [42] and first.column("f_float").to_pylist() == [1.5]
    assert check(*cases[1], through_ipc=True).column("thing_id").to_pylist() == [ODD_KEY]
    check(*cases[2], through_ipc=True)
    nulls = check(*cases[3], through_ipc=True)
    assert [nulls.column(f).null_count for f in ("f_int", "f_float", "f_whole")] == [1, 1, 1]
    for case in cases[4:]:
        check(*case)
    assert first.to_pydict() == synced.reader.read(*cases[0][:1], features=features).to_columns()
    errors: list[BaseException] = []

    def reads():
        try:
            for i in range(50):
                check(*cases[i % 4], through_ipc=True)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=reads) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


def test_one_entity_arrow_of_a_row_with_some_nulls_is_the_general_paths_table(synced, redis_url):
    """Nulls among present values, in two views, go through `_OneRow`: each value's validity bit and null count
    are its own (a null shifts nothing), and the table equals the one the general path builds, null counts and
    all; a table read before stays as it was."""
    features = ["all_types.f_int", "all_types.f_float", "all_types.f_whole", "balances.balance"]
    entity = {"thing_id": "a", "account_id": 7}
    before = synced.get_online_features_arrow([entity], features=features)
    _edit_all_types_row(redis_url, lambda row: row.__setitem__(2, None))  # f_float
    result = synced.reader.read([entity], features=features)
    layout = result._plan.arrow_layout()
    table = layout.one.table(entity, result._rows)
    one, layout.one = layout.one, None
    try:
        general = result.to_arrow()
    finally:
        layout.one = one
    assert table is not None and table.equals(general) and table.equals(result.to_arrow())
    table.validate(full=True)
    assert [table.column(n).null_count for n in ("f_int", "f_float", "f_whole", "balance")] == [0, 1, 0, 0]
    assert {n: table.column(n).to_pylist() for n in ("f_int", "f_float", "f_whole", "balance")} == \
        {"f_int": [42], "f_float": [None], "f_whole": [3.0], "balance": [10.5]}
    assert table.column("f_float__status").to_pylist() == ["present"]
    assert before.column("f_float").to_pylist() == [1.5]


def test_one_entity_arrow_of_a_longer_stored_row_is_its_values(synced, redis_url):
    """A stored row with a value more than its view has (another writer of the format) serves its view's values
    in every API: `_OneRow` takes each view's values from its row by position, as the general path does, so
    the IPC table still equals the columns and records, and the next view's values are not shifted."""
    _edit_all_types_row(redis_url, lambda row: row.append(7))
    features = ["all_types.f_int", "all_types.f_float", "balances.balance"]
    entity = {"thing_id": "a", "account_id": 7}
    result = synced.reader.read([entity], features=features)
    table = result._plan.arrow_layout().one.table(entity, result._rows)
    assert table is not None and table.equals(result.to_arrow())
    assert table.to_pydict() == result.to_columns()
    [record] = result.to_records()
    for name, value in (("f_int", 42), ("f_float", 1.5), ("balance", 10.5)):
        assert table.column(name).to_pylist() == [value] == [record[name].value]

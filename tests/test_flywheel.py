"""The flywheel (issue 13): served-feature logging, the logs as a dbt source, training from logs, and skew.

Everything runs for real: the reference project built by `dbt build` on DuckDB, a private redis-server, reads
through the Python API and a `featuremart serve` process, the logs read back by DuckDB and by dbt.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from featuremart.cli import EXIT_BREACH, EXIT_OK, EXIT_USER_ERROR, main
from featuremart.errors import ServedLogError
from featuremart.online.reader import OnlineReader
from featuremart.servedlog import DEFAULT_LOG_DIR, LOG_COLUMNS, ServedLog, export, export_logs, request_id
from featuremart.servedlog.writer import SPOOL_DIR
from featuremart.servedlog.skew import skew_report
from featuremart.store import FeatureStore
from tests.conftest import ROOT, dbt
from tests.feature_server import FeatureServer, serving_env

pytestmark = pytest.mark.integration
SERVICE = "fraud_model"
ENTITY_KEYS = ("customer_id", "merchant_id")


def warehouse(project: Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=read_only)


def dicts(con: duckdb.DuckDBPyConnection, query: str) -> list[dict]:
    cursor = con.execute(query)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def labels(project: Path, n: int, *, arrived: bool = False) -> list[tuple[str, str, str]]:
    """(txn_id, customer_id, merchant_id) of the first `n` labelled transactions (whose label arrived more than
    ten minutes ago, with `arrived`)."""
    until = utc_now() - timedelta(minutes=10) if arrived else datetime(9999, 1, 1)
    with warehouse(project) as con:
        return con.execute("select txn_id, customer_id, merchant_id from main.fraud_labels where labelled_at < ? "
                           "order by txn_id limit ?", [until, n]).fetchall()


def as_served(text: str | None, like: object) -> object:
    """A logged value's text read back as the type of the value served (numbers, bools and strings here)."""
    if text is None:
        return None
    if isinstance(like, bool):
        return {"true": True, "false": False}[text]
    return type(like)(text) if isinstance(like, (int, float)) else text


def file_rows(directory: Path, *, exporting: bool = True) -> list[dict]:
    """The rows of every log file under `directory` (FILE_COLUMNS: one per request x entity x view), its spool
    exported first (as `featuremart logs export` does) unless `exporting` is false."""
    if exporting:
        export_logs(directory)
    files = sorted(directory.glob("date=*/*.parquet"))
    if not files:
        return []
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default").to_pylist()


def logged_rows(directory: Path) -> list[dict]:
    """The log under `directory` as one row per feature (LOG_COLUMNS), expanded here in Python from the stored
    values: the oracle the dbt macro's expansion is checked against. Values are as Redis stored them (JSON)."""
    out = []
    for r in file_rows(directory):
        stored = json.loads(r["stored"]) if r["stored"] is not None else None
        for name, output, position, dtype in json.loads(r["features"]):
            out.append({
                **{k: r[k] for k in ("request_id", "request_ts", "service", "requested", "registry_id",
                                     "entity_index", "entity_keys")},
                "feature": f"{r['view']}.{name}", "output_name": output, "dtype": dtype,
                "view_version": r["view_version"],
                "value": stored[position] if r["status"] == "present" else None,
                "event_ts": (datetime(1970, 1, 1) + timedelta(microseconds=stored[0])) if stored else None,
                "status": r["status"]})
    return out


@pytest.fixture
def synced(project, redis_url, monkeypatch):
    """The reference project synced to a private Redis, with an open FeatureStore; logs go to project/data."""
    monkeypatch.delenv("FEATUREMART_SERVED_LOG_DIR", raising=False)
    store = FeatureStore(project, redis_url=redis_url)
    assert store.sync().status == "success"
    yield store
    store.close()


def serve_labels(store: FeatureStore, txns: list[tuple[str, str, str]]) -> dict[str, dict]:
    """Read the fraud service once per transaction under its id; returns what each read served."""
    served = {}
    for txn, customer, merchant in txns:
        with request_id(txn):
            served[txn] = store.get_online_features([{"customer_id": customer, "merchant_id": merchant}],
                                                    service=SERVICE)[0]
    return served


# -- logging ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_logged_rows_are_what_was_served(synced, project, tz, monkeypatch):
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        log = synced.log_served()
        assert log.directory == project / DEFAULT_LOG_DIR
        txns = labels(project, 20)
        before = datetime.now(timezone.utc).replace(tzinfo=None)
        served = serve_labels(synced, txns)
        batch = [{"customer_id": c, "merchant_id": m} for _, c, m in txns]
        batch_served = synced.get_online_features(batch, service=SERVICE)  # one request, 20 entities
        synced.get_online_features(batch, features=["customer_spend.*"])  # a feature list: not logged by default
        after = datetime.now(timezone.utc).replace(tzinfo=None)
        assert log.flush()
        stats = log.stats()
        assert (stats.logged_rows, stats.written_rows, stats.dropped_rows, stats.buffered_rows) == (320, 320, 0, 0)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()

    rows = logged_rows(log.directory)
    assert len(rows) == 320 and list(rows[0]) == [name for name, _ in LOG_COLUMNS]
    # partitioned by the request's UTC date
    assert {p.name for p in log.directory.iterdir()} == {SPOOL_DIR} | {f"date={r['request_ts']:%Y-%m-%d}" for r in rows}
    assert list((log.directory / SPOOL_DIR).glob("*.spool")) == []  # exported: the segments are gone
    by_request = {}
    for row in rows:
        by_request.setdefault(row["request_id"], []).append(row)
    assert set(txn for txn, _, _ in txns) <= set(by_request) and len(by_request) == 21
    version = synced.reader.registry_id
    for txn, customer, merchant in txns:
        got = by_request[txn]
        assert len(got) == 8 and {r["service"] for r in got} == {SERVICE}
        assert {r["registry_id"] for r in got} == {version}
        assert {json.loads(r["entity_keys"]) == {"customer_id": customer, "merchant_id": merchant} for r in got} == {True}
        for r in got:
            value = served[txn][r["output_name"]]
            assert r["status"] == value.status
            assert r["value"] == value.value
            assert r["event_ts"] == (value.event_ts.replace(tzinfo=None) if value.event_ts else None)
            assert before <= r["request_ts"] <= after  # UTC, whatever TZ says
    (batch_id,) = set(by_request) - {txn for txn, _, _ in txns}
    got = by_request[batch_id]
    assert len(got) == 160 and sorted({r["entity_index"] for r in got}) == list(range(20))
    for r in got:
        want = batch_served[r["entity_index"]][r["output_name"]].value
        assert r["value"] == want
    log.close()


def test_services_option_logs_feature_lists_and_named_services_only(synced, tmp_path):
    entity = {"customer_id": labels(synced.project.project_dir, 1)[0][1]}
    log = ServedLog(tmp_path / "all", services="all").attach(synced.reader)
    synced.get_online_features([entity], features=["customer_spend.spend_7d", "customer_spend.spend_1d"])
    assert log.flush()
    rows = logged_rows(tmp_path / "all")
    assert [(r["service"], r["requested"], r["feature"]) for r in rows] == [
        (None, "customer_spend.spend_7d,customer_spend.spend_1d", "customer_spend.spend_7d"),
        (None, "customer_spend.spend_7d,customer_spend.spend_1d", "customer_spend.spend_1d")]
    log.close()
    named = ServedLog(tmp_path / "named", services=["recommender"]).attach(synced.reader)
    synced.get_online_features([entity], features=["customer_spend.spend_7d"])
    assert named.flush() and logged_rows(tmp_path / "named") == [] and named.stats().logged_rows == 0
    named.close()


def test_sink_gone_while_reading_reads_go_on_and_drops_are_counted(synced, tmp_path):
    directory = tmp_path / "logs"
    txns = labels(synced.project.project_dir, 30)
    log = ServedLog(directory, max_buffered_rows=80, flush_seconds=3600).attach(synced.reader)
    first = serve_labels(synced, txns[:5])  # 40 rows
    assert log.flush() and log.stats().written_rows == 40
    shutil.rmtree(directory)
    directory.write_text("not a directory any more")  # the disk path is gone
    during = serve_labels(synced, txns[5:25])  # 160 rows: 80 fit the buffer, 80 are dropped at once
    plain = OnlineReader(synced.online)  # a reader that logs nothing serves the same values
    for txn, customer, merchant in txns[5:25]:
        assert during[txn] == plain.get([{"customer_id": customer, "merchant_id": merchant}], service=SERVICE)[0]
    assert not log.flush(timeout=0.5)
    stats = log.stats()
    assert stats.write_errors >= 1 and "not a directory" in (stats.last_error or "").lower()
    assert (stats.logged_rows, stats.dropped_rows, stats.buffered_rows, stats.written_rows) == (120, 80, 80, 40)
    directory.unlink()
    directory.mkdir()  # back: the rows kept are written, once
    assert log.flush()
    serve_labels(synced, txns[25:30])
    assert log.flush()
    stats = log.stats()
    assert (stats.written_rows, stats.dropped_rows, stats.buffered_rows) == (160, 80, 0)
    assert stats.written_rows + stats.dropped_rows == 40 + 160 + 40
    rows = logged_rows(directory)
    assert len(rows) == 120 and len({(r["request_id"], r["feature"]) for r in rows}) == 120
    assert {r["request_id"] for r in rows} == {t for t, _, _ in txns[5:15] + txns[25:30]}
    assert set(first) & {r["request_id"] for r in rows} == set()  # written before the directory went away
    log.close()


def test_log_directory_not_writable_at_start_is_a_clear_error(tmp_path, synced):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ServedLogError, match=r"served-feature log directory .*file/logs: cannot create it"):
        ServedLog(blocker / "logs")
    out = io.StringIO()
    code = main(["serve", "--redis-url", synced._redis_url, "--log-dir", str(blocker / "logs"), "--port", "1"],
                Console(file=out, width=200))
    assert code == EXIT_USER_ERROR and "cannot create it" in out.getvalue() and "Traceback" not in out.getvalue()


def test_clock_going_backwards_is_counted_and_each_record_keeps_its_time(synced, tmp_path):
    log = ServedLog(tmp_path / "logs").attach(synced.reader)
    customer, merchant = labels(synced.project.project_dir, 1)[0][1:]
    entity = [{"customer_id": customer, "merchant_id": merchant}]
    now = datetime.now(timezone.utc)
    for i, moment in enumerate((now, now - timedelta(days=2), now - timedelta(days=1))):
        with request_id(f"r{i}"):
            synced.reader.read(entity, service=SERVICE, now=moment)
    assert log.flush() and log.stats().clock_regressions == 1
    rows = logged_rows(tmp_path / "logs")
    times = {r["request_id"]: r["request_ts"] for r in rows}
    assert times == {f"r{i}": m.replace(tzinfo=None) for i, m in
                     enumerate((now, now - timedelta(days=2), now - timedelta(days=1)))}
    assert len({p.name for p in (tmp_path / "logs").iterdir()} - {SPOOL_DIR}) == 3  # one partition per UTC date
    log.close()


def test_featuremart_serve_logs_and_exposes_the_counters(synced, project, tmp_path):
    directory = tmp_path / "served"
    customer, merchant = labels(project, 1)[0][1:]
    env = serving_env(synced._redis_url)
    with FeatureServer(tmp_path, env, "--log-dir", str(directory)) as server:
        for _ in range(3):
            status, body = server.request("POST", "/features", {"service": SERVICE, "entities": [
                {"customer_id": customer, "merchant_id": merchant}]})
            assert status == 200
        deadline = time.monotonic() + 20
        while len(logged_rows(directory)) < 24 and time.monotonic() < deadline:
            time.sleep(0.2)
        import urllib.request

        metrics = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    rows = logged_rows(directory)
    assert len(rows) == 24 and len({r["request_id"] for r in rows}) == 3
    assert "featuremart_served_log_written_rows_total 24" in metrics
    assert "featuremart_served_log_dropped_rows_total 0" in metrics
    values = body["results"][0]["values"]
    for r in rows:  # what the HTTP response carried
        sent = values[r["output_name"]]
        assert sent["status"] == r["status"]
        assert r["value"] == sent["value"]


def test_http_request_id_header_is_the_logged_id_and_is_returned(synced, tmp_path):
    """X-Request-ID: the caller's id is logged and echoed, one is made when absent, a bad one is a 400 (not
    logged); an id sent twice logs two requests under it, each with its own time (training takes the latest)."""
    from featuremart.server import create_app

    with warnings.catch_warnings():  # starlette's note about httpx, as in test_server
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    customer, merchant = labels(synced.project.project_dir, 1)[0][1:]
    body = {"service": SERVICE, "entities": [{"customer_id": customer, "merchant_id": merchant}]}
    log = ServedLog(tmp_path / "logs").attach(synced.reader)
    with TestClient(create_app(synced.reader)) as client:
        given = [client.post("/features", json=body, headers={"X-Request-ID": "txn-42:a/b"}) for _ in range(2)]
        made = client.post("/features", json=body)
        longest = client.post("/features", json=body, headers={"X-Request-ID": "r" * 128})
        bad = {value: client.post("/features", json=body, headers={"X-Request-ID": value})
               for value in ("r" * 129, "has space", "caf\u00e9".encode(), "")}
        twice = client.post("/features", json=body, headers=[("X-Request-ID", "a"), ("X-Request-ID", "b")])
    assert [r.status_code for r in given] == [200, 200] and {r.headers["x-request-id"] for r in given} == {
        "txn-42:a/b"}
    assert made.status_code == 200 and len(made.headers["x-request-id"]) == 32
    assert longest.status_code == 200 and longest.headers["x-request-id"] == "r" * 128
    for value, response in bad.items():
        assert response.status_code == 400, value
        assert "X-Request-ID" in response.json()["error"] and "1 to 128 visible ASCII" in response.json()["error"]
    assert twice.status_code == 400 and "given 2 times" in twice.json()["error"]
    assert log.flush()
    log.close()
    rows = logged_rows(tmp_path / "logs")
    assert len(rows) == 4 * 8  # the four answered reads, nothing of the refused ones
    by_id: dict[str, set] = {}
    for r in rows:
        by_id.setdefault(r["request_id"], set()).add(r["request_ts"])
    assert set(by_id) == {"txn-42:a/b", made.headers["x-request-id"], "r" * 128}
    assert len(by_id["txn-42:a/b"]) == 2  # the same id twice: two requests, each at its own time


def test_export_interrupted_at_any_step_loses_and_duplicates_nothing(synced, tmp_path, monkeypatch):
    """An export that dies after writing one of a claim's two Parquet files (two UTC dates), and one that dies
    after removing one of its spool segments: the next export finishes the claim, and every logged read is in
    the Parquet files exactly once, read back by DuckDB; a duplicated request id stays two requests."""
    directory = tmp_path / "logs"
    log = ServedLog(directory, flush_seconds=3600).attach(synced.reader)
    customer, merchant = labels(synced.project.project_dir, 1)[0][1:]
    entity = [{"customer_id": customer, "merchant_id": merchant}]
    now, made = datetime.now(timezone.utc), [0]

    def read(ids: list[str]) -> None:  # one spool segment of these reads, one today and one the day before
        for i, rid in enumerate(ids):
            made[0] += 1  # each read at its own time
            with request_id(rid):
                synced.reader.read(entity, service=SERVICE, now=now - timedelta(days=i % 2, seconds=made[0]))
        assert log.flush()

    def crash_at(name: str, calls: int) -> None:
        real, count = getattr(export, name), [0]

        def dying(*args):
            count[0] += 1
            if count[0] == calls:
                raise SystemExit(f"killed in {name}")  # what a kill leaves: the steps before this one done
            return real(*args)
        monkeypatch.setattr(export, name, dying)

    def parquet_rows() -> list[tuple]:
        with duckdb.connect() as con:
            return con.execute(f"select request_id, request_ts, view from read_parquet('{directory}/date=*/*.parquet') "
                               "order by all").fetchall()

    read(["a", "b", "dup"])
    read(["dup", "c"])
    assert log.stats().files == 2 and log.stats().written_rows == 5 * 8
    crash_at("_write_file", 3)  # the claim (1), the day before's file (2); dies writing today's (3)
    with pytest.raises(SystemExit):
        export_logs(directory)
    monkeypatch.undo()
    spool = directory / SPOOL_DIR
    assert len(list(spool.glob("*.spool"))) == 2 and len(list(spool.glob("*.json"))) == 1
    assert len(parquet_rows()) == 2 * 3  # the file of the day before's two reads is there already
    read(["d"])  # a new segment, not in the interrupted claim
    done = export_logs(directory)
    assert (done.records, done.segments, done.files, done.skipped) == (6, 3, 3, 0)
    assert list(spool.glob("*.spool")) == list(spool.glob("*.json")) == []
    read(["e", "f"])
    read(["g"])
    crash_at("_remove", 2)  # removed the first of the claim's two segments, then died
    with pytest.raises(SystemExit):
        export_logs(directory)
    monkeypatch.undo()
    assert len(list(spool.glob("*.spool"))) == 1 and len(list(spool.glob("*.json"))) == 1
    assert export_logs(directory).records == 0  # finishing the claim writes nothing again
    assert list(spool.glob("*.spool")) == list(spool.glob("*.json")) == []
    rows = parquet_rows()
    ids = [r[0] for r in rows]
    assert len(rows) == len(set(rows)) == 9 * 3  # every read once, a file row per view
    assert {i: ids.count(i) // 3 for i in ids} == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1, "f": 1, "g": 1, "dup": 2}
    out = run_cli("logs", "export", "--log-dir", str(directory))
    assert out[0] == EXIT_OK and "exported 0 log rows (0 reads) from 0 spool segments" in out[1]
    bad = spool / "1-1-1.spool"  # not a segment (another Python's, a disk's damage): named, nothing lost
    bad.write_bytes(b"not a segment")
    read(["h"])
    code, out = run_cli("logs", "export", "--log-dir", str(directory))
    assert code == EXIT_USER_ERROR and "1-1-1.spool: not a served-feature log spool segment" in out, out
    bad.rename(tmp_path / "aside")  # as the message says
    assert export_logs(directory).records == 1 and [r[0] for r in parquet_rows()].count("h") == 3
    log.close()


def test_renames_are_made_durable_before_what_depends_on_them(synced, tmp_path, monkeypatch):
    """A rename is durable only once its directory is fsynced: a power loss could otherwise bring back a claim
    not marked done after its segments were removed (their rows lost), or lose a spooled segment's name. Each
    step that relies on a rename finds its directory fsynced first (observed through the module functions)."""
    from featuremart.servedlog import writer

    events: list[tuple[str, str]] = []
    for module in (writer, export):
        real_sync = module.fsync_directory
        monkeypatch.setattr(module, "fsync_directory", lambda path, real=real_sync: (
            events.append(("fsync", Path(path).name)), real(path))[1])
    real_remove = export._remove
    monkeypatch.setattr(export, "_remove", lambda path: (events.append(("remove", path.suffix)), real_remove(path))[1])
    directory = tmp_path / "logs"
    log = ServedLog(directory, flush_seconds=3600).attach(synced.reader)
    customer, merchant = labels(synced.project.project_dir, 1)[0][1:]
    synced.reader.read([{"customer_id": customer, "merchant_id": merchant}], service=SERVICE)
    assert log.flush() and events == [("fsync", SPOOL_DIR)]  # the segment's name is on disk
    events.clear()
    assert export_logs(directory).records == 1
    date_dir = next(directory.glob("date=*")).name
    first_removal = events.index(("remove", ".spool"))
    # the claim's name, the Parquet file's, then "done": all on disk before the segment goes
    assert events[:first_removal] == [("fsync", SPOOL_DIR), ("fsync", date_dir), ("fsync", SPOOL_DIR)], events
    log.close()


def test_full_speed_reader_spools_early_and_every_row_is_exported_once(synced, tmp_path):
    """100-entity reads as fast as they come, flush_seconds an hour: the spool thread is woken when a quarter of
    the budget (the default 1M rows) waits, so segments are written during the reads and nothing is dropped;
    after an export, every row is in the Parquet files once (read back by DuckDB)."""
    pairs = [{"customer_id": c, "merchant_id": m} for _, c, m in labels(synced.project.project_dir, 300)]
    batches = [pairs[i:i + 100] for i in range(0, 300, 100)]
    log = ServedLog(tmp_path / "logs", services="all", flush_seconds=3600).attach(synced.reader)
    reads, start = 0, time.monotonic()
    while log.stats().logged_rows < 600_000 and time.monotonic() - start < 20:
        synced.reader.read(batches[reads % 3], service=SERVICE)
        reads += 1
    during = log.stats()
    assert during.files >= 1 and during.written_rows >= 250_000  # spooled while reading, not at the flush
    assert log.flush(timeout=120)
    stats = log.stats()
    assert (stats.logged_rows, stats.written_rows, stats.dropped_rows, stats.buffered_rows) == (
        reads * 800, reads * 800, 0, 0)
    assert export_logs(tmp_path / "logs").rows == reads * 800
    with duckdb.connect() as con:
        found = con.execute("select count(*), count(distinct request_id), count(distinct entity_keys) from "
                            f"read_parquet('{tmp_path / 'logs'}/date=*/*.parquet')").fetchone()
    distinct = len({(p["customer_id"], p["merchant_id"]) for p in pairs})
    assert found == (reads * 100 * 3, reads, distinct)  # a file row per request x entity x view
    log.close()


# -- the dbt side -------------------------------------------------------------------------------------------

def test_logs_as_a_dbt_source_and_training_from_logs(synced, project):
    log = synced.log_served()
    txns = labels(project, 25, arrived=True)
    assert len(txns) >= 4
    half = len(txns) // 2
    served = serve_labels(synced, txns[:half])  # the first half was scored online; the others were not
    assert log.flush()
    code, out = run_cli("logs", "export", "--project-dir", str(project))  # dbt reads Parquet: export first
    assert code == EXIT_OK and f"exported {8 * half} log rows ({half} reads)" in out, out
    first = next(iter(sorted(log.directory.glob("date=*/*.parquet"))))
    shutil.copy(first, first.with_name("copied-by-hand.parquet"))  # a record twice: read once
    # the first transaction's id reused a second later, under a view version that no longer exists, with a
    # feature the service no longer has: training takes that latest request (same values: the served_skew
    # test of the build must pass), ignores the feature
    again = [r for r in file_rows(log.directory) if r["request_id"] == txns[0][0]][:3]
    for r in again:
        r["request_ts"] += timedelta(seconds=1)
        if r["view"] == "customer_spend":
            r["features"] = json.dumps(json.loads(r["features"]) + [["gone", "gone", 1, "float"]])
            r["view_version"] = "no-longer-exists"
    pq.write_table(pa.Table.from_pylist(again, pq.read_schema(first)), first.with_name("reused-id.parquet"))
    synced.close()
    started = utc_now()
    dbt(project, "build", "--select", "flywheel")
    ended = utc_now()
    with warehouse(project) as con:
        assert con.execute("select count(*) from main.served_features").fetchone()[0] == 8 * half + 9
        columns = [c[0] for c in con.execute("describe main.served_features").fetchall()]
        assert columns == [name for name, _ in LOG_COLUMNS]  # the macro's columns are the documented ones
        from_dbt = dicts(con, "select * from main.served_features order by request_id, feature, request_ts")
    once = {(r["request_id"], r["request_ts"], r["entity_index"], r["feature"]): r for r in logged_rows(log.directory)}
    oracle = sorted(once.values(), key=lambda r: (r["request_id"], r["feature"], r["request_ts"]))
    assert len(from_dbt) == len(oracle) == 8 * half + 9  # the copied file's records counted once
    for got, want in zip(from_dbt, oracle):
        assert {**got, "value": as_served(got["value"], want["value"])} == want
    with warehouse(project) as con:
        table = dicts(con, "select * from main.fraud_training_from_logs")
        pit = {r["txn_id"]: r for r in dicts(con, "select * from main.fraud_training_set")}
        arrived = [con.execute("select count(*) from main.fraud_labels where labelled_at <= ?", [t]).fetchone()[0]
                   for t in (started, ended)]
    assert arrived[0] <= len(table) <= arrived[1]  # every label that has arrived
    assert len({r["txn_id"] for r in table}) == len(table)  # once
    by_txn = {r["txn_id"]: r for r in table}
    outputs = [n for n in served[txns[0][0]]]
    for txn, _, _ in txns[:half]:
        row = by_txn[txn]
        assert row["logged_request_id"] == txn
        for name in outputs:
            assert row[name + "__source"] == "logged"
            assert row[name] == served[txn][name].value  # exactly what the model was served
        assert "gone" not in row
    assert by_txn[txns[0][0]]["logged_request_ts"] == again[0]["request_ts"]  # the latest request of a reused id
    for txn, _, _ in txns[half:]:
        row = by_txn[txn]
        assert row["logged_request_id"] is None
        for name in outputs:  # not logged: recomputed as of the label's time, as the training set has it
            assert row[name + "__source"] == "recomputed" and row[name] == pit[txn][name]


def test_dbt_build_with_no_logs_yet(project):
    """A fresh project (no served log directory) builds: the log model is empty, every value recomputed."""
    assert not (project / DEFAULT_LOG_DIR).exists()
    dbt(project, "build", "--select", "flywheel")
    with warehouse(project) as con:
        assert con.execute("select count(*) from main.served_features").fetchone()[0] == 0
        assert con.execute("select count(*) from main.fraud_training_from_logs where spend_7d__source <> "
                       "'recomputed'").fetchone()[0] == 0


def test_default_log_dir_is_the_one_the_dbt_side_reads():
    macro = (ROOT / "macros" / "flywheel" / "served_log.sql").read_text()
    assert f"env_var('FEATUREMART_SERVED_LOG_DIR', '{DEFAULT_LOG_DIR}')" in macro


# -- skew ---------------------------------------------------------------------------------------------------

def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(args), Console(file=out, width=200)), out.getvalue()


def test_skew_is_zero_on_the_reference_project_and_a_planted_skew_is_named(synced, project):
    log = synced.log_served()
    txns = labels(project, 30)
    served = serve_labels(synced, txns)
    assert log.flush()
    synced.close()
    code, out = run_cli("skew", "--project-dir", str(project), "--profiles-dir", str(project),
                        "--service", SERVICE)
    assert code == EXIT_OK, out
    report = skew_report(FeatureStore(project), SERVICE)
    assert [f.feature for f in report.features] == [f.ref for f in FeatureStore(project).registry.service(SERVICE).features]
    assert all(f.rows == 30 and f.disagreement_rate == 0 and not f.examples for f in report.features)

    # plant: a value overwritten in the warehouse after it was served
    customer = next(c for t, c, _ in txns if served[t]["spend_7d"].status == "present")
    hit = sum(1 for t, c, _ in txns if c == customer)
    with warehouse(project, read_only=False) as con:
        con.execute("update main.customer_spend set spend_7d = spend_7d + 2.5 where customer_id = ? and event_ts = "
                    "(select max(event_ts) from main.customer_spend where customer_id = ?)", [customer, customer])
    code, out = run_cli("skew", "--project-dir", str(project), "--profiles-dir", str(project),
                        "--service", SERVICE, "--json")
    assert code == EXIT_BREACH
    body = json.loads(out[:out.rindex("}") + 1])
    bad = {f["feature"]: f for f in body["features"] if f["disagreement_rate"] > 0}
    assert list(bad) == ["customer_spend.spend_7d"]
    assert bad["customer_spend.spend_7d"]["mismatch_rate"] == pytest.approx(hit / 30)
    assert bad["customer_spend.spend_7d"]["max_abs_diff"] == pytest.approx(2.5)
    example = bad["customer_spend.spend_7d"]["examples"][0]
    assert json.loads(example["entity_keys"])["customer_id"] == customer and example["outcome"] == "mismatch"
    assert "customer_spend.spend_7d" in out


def test_skew_of_a_view_whose_logic_changed_and_was_rebuilt(synced, project):
    log = synced.log_served()
    serve_labels(synced, labels(project, 20))
    assert log.flush()
    synced.close()
    model = project / "models" / "features" / "merchant_risk.sql"
    text = model.read_text()
    assert "distinct_customers_30d" in text
    model.write_text(text.replace("as bigint) as distinct_customers_30d", "as bigint) + 1 as distinct_customers_30d", 1))
    dbt(project, "build", "--select", "merchant_risk")
    code, out = run_cli("skew", "--project-dir", str(project), "--profiles-dir", str(project),
                        "--service", SERVICE)
    assert code == EXIT_BREACH
    assert "merchant_risk.distinct_customers_30d" in out.split("skew above")[1]
    assert "customer_spend" not in out.split("skew above")[1]


def test_skew_bad_input_unknown_features_stale_versions_duplicates_and_no_logs(synced, project, tmp_path):
    code, out = run_cli("skew", "--project-dir", str(project), "--profiles-dir", str(project),
                        "--service", SERVICE, "--log-dir", str(tmp_path / "empty"))
    assert code == EXIT_USER_ERROR and "no logged reads of feature service fraud_model" in out
    code, out = run_cli("skew", "--project-dir", str(project), "--profiles-dir", str(project), "--service", "nope")
    assert code == EXIT_USER_ERROR and "nope" in out and "fraud_model" in out and "Traceback" not in out

    log = synced.log_served()
    serve_labels(synced, labels(project, 10))
    assert log.flush()
    synced.close()
    export_logs(log.directory)
    files = sorted(log.directory.glob("date=*/*.parquet"))
    table = pq.read_table(files[0])
    # a copy of a file (duplicated request ids), a feature the service no longer has, an older view version
    shutil.copy(files[0], files[0].with_name("dup.parquet"))
    specs = [f.replace('["spend_1d","spend_1d"', '["gone","spend_1d"') for f in table.column("features").to_pylist()]
    odd = table.set_column(table.schema.get_field_index("features"), "features", pa.array(specs, pa.string()))
    odd = odd.set_column(odd.schema.get_field_index("request_id"), "request_id",
                         pa.array([f"x{r}" for r in table.column("request_id").to_pylist()], pa.string()))
    odd = odd.set_column(odd.schema.get_field_index("view_version"), "view_version",
                         pa.array(["old"] * odd.num_rows, pa.string()))
    pq.write_table(odd, files[0].with_name("odd.parquet"))
    report = skew_report(FeatureStore(project), SERVICE)
    assert report.unknown == {"customer_spend.gone": 10}
    by = {f.feature: f for f in report.features}
    assert by["customer_spend.spend_7d"].rows == 20 and by["customer_spend.spend_7d"].stale_rows == 10
    assert by["customer_spend.spend_1d"].rows == 10
    assert not report.failing


# -- PostgreSQL ---------------------------------------------------------------------------------------------

def test_training_from_logs_macro_on_postgres(postgres_project, postgres_dsn, monkeypatch):
    """The log loaded into a PostgreSQL table as the files hold it; the macro reads it through served_log and
    takes each logged value (planted, distinctive), recomputing point in time only where nothing was logged."""
    import psycopg2

    from featuremart.config import load_dbt_project
    from featuremart.dbtcore import compile_inline
    from featuremart.servedlog import FILE_COLUMNS

    project, env = postgres_project
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    schema = env["FEATUREMART_PG_SCHEMA"]
    sql_types = {"string": "text", "timestamp": "timestamp", "int32": "integer"}
    with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
        cursor.execute(f'select txn_id, customer_id, merchant_id, label_ts from "{schema}".fraud_labels '
                       "order by txn_id limit 4")
        picked = cursor.fetchall()
        cursor.execute(f'create table "{schema}".served_log_raw ('
                       + ", ".join(f"{n} {sql_types[t]}" for n, t in FILE_COLUMNS) + ")")
        views = {"customer_spend": ["spend_1d", "spend_7d", "txn_count_7d", "declined_count_7d"],
                 "merchant_risk": ["chargeback_rate_90d", "distinct_customers_30d"],
                 "customer_merchant_pair": ["pair_txn_count_30d", "pair_spend_30d"]}
        planted = {}
        for n, (txn, customer, merchant, label_ts) in enumerate(picked[:3]):
            keys = json.dumps({"customer_id": customer, "merchant_id": merchant}, sort_keys=True)
            for view, names in views.items():
                values = [1000 * (n + 1) + i for i in range(len(names))]
                planted.update({(txn, name): v for name, v in zip(names, values)})
                specs = json.dumps([[name, name, i + 1, "float"] for i, name in enumerate(names)])
                stored = json.dumps([int(label_ts.timestamp() * 1e6), *values])
                cursor.execute(f'insert into "{schema}".served_log_raw values '
                               "(%s, %s, 'fraud_model', null, 'r1', 0, %s, %s, 'v1', %s, 'present', %s)",
                               (txn, label_ts, keys, view, specs, stored))
    dbt_project = load_dbt_project(project)
    inline = ("-- depends_on: {{ ref('customer_spend') }}\n-- depends_on: {{ ref('merchant_risk') }}\n"
              "-- depends_on: {{ ref('customer_merchant_pair') }}\n"
              "{% set raw = api.Relation.create(database=target.database, schema='" + schema + "', "
              "identifier='served_log_raw') %}"
              "{{ featuremart.training_set_from_logs(ref('fraud_labels'), 'label_ts', 'fraud_model', "
              "'(' ~ featuremart.served_log(raw) ~ ')', request_id='txn_id') }}")
    sql = compile_inline(dbt_project, inline)
    with psycopg2.connect(postgres_dsn) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
        names = [d[0] for d in cursor.description]
        rows = {r["txn_id"]: r for r in (dict(zip(names, row)) for row in cursor.fetchall())}
        cursor.execute(f'select * from "{schema}".fraud_training_set')
        pit_names = [d[0] for d in cursor.description]
        pit = {r["txn_id"]: r for r in (dict(zip(pit_names, row)) for row in cursor.fetchall())}
    assert len(rows) == len(pit)  # every label, once
    for txn, *_ in picked[:3]:
        assert rows[txn]["logged_request_id"] == txn
        for name in [n for names in views.values() for n in names]:
            assert rows[txn][name + "__source"] == "logged" and float(rows[txn][name]) == planted[(txn, name)]
    txn = picked[3][0]
    assert rows[txn]["logged_request_id"] is None
    for name in [n for names in views.values() for n in names]:
        assert rows[txn][name + "__source"] == "recomputed" and rows[txn][name] == pit[txn][name]

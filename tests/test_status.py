"""`featuremart status` and the freshness gauges of `/metrics` (featuremart.monitoring).

Unit tests first (verdicts, lineage, the publish record, the exposition format, the UNION ALL query executed
on DuckDB under several session time zones); then the reference project built for real with dbt on DuckDB, a
real Redis, and staleness injected by moving event and load times in the warehouse and the raw data.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import urllib.request
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import duckdb
import pytest
from rich.console import Console

from featuremart.cli import EXIT_OK, EXIT_BREACH, EXIT_USER_ERROR, main
from featuremart.config import Freshness
from featuremart.errors import ArtifactError
from featuremart.monitoring import metrics
from featuremart.monitoring.freshness import (ERROR, NA, OK, WARN, judge, load_source_freshness, read_published,
                                              upstream_sources, worst)
from featuremart.monitoring.status import human_age, newest_events_query
from featuremart.registry import Relation
from featuremart import sql
from tests.conftest import dbt
from tests.feature_server import FeatureServer, featuremart_command, serving_env
from tests.redis_server import free_port

TIMEZONES = ("UTC", "America/Los_Angeles", "Asia/Kolkata", "Pacific/Chatham")
DAY = timedelta(days=1)
GOLD = Freshness(warn_after=2 * DAY, error_after=3 * DAY)


# -- unit ------------------------------------------------------------------------------------------------------

def test_judge_follows_dbt_thresholds_and_worst_ranks_levels():
    assert judge(None, GOLD) == NA
    assert judge(2 * DAY, GOLD) == OK  # dbt: strictly older than warn_after warns
    assert judge(2 * DAY + timedelta(seconds=1), GOLD) == WARN
    assert judge(3 * DAY + timedelta(seconds=1), GOLD) == ERROR
    assert judge(-DAY, GOLD) == OK  # a future event time is not stale
    assert judge(400 * DAY, Freshness()) == OK  # no policy: never stale
    assert judge(8 * DAY, Freshness(warn_after=7 * DAY)) == WARN  # silver: warn only
    assert worst([]) == NA and worst([NA, OK]) == OK and worst([OK, ERROR, WARN, NA]) == ERROR
    assert [human_age(timedelta(seconds=s)) for s in (45, 720, 5.5 * 3600, 3.25 * 86400)] == \
        ["45s", "12m", "5.5h", "3.2d"]


def test_upstream_sources_are_found_through_models_transitively():
    model = lambda *parents: SimpleNamespace(depends_on=parents)  # noqa: E731
    models = {"model.p.view": model("model.p.mid", "source.p.raw.a"), "model.p.mid": model("model.p.stg"),
              "model.p.stg": model("source.p.raw.b", "seed.p.countries"), "model.p.cycle": model("model.p.cycle")}
    sources = ["source.p.raw.a", "source.p.raw.b", "source.p.raw.unused"]
    assert upstream_sources(models, sources, "model.p.view") == {"source.p.raw.a", "source.p.raw.b"}
    assert upstream_sources(models, sources, "model.p.stg") == {"source.p.raw.b"}
    assert upstream_sources(models, sources, "model.p.cycle") == set()


def test_sources_json_is_read_and_a_wrong_one_is_named(tmp_path):
    assert load_source_freshness(tmp_path) == {}  # never ran: no file, no error
    (tmp_path / "sources.json").write_text(json.dumps({"results": [
        {"unique_id": "source.p.raw.a", "max_loaded_at": "2026-01-02T03:04:05Z", "status": "pass"},
        {"unique_id": "source.p.raw.b", "status": "runtime error", "error": "Binder Error: no column x"}]}))
    found = load_source_freshness(tmp_path)
    assert found["source.p.raw.a"].max_loaded_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert found["source.p.raw.b"].max_loaded_at is None and "Binder Error" in found["source.p.raw.b"].error
    (tmp_path / "sources.json").write_text('{"results": 3}')
    with pytest.raises(ArtifactError, match=r"sources.json .*dbt source freshness"):
        load_source_freshness(tmp_path)


def test_publish_record_parsing_tolerates_absence_and_garbage():
    assert read_published(None) == {} and read_published(b"not json") == {} and read_published(b"[1]") == {}
    record = {"format": 1, "views": {"v": {"published_at": "2026-01-01T00:00:00+00:00", "run_id": "r",
                                           "newest_event_us": 1_767_225_600_000_001, "entities": 7},
                                     "bad": "x", "empty": {"published_at": "2026-01-01T00:00:00+00:00",
                                                           "newest_event_us": None, "entities": 0}}}
    parsed = read_published(json.dumps(record).encode())
    assert set(parsed) == {"v", "empty"}
    assert parsed["v"].newest_event == datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)  # µs exact
    assert parsed["empty"].newest_event is None and parsed["empty"].entities == 0


def test_publish_record_key_is_sealed_in_the_generations_slot():
    """The sync sets it in the same script as the generation: on a Redis Cluster both must share one slot."""
    from redis.crc import key_slot

    from featuremart.online import keys

    assert key_slot(keys.published_key("fm").encode()) == key_slot(keys.generation_key("fm").encode())
    assert keys.parse_row_key("fm", keys.published_key("fm")) is None  # never swept as a value key


def test_metrics_render_in_the_text_exposition_format():
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    record = {"views": {'odd"view\\': {"published_at": "2026-01-01T23:00:00+00:00", "entities": 3,
                                       "newest_event_us": sql.to_us(datetime(2026, 1, 1))}}}
    text = metrics.render(json.dumps(record).encode(), now=now)
    assert 'featuremart_view_online_age_seconds{view="odd\\"view\\\\"} 86400.000' in text
    assert 'featuremart_view_seconds_since_publish{view="odd\\"view\\\\"} 3600.000' in text
    assert 'featuremart_view_entities_published{view="odd\\"view\\\\"} 3' in text
    for name, _ in metrics.GAUGES:
        assert f"# TYPE {name} gauge" in text
    assert metrics.render(None, now=now) == ""


@pytest.mark.parametrize("tz", TIMEZONES)
def test_newest_events_query_is_one_statement_and_utc_whatever_the_session_zone(tz):
    """The UNION ALL runs on DuckDB with a naive (UTC) and a zoned timestamp column and an empty table; the
    session's time zone changes nothing."""
    con = duckdb.connect()
    try:
        con.execute(f"set TimeZone = '{tz}'")
        con.execute("create schema s")
        con.execute("create table s.naive (k int, ts timestamp)")
        con.execute("insert into s.naive values (1, '2026-03-29 01:30:00.000001'), (2, '2026-01-01 00:00:00')")
        con.execute("create table s.zoned (k int, ts timestamptz)")
        con.execute("insert into s.zoned values (1, '2026-03-29 01:30:00+02:00')")
        con.execute("create table s.empty (k int, ts timestamp)")
        views = [SimpleNamespace(name=n, timestamp="ts", relation=Relation(None, "s", n))
                 for n in ("naive", "zoned", "empty")]
        text = sql.render(newest_events_query(views, "duckdb"), "duckdb")
        assert text.lower().count("union all") == 2 and text.count(";") == 0
        got = dict(con.execute(text).fetchall())
    finally:
        con.close()
    assert got == {"naive": sql.to_us(datetime(2026, 3, 29, 1, 30, 0, 1)),
                   "zoned": sql.to_us(datetime(2026, 3, 28, 23, 30)), "empty": None}


# -- the reference project --------------------------------------------------------------------------------------

def run_cli(*args: str, terminal: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, force_terminal=terminal)
    code = main(list(args), console=console)
    return code, out.getvalue()


def status_json(*args: str) -> tuple[int, dict]:
    code, out = run_cli("status", "--json", *args)
    assert code in (EXIT_OK, EXIT_BREACH), out
    return code, json.loads(out[:out.rindex("}") + 1])


def rows_by_name(doc: dict) -> dict[str, dict]:
    return {r["name"]: r for r in doc["rows"]}


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def warehouse(project):
    return duckdb.connect(str(project / "target" / "featuremart.duckdb"))


def shift_event_times(project, model: str, days: int) -> None:
    """Move every event time of a feature model back `days` days, in the warehouse (no rebuild)."""
    con = warehouse(project)
    try:
        con.execute(f"update main.{model} set event_ts = event_ts - interval {days} day")
    finally:
        con.close()


@pytest.fixture
def env(project, redis_url, monkeypatch):
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    monkeypatch.chdir(project)
    return project


SCHEMA_STAGES = {"source": {"status", "age_seconds", "detail", "newest", "sources"},
                 "warehouse": {"status", "age_seconds", "detail", "newest_event", "last_build"},
                 "online": {"status", "age_seconds", "detail", "newest_event", "last_publish",
                            "seconds_since_publish", "entities"},
                 "drift": {"status", "detail", "features"}}


@pytest.mark.integration
def test_no_previous_run_then_fresh_then_stale_in_the_warehouse_then_online(env, redis_url):
    # Before any sync: online figures are n/a (documented), nothing fails.
    code, doc = status_json()
    rows = rows_by_name(doc)
    assert code == EXIT_OK and doc["format"] == 1 and doc["status"] == OK
    assert [r["name"] for r in doc["rows"]] == ["customer_embedding", "customer_merchant_pair", "customer_profile",
                                                "customer_spend", "merchant_risk", "fraud_model", "recommender"]
    for row in doc["rows"]:
        assert set(row) == {"kind", "name", "views", "tier", "owner", "status", "policy", *SCHEMA_STAGES}
        for stage, keys in SCHEMA_STAGES.items():
            assert set(row[stage]) == keys
    assert rows["customer_spend"]["online"] == {**rows["customer_spend"]["online"], "status": NA,
                                                "last_publish": None, "entities": None}
    assert "never published" in rows["customer_spend"]["online"]["detail"]
    assert rows["fraud_model"]["views"] == ["customer_spend", "merchant_risk", "customer_merchant_pair"]

    # After a sync: the online figures are what was published, read back from the warehouse.
    assert run_cli("sync")[0] == 0
    code, doc = status_json()
    rows = rows_by_name(doc)
    assert code == EXIT_OK and all(r["status"] == OK for r in doc["rows"]), doc
    con = warehouse(env)
    try:
        newest = con.execute("select max(event_ts) from main.customer_spend").fetchall()[0][0]
    finally:
        con.close()
    spend = rows["customer_spend"]
    assert spend["warehouse"]["newest_event"] == spend["online"]["newest_event"] == \
        as_utc(newest).isoformat()
    assert spend["online"]["entities"] == online_keys(redis_url, "customer_spend") > 0
    assert spend["policy"] == {"warn_after_seconds": 2 * 86400, "error_after_seconds": 3 * 86400}
    assert spend["warehouse"]["last_build"] is not None and spend["online"]["seconds_since_publish"] < 600

    # The warehouse moves 10 days back (a stuck pipeline): the warehouse stage errors for a gold view, the
    # online one is still what was published; the service that reads it errors, the other does not; exit 4.
    shift_event_times(env, "customer_spend", 10)
    code, doc = status_json()
    rows = rows_by_name(doc)
    assert code == EXIT_BREACH
    assert rows["customer_spend"]["warehouse"]["status"] == ERROR
    assert 10 * 86400 < rows["customer_spend"]["warehouse"]["age_seconds"] < 12 * 86400
    assert rows["customer_spend"]["online"]["status"] == OK
    assert rows["fraud_model"]["status"] == ERROR and "customer_spend" in rows["fraud_model"]["warehouse"]["detail"]
    assert rows["recommender"]["status"] == OK and doc["status"] == ERROR

    # Published: now the values online are 10 days old too.
    assert run_cli("sync")[0] == 0
    code, doc = status_json("--select", "customer_spend")
    rows = rows_by_name(doc)
    assert code == EXIT_BREACH and set(rows) == {"customer_spend", "fraud_model"}
    assert rows["customer_spend"]["online"]["status"] == ERROR
    assert rows["customer_spend"]["online"]["newest_event"] == rows["customer_spend"]["warehouse"]["newest_event"]

    # Plain text for a log, a rich table for a terminal; both name the breach.
    code, out = run_cli("status")
    assert code == EXIT_BREACH and "┃" not in out and "customer_spend" in out and "status at" in out
    assert re.search(r"customer_spend: warehouse: newest event 1[01]\.\dd old", out), out
    code, out = run_cli("status", terminal=True)
    assert code == EXIT_BREACH and "┃" in out and "error" in out


@pytest.mark.integration
def test_times_are_utc_whatever_tz(env):
    """The same status from processes under several TZ values (DuckDB's session zone follows TZ): the same
    instants, and ages that differ only by the time between the runs."""
    dbt(env, "source", "freshness", check=False)
    assert run_cli("sync")[0] == 0
    docs = {}
    for tz in TIMEZONES:
        proc = subprocess.run(featuremart_command() + ["status", "--json"], cwd=env, capture_output=True, text=True,
                              env={**os.environ, "TZ": tz}, timeout=300)
        assert proc.returncode == EXIT_OK, proc.stdout + proc.stderr
        docs[tz] = json.loads(proc.stdout)
    base = docs["UTC"]
    assert all(r[stage][key] for r in base["rows"] for stage, key in (
        ("source", "newest"), ("warehouse", "newest_event"), ("online", "newest_event")) if r["name"] != "customer_profile")
    for tz, doc in docs.items():
        elapsed = datetime.fromisoformat(doc["generated_at"]) - datetime.fromisoformat(base["generated_at"])
        for a, b in zip(base["rows"], doc["rows"]):
            for stage, times in (("source", ("newest",)), ("warehouse", ("newest_event", "last_build")),
                                 ("online", ("newest_event", "last_publish"))):
                for key in times:
                    assert a[stage][key] == b[stage][key], (tz, a["name"], stage, key)
                if a[stage]["age_seconds"] is not None:
                    assert b[stage]["age_seconds"] - a[stage]["age_seconds"] == pytest.approx(
                        elapsed.total_seconds(), abs=0.01), (tz, a["name"], stage)


@pytest.mark.integration
def test_stale_source_is_judged_by_each_views_tier(env):
    """Raw transactions whose load times are 5 days old: `dbt source freshness` says so; gold views (error after
    3 days) error, silver ones (warn after 7 days) stay ok; a view reading no declared source says n/a."""
    code, doc = status_json()
    assert "no target/sources.json" in rows_by_name(doc)["customer_spend"]["source"]["detail"]
    raw = env / "data" / "raw" / "transactions.parquet"
    con = duckdb.connect()
    try:
        con.execute(f"copy (select * replace (ingested_at - interval 5 day as ingested_at) from '{raw}') "
                    f"to '{raw}.new' (format parquet)")
        newest = con.execute(f"select max(ingested_at) from read_parquet('{raw}.new')").fetchall()[0][0]
    finally:
        con.close()
    os.replace(f"{raw}.new", raw)
    dbt(env, "source", "freshness", check=False)
    code, doc = status_json()
    rows = rows_by_name(doc)
    assert code == EXIT_BREACH
    spend = rows["customer_spend"]["source"]
    assert spend["status"] == ERROR and spend["sources"] == ["raw.transactions"]
    assert spend["newest"] == as_utc(newest).isoformat()
    assert 5 * 86400 < spend["age_seconds"] < 7 * 86400
    assert rows["customer_embedding"]["source"]["status"] == OK  # silver
    assert rows["customer_profile"]["source"] == {**rows["customer_profile"]["source"], "status": NA,
                                                  "detail": "no upstream source declares freshness"}
    assert rows["fraud_model"]["source"]["status"] == ERROR


@pytest.mark.integration
def test_a_failed_last_build_is_an_error(env):
    sql_file = env / "models" / "features" / "merchant_risk.sql"
    sql_file.write_text(sql_file.read_text() + "\n-- broken on purpose\nwhere no_such_column = 1\n")
    dbt(env, "build", "-s", "merchant_risk", check=False)
    sql_file.write_text(sql_file.read_text().split("\n-- broken on purpose")[0])  # the manifest keeps the build's
    code, doc = status_json()
    rows = rows_by_name(doc)
    assert code == EXIT_BREACH
    risk = rows["merchant_risk"]["warehouse"]
    assert risk["status"] == ERROR and "latest build failed" in risk["detail"] and risk["last_build"] is None
    assert risk["newest_event"] is not None  # the table still holds the previous build's rows
    assert rows["fraud_model"]["status"] == ERROR and rows["recommender"]["status"] == OK


@pytest.mark.integration
def test_empty_view_unknown_selection_and_unreachable_store(env, monkeypatch):
    con = warehouse(env)
    try:
        con.execute("delete from main.merchant_risk")
    finally:
        con.close()
    code, doc = status_json("--select", "merchant_risk")
    risk = rows_by_name(doc)["merchant_risk"]["warehouse"]
    assert code == EXIT_OK and risk["status"] == NA and risk["detail"] == "no rows in featuremart.main.merchant_risk"

    code, out = run_cli("status", "--select", "no_such_model")
    assert code == EXIT_USER_ERROR and "no_such_model" in out and "Traceback" not in out

    monkeypatch.setenv("FEATUREMART_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, doc = status_json("--select", "customer_spend")
    online = rows_by_name(doc)["customer_spend"]["online"]
    assert code == EXIT_BREACH and online["status"] == ERROR and "online store unreadable" in online["detail"]


@pytest.mark.integration
def test_metrics_endpoint_reports_online_freshness(env, redis_url):
    assert run_cli("sync")[0] == 0
    _, doc = status_json()
    rows = rows_by_name(doc)
    with FeatureServer(env, serving_env(redis_url)) as server:
        text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
        gauges = _gauges(text)
        for view in ("customer_spend", "merchant_risk", "customer_profile"):
            online = rows[view]["online"]
            assert gauges[("featuremart_view_entities_published", view)] == online["entities"] == \
                online_keys(redis_url, view) > 0
            assert gauges[("featuremart_view_online_age_seconds", view)] == pytest.approx(online["age_seconds"],
                                                                                          abs=60)
            assert 0 <= gauges[("featuremart_view_seconds_since_publish", view)] < 600
        assert "featuremart_http_requests_total" in text  # the request metrics are still there
        # The warehouse moves back 10 days and a sync publishes it: the next scrape says so, no restart.
        shift_event_times(env, "customer_spend", 10)
        assert run_cli("sync")[0] == 0
        after = _gauges(urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode())
        moved = after[("featuremart_view_online_age_seconds", "customer_spend")] - \
            gauges[("featuremart_view_online_age_seconds", "customer_spend")]
        assert moved == pytest.approx(10 * 86400, abs=120)


def online_keys(redis_url: str, view: str) -> int:
    """How many value keys of `view` Redis holds (what users can read)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return len(set(client.scan_iter(match=f"fm:{{*}}:{view}:*", count=1000)))
    finally:
        client.close()


def _gauges(text: str) -> dict[tuple[str, str], float]:
    found = {}
    for name, view, value in re.findall(r'^(featuremart_view_\w+)\{view="([^"]+)"\} (\S+)$', text, re.MULTILINE):
        found[(name, view)] = float(value)
    return found


@pytest.mark.integration
@pytest.mark.postgres
def test_postgres_status_matches_duckdb(postgres_project, project, redis_server, monkeypatch):
    """The same data on PostgreSQL (its session in another time zone) and on DuckDB: the same instants,
    the same verdicts, from the UNION ALL rendered for each dialect."""
    from featuremart import FeatureStore
    from featuremart.monitoring.status import collect

    pg_project, env = postgres_project
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PGTZ", "Asia/Kolkata")  # libpq: the session's time zone
    base = redis_server.url.removesuffix("/0")
    for db in ("/2", "/3"):
        client = redis_server.client()
        client.select(int(db[1:]))
        client.flushdb()
        client.close()
    with FeatureStore(pg_project, redis_url=base + "/2") as pg:
        assert pg.sync().status == "success"
        pg_report = collect(pg, pg.select(online_only=True))
    monkeypatch.setenv("FEATUREMART_TARGET", "dev")
    with FeatureStore(project, redis_url=base + "/3") as duck:
        assert duck.sync().status == "success"
        duck_report = collect(duck, duck.select(online_only=True))
    pg_rows, duck_rows = rows_by_name(pg_report.json()), rows_by_name(duck_report.json())
    assert set(pg_rows) == set(duck_rows) and len(pg_rows) == 7
    for name, row in duck_rows.items():
        checked = (("warehouse", "newest_event"), ("online", "newest_event")) + (
            (("online", "entities"),) if row["kind"] == "view" else ())
        for stage, key in checked:
            assert pg_rows[name][stage][key] == row[stage][key] is not None, (name, stage, key)
        assert pg_rows[name]["status"] == row["status"] == OK, (name, pg_rows[name], row)

"""Hostile input outside the config files: NaN and ±Infinity values, a typo in `online_store.url_env`, passwords
with URL metacharacters, int keys such as `²`, a bad `--port`, and dbt artifacts of the wrong shape. Each is one
clear message (or a defined value), never a traceback, a 500 or non-JSON; checked by reading back what users see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from featuremart import FeatureStore, sql
from featuremart.errors import ArtifactError, OnlineStoreError
from featuremart.manifest import load_manifest, load_run_results
from featuremart.online.keys import parse_int
from featuremart.online.store import OnlineStore, redact_url
from featuremart.registry import Feature, FeatureView, Relation
from featuremart.server import create_app
from tests.conftest import ROOT, dbt
from tests.test_online_reads import tiny_project  # noqa: F401 - the module-scoped fixture (an int-keyed view)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

SCHEMA = "https://schemas.getdbt.com/dbt/manifest/v12.json"


def strict_json(raw: bytes | str):
    """json.loads as Node's JSON.parse reads: `NaN` and `Infinity` are not JSON."""
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")
    return json.loads(raw, parse_constant=refuse)


def featuremart(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("featuremart")), *args]
    full_env = {k: v for k, v in os.environ.items() if k != "FEATUREMART_REDIS_URL"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=project, env={**full_env, **(env or {})},
                          timeout=180)


# -- NaN and ±Infinity: null online, on every path, and a validate warning ---------------------------------------
NAN_SQL = """\
select 'nan' as thing_id, timestamp '2025-01-01 00:00:00' as event_ts,
       cast('NaN' as double) as ratio, [cast('Infinity' as double), 0.5] as vec
union all
select 'inf', timestamp '2025-01-01 00:00:00', cast('-Infinity' as double), [cast('NaN' as double)]
union all
select 'ok', timestamp '2025-01-01 00:00:00', 1.5, [0.25, 1.0]
"""
NAN_YML = """\
version: 2
models:
  - name: ratios
    config:
      meta:
        featuremart: {entity: thing, timestamp: event_ts, ttl: 3650d}
"""


@pytest.fixture(scope="module")
def nan_project(tmp_path_factory):
    project = tmp_path_factory.mktemp("nan")
    shutil.copy2(ROOT / "profiles.yml", project / "profiles.yml")
    dbt_project = yaml.safe_load((ROOT / "dbt_project.yml").read_text())
    dbt_project["vars"]["featuremart_entities"] = {"thing": {"join_keys": {"thing_id": "string"}}}
    (project / "dbt_project.yml").write_text(yaml.safe_dump(dbt_project))
    shutil.copytree(ROOT / "macros", project / "macros")
    (project / "features.yml").write_text("version: 1\n")
    (project / "models").mkdir()
    (project / "models" / "ratios.sql").write_text(NAN_SQL)
    (project / "models" / "ratios.yml").write_text(NAN_YML)
    dbt(project, "build")
    return project


@pytest.mark.integration
def test_nan_and_infinity_are_null_online_on_duckdb(nan_project, redis_url, redis_server):
    with FeatureStore(nan_project, redis_url=redis_url) as fs:
        assert fs.sync().status == "success"
        warnings_ = [str(p) for p in fs.validate()]
    # What a Go or Node service reads from Redis directly: strict JSON, nulls where the warehouse has NaN.
    client = redis_server.client()
    raw = {k.decode().split(":")[1]: strict_json(client.get(k))[1:] for k in client.keys("fm:{thing_id=*")}
    client.close()
    assert raw == {"{thing_id=nan}": [None, [None, 0.5]], "{thing_id=inf}": [None, [None]],
                   "{thing_id=ok}": [1.5, [0.25, 1.0]]}
    # Python reads and the HTTP server.
    with FeatureStore.from_url(redis_url) as store:
        rows = store.get_online_features([{"thing_id": "nan"}, {"thing_id": "inf"}], features=["ratios.*"])
        assert [{k: (v.value, v.status) for k, v in r.items()} for r in rows] == [
            {"ratio": (None, "present"), "vec": ([None, 0.5], "present")},
            {"ratio": (None, "present"), "vec": ([None], "present")}]
        with TestClient(create_app(store.reader)) as http:
            response = http.post("/features", json={"features": ["ratios.ratio", "ratios.vec"],
                                                    "entities": [{"thing_id": "nan"}]})
        assert response.status_code == 200
        body = strict_json(response.text)
        assert "NaN" not in response.text and "Infinity" not in response.text and body
    # `featuremart validate` names the view and the feature.
    assert [w.split(": ", 1)[1] for w in warnings_ if "NaN" in w] == [
        "model ratios: feature ratio: 2 row(s) hold NaN or ±Infinity, which online reads serve as null (JSON has no "
        "such numbers) while training sets keep them; replace them in models/ratios.sql (e.g. nullif, or a guarded "
        "division) so both agree",
        "model ratios: feature vec: 2 row(s) hold NaN or ±Infinity, which online reads serve as null (JSON has no "
        "such numbers) while training sets keep them; replace them in models/ratios.sql (e.g. nullif, or a guarded "
        "division) so both agree"]


def nan_view(relation: Relation) -> FeatureView:
    return FeatureView(name="ratios", entities=("thing",), join_keys=(("thing_id", "string"),), timestamp="event_ts",
                       ttl=timedelta(days=3650), relation=relation,
                       features=(Feature("ratios", "ratio", "float"), Feature("ratios", "num", "float"),
                                 Feature("ratios", "vec", "array<float>")))


@pytest.mark.postgres
def test_nan_and_infinity_are_null_in_the_sync_sql_on_postgres(postgres_dsn):
    """The sync's SQL run on Postgres (whose json_build_array writes the string "NaN"): strict JSON with nulls."""
    import psycopg2

    schema = f"fm_nan_{uuid.uuid4().hex[:8]}"
    view = nan_view(Relation(None, schema, "ratios"))
    now = datetime(2025, 6, 1, tzinfo=timezone.utc)
    connection = psycopg2.connect(postgres_dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(f'create schema "{schema}"')
            cursor.execute(f'create table "{schema}".ratios (thing_id text, event_ts timestamp, ratio float8, '
                           'num numeric, vec float8[])')
            cursor.execute(f'insert into "{schema}".ratios values '
                           "('nan', '2025-01-01', 'NaN', 'NaN', array['Infinity', 0.5]::float8[]), "
                           "('inf', '2025-01-01', '-Infinity', 2.5, array['NaN']::float8[]), "
                           "('ok', '2025-01-01', 1.5, 3, null)")
            cursor.execute(sql.render(sql.online_payload(view, "fm", now, "postgres"), "postgres"))
            values = {key: strict_json(value)[1:] for key, value, _ in cursor.fetchall()}
            cursor.execute(sql.render(sql.non_finite_counts(view, "postgres"), "postgres"))
            counts = cursor.fetchone()
    finally:
        with connection, connection.cursor() as cursor:
            cursor.execute(f'drop schema if exists "{schema}" cascade')
        connection.close()
    version = view.version
    assert values == {f"fm:{{thing_id=nan}}:ratios:{version}": [None, None, [None, 0.5]],
                      f"fm:{{thing_id=inf}}:ratios:{version}": [None, 2.5, [None]],
                      f"fm:{{thing_id=ok}}:ratios:{version}": [1.5, 3, None]}
    assert list(counts) == [2, 1, 2]


def test_nan_and_infinity_are_null_in_the_sync_sql_on_duckdb(tmp_path):
    import duckdb

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("create table ratios as select * from (values "
                "('nan', timestamp '2025-01-01', 'NaN'::double, 'NaN'::double, ['Infinity'::double, 0.5]), "
                "('inf', timestamp '2025-01-01', '-Infinity'::double, 2.5, ['NaN'::double]), "
                "('ok', timestamp '2025-01-01', 1.5, 3, null)) t(thing_id, event_ts, ratio, num, vec)")
    view = nan_view(Relation(None, "main", "ratios"))
    now = datetime(2025, 6, 1, tzinfo=timezone.utc)
    rows = con.sql(sql.render(sql.online_payload(view, "fm", now, "duckdb"), "duckdb")).fetchall()
    assert {key.split(":")[1]: strict_json(value)[1:] for key, value, _ in rows} == {
        "{thing_id=nan}": [None, None, [None, 0.5]], "{thing_id=inf}": [None, 2.5, [None]],
        "{thing_id=ok}": [1.5, 3.0, None]}
    assert con.sql(sql.render(sql.non_finite_counts(view, "duckdb"), "duckdb")).fetchall() == [(2, 1, 2)]


def test_stored_nan_from_older_writers_reads_as_null():
    from featuremart.online.codec import RowDecoder

    decoder = RowDecoder(["float", "float", "array<float>", "float"])
    assert decoder.decode(b'[1, NaN, -Infinity, [Infinity, 0.5, null], "NaN"]') == [1, None, None, [None, 0.5, None],
                                                                                    None]
    assert decoder.decode(b"[1, 2, 2.5, [1], -0.0]") == [1, 2.0, 2.5, [1.0], -0.0]


# -- url_env naming an unset variable ----------------------------------------------------------------------------
@pytest.mark.integration
def test_url_env_naming_an_unset_variable_is_an_error(project):
    (project / "features.yml").write_text((project / "features.yml").read_text().replace(
        "  key_prefix: fm", "  url_env: FEATUREMART_REDIS_URLL\n  key_prefix: fm"))
    proc = featuremart(project, "sync")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "Error: features.yml: online_store.url_env names FEATUREMART_REDIS_URLL, which is unset or empty: export "
        "FEATUREMART_REDIS_URLL=redis://host:6379/0, or delete url_env to use FEATUREMART_REDIS_URL (when that is "
        "unset too: an embedded redis-server under target/)")
    assert not (project / "target" / "featuremart" / "redis.db").exists()  # nothing went to an embedded store


@pytest.mark.integration
def test_every_command_says_which_store_it_used(project, redis_url):
    proc = featuremart(project, "sync", "--json", env={"FEATUREMART_REDIS_URL": redis_url})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "success"  # stdout stays pure JSON
    assert proc.stderr.strip().splitlines()[-1] == f"online store: {redis_url}"
    assert featuremart(project, "sync").returncode == 0  # into the embedded store: no URL configured
    proc = featuremart(project, "get", "--features", "customer_spend.spend_7d", "customer_id=C0000001", "--json")
    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"online store: embedded redis-server under {project / 'target' / 'featuremart'} (no online_store.url_env, "
        "FEATUREMART_REDIS_URL unset)")


# -- passwords with URL metacharacters ---------------------------------------------------------------------------
@pytest.mark.parametrize("url,shown", [
    ("redis://u:pa/ss#w?d@host/0", "redis://u:***@host/0"),
    ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://acl-user:s3cr%2Ft@host:6380/1", "rediss://acl-user:***@host:6380/1"),
    ("redis://host:6379/0?password=a&b=1", "redis://host:6379/0?password=***&b=1"),
    ("redis://user@host", "redis://user@host"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_redaction_does_not_parse_the_url(url, shown):
    assert redact_url(url) == shown


def test_invalid_url_error_shows_no_piece_of_the_password(tmp_path):
    with pytest.raises(OnlineStoreError) as exc:
        OnlineStore.connect("redis://u:pa/ss#w?d@host/0", embedded_dir=tmp_path)
    message = str(exc.value)
    assert message.startswith("Invalid Redis URL redis://u:***@host/0: it cannot be parsed as a Redis URL")
    assert not any(piece in message for piece in ("pa/", "'pa'", "ss#w", "w?d"))


@pytest.mark.parametrize("path", ["/features", "/0x1", "/1/2", "/%31a"])
def test_a_database_that_is_not_a_number_is_refused_not_read_as_database_0(redis_url, tmp_path, path):
    base = redis_url.rsplit("/", 1)[0]
    with OnlineStore.connect(base + "/0", embedded_dir=tmp_path, prefix="fm") as store:
        store._redis.set(b"planted", b"database 0")
    with pytest.raises(OnlineStoreError) as exc:
        OnlineStore.connect(base + path, embedded_dir=tmp_path)
    assert str(exc.value).startswith(f"Invalid Redis URL {base + path}: the path {path} is not a database number")
    assert "redis://[[user]:password@]host[:port][/db]" in str(exc.value)
    with OnlineStore.connect(base + "/0/?health_check_interval=2", embedded_dir=tmp_path) as store:
        assert store._redis.get(b"planted") == b"database 0"  # a number, with or without a trailing slash


@pytest.mark.integration
def test_sync_with_a_malformed_url_is_a_user_error_not_a_failed_run(tiny_project, redis_url):  # noqa: F811
    base = redis_url.rsplit("/", 1)[0]
    for url in ("http://x", base + "/features"):
        proc = featuremart(tiny_project, "sync", env={"FEATUREMART_REDIS_URL": url})
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"Error: Invalid Redis URL {url}: " in proc.stderr


# -- int keys such as '²', and --port ----------------------------------------------------------------------------
@pytest.mark.parametrize("text,number", [("7", 7), (" -7 ", -7), ("+7", 7), ("²", None), ("١", None), ("7.0", None),
                                         ("1_000", None), ("", None), ("0x1", None)])
def test_int_keys_are_ascii_decimal(text, number):
    assert parse_int(text) == number


@pytest.mark.integration
def test_superscript_int_key_is_a_clear_error_in_cli_and_server(tiny_project, redis_url):  # noqa: F811
    with FeatureStore(tiny_project, redis_url=redis_url) as fs:
        assert fs.sync().status == "success"
    proc = featuremart(tiny_project, "get", "--features", "balances.balance", "account_id=²",
                       env={"FEATUREMART_REDIS_URL": redis_url})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"online store: {redis_url}",
                                        "Error: entity key account_id is an int key; got '²' (str): give an integer or a decimal string"]
    with FeatureStore.from_url(redis_url) as store, TestClient(create_app(store.reader)) as http:
        response = http.post("/features", json={"features": ["balances.balance"], "entities": [{"account_id": "²"}]})
        assert response.status_code == 400 and "account_id is an int key" in response.json()["error"]
        response = http.post("/features", content=b"{}", headers={"Content-Length": "²".encode("latin-1")})
        assert response.status_code == 400


@pytest.mark.integration
@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_serve_with_an_impossible_port(project, port):
    proc = featuremart(project, "serve", "--port", port)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"Error: --port {port}: a TCP port is a number from 1 to 65535"


# -- dbt artifacts of the wrong shape ----------------------------------------------------------------------------
@pytest.mark.parametrize("body,message", [
    ("null", "manifest.json holds null where dbt writes its manifest (a JSON object)"),
    ("[]", "manifest.json holds [] where dbt writes its manifest (a JSON object)"),
    (json.dumps({"metadata": {"dbt_schema_version": SCHEMA},
                 "nodes": {"model.p.a": {"resource_type": "model", "unique_id": "model.p.a"}}}),
     "manifest.json: node 'model.p.a' has no 'name', which dbt always writes"),
    (json.dumps({"metadata": {"dbt_schema_version": SCHEMA}, "nodes": {"model.p.a": "x"}}),
     "manifest.json: node 'model.p.a' is not shaped as dbt writes it"),
    (json.dumps({"metadata": {"dbt_schema_version": SCHEMA}, "exposures": {"exposure.p.e": {"type": "ml"}}}),
     "manifest.json: exposure 'exposure.p.e' has no 'name', which dbt always writes"),
    (json.dumps({"metadata": {"dbt_schema_version": SCHEMA}, "nodes": ["x"]}),
     "manifest.json: nodes is not a JSON object"),
])
def test_malformed_manifest(tmp_path, body, message):
    (tmp_path / "manifest.json").write_text(body)
    with pytest.raises(ArtifactError) as exc:
        load_manifest(tmp_path)
    assert str(exc.value) == f"{tmp_path}/{message}; run `dbt build` in the project first to rewrite it."


@pytest.mark.parametrize("body,message", [
    ("[]", "run_results.json holds [] where dbt writes its run results (a JSON object)"),
    (json.dumps({"results": [{"status": "success"}]}),
     "run_results.json: results[0] has no 'unique_id', which dbt always writes"),
    (json.dumps({"results": {"a": 1}}), "run_results.json: results is not a JSON list"),
])
def test_malformed_run_results(tmp_path, body, message):
    (tmp_path / "run_results.json").write_text(body)
    with pytest.raises(ArtifactError) as exc:
        load_run_results(tmp_path)
    assert str(exc.value) == f"{tmp_path}/{message}; run `dbt build` in the project first to rewrite it."


@pytest.mark.integration
def test_malformed_manifest_through_the_cli(project):
    (project / "target" / "manifest.json").write_text("null")
    proc = featuremart(project, "validate")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"Error: {project / 'target' / 'manifest.json'} holds null where dbt writes its "
                                   "manifest (a JSON object); run `dbt build` in the project first to rewrite it.")

"""The HTTP feature server: every endpoint and every 4xx path with Starlette's TestClient, and a short load test
against a real `featuremart serve` process (uvicorn) on a free port that asserts zero errors."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import pytest

from featuremart import FeatureStore
from featuremart.server import create_app
from tests.conftest import ROOT
from tests.feature_server import FeatureServer, serving_env
from tests.redis_server import RedisServer, free_port
from tests.test_online_reads import EVENT, tiny_project  # noqa: F401 - the module-scoped fixture

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

TOKEN = "t0ken-never-logged"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def store(tiny_project, redis_url):  # noqa: F811
    with FeatureStore(tiny_project, redis_url=redis_url) as fs:
        assert fs.sync().status == "success"
    store = FeatureStore.from_url(redis_url)
    yield store
    store.close()


@pytest.fixture
def client(store):
    with TestClient(create_app(store.reader, max_entities=5, max_body_bytes=2000)) as c:
        yield c


def test_post_features_by_list(client):
    resp = client.post("/features", json={"features": ["all_types.f_int", "all_types.f_ts", "balances.balance"],
                                          "entities": [{"thing_id": "a", "account_id": 7}, {"thing_id": "zz",
                                                                                            "account_id": 8}]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["features"] == ["f_int", "f_ts", "balance"] and set(body["versions"]) == {"all_types", "balances"}
    first, second = body["results"]
    assert first["entity"] == {"thing_id": "a", "account_id": 7}
    assert first["values"]["f_int"] == {"value": 42, "status": "present", "event_ts": EVENT.isoformat()}
    assert first["values"]["f_ts"]["value"] == "2024-02-29T23:59:59.999999+00:00"
    assert first["values"]["balance"] == {"value": 10.5, "status": "present",
                                          "event_ts": "2025-01-01T00:00:00+00:00"}
    assert second["values"]["f_int"] == {"value": None, "status": "missing", "event_ts": None}


def test_listings_health_and_metrics(client):
    views = client.get("/features").json()["views"]
    all_types = next(v for v in views if v["name"] == "all_types")
    assert all_types["join_keys"] == {"thing_id": "string"} and all_types["ttl_seconds"] == 3650 * 86400
    assert {"name": "all_types.f_vec", "type": "array<float>", "description": ""} in all_types["features"]
    assert client.get("/services").json() == {"services": []}
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["views"] == 2
    client.post("/features", json={"features": ["all_types.f_int"], "entities": [{"thing_id": "a"}, {"thing_id": "q"}]})
    client.post("/features", content=b"{")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'featuremart_http_requests_total{endpoint="/features",code="200"} 2' in text  # GET and POST
    assert 'featuremart_http_requests_total{endpoint="/features",code="400"} 1' in text
    assert 'featuremart_http_request_duration_seconds_bucket{endpoint="/features",le="+Inf"} 3' in text
    assert 'featuremart_feature_values_total{status="present"} 1' in text
    assert 'featuremart_feature_values_total{status="missing"} 1' in text


@pytest.mark.parametrize("body, status, message", [
    (b"{", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[]", 400, "must be a JSON object"),
    (b'{"service": "x", "features": ["a.b"], "entities": []}', 400, "not both or neither"),
    (b'{"entities": []}', 400, "not both or neither"),
    (b'{"service": 3, "entities": []}', 400, '"service" must be a string'),
    (b'{"features": "all_types.f_int", "entities": []}', 400, '"features" must be a list of strings'),
    (b'{"features": [1], "entities": []}', 400, '"features" must be a list of strings'),
    (b'{"features": ["all_types.f_int"]}', 400, '"entities" must be a list'),
    (b'{"features": ["all_types.f_int"], "entities": {"thing_id": "a"}}', 400, '"entities" must be a list'),
    (b'{"features": ["all_types.f_int"], "entities": ["a"]}', 400, "entities[0] must be an object"),
    (b'{"features": ["all_types.f_int"], "entities": [{"thing_id": true}]}', 400, "must be a string or an integer"),
    (b'{"features": ["all_types.f_int"], "entities": [{"thing_id": 1.5}]}', 400, "must be a string or an integer"),
    (b'{"features": ["all_types.f_int"], "entities": [{"thing_id": null}]}', 400, "must be a string or an integer"),
    (b'{"features": ["all_types.f_int"], "entities": [{"thing_id": 1}]}', 400, "thing_id is a string key"),
    (b'{"features": ["balances.balance"], "entities": [{"account_id": "x"}]}', 400, "account_id is an int key"),
    (b'{"features": ["all_types.f_int"], "entities": [{"thing": "a"}]}', 400, "missing entity key(s) thing_id"),
    (b'{"features": ["all_types.f_int"], "entities": [], "extra": 1}', 400, "unknown field(s) extra"),
    (b'{"service": "nope", "entities": []}', 400, "no feature service 'nope'"),
    (b'{"features": ["nope.f"], "entities": []}', 400, "no feature view 'nope'; feature views: all_types"),
    (b'{"features": ["all_types.nope"], "entities": []}', 400, "has no feature 'nope'; its features: f_int"),
    (b'{"features": [], "entities": []}', 400, "no features requested"),
    (b'{"features": ["all_types.f_int"], "entities": [' + b'{"thing_id": "a"},' * 5 + b'{"thing_id": "a"}]}', 413,
     "6 entities in one request; the limit is 5"),
    (b'{"features": ["all_types.f_int"], "entities": [{"thing_id": "' + b"x" * 3000 + b'"}]}', 413,
     "the limit is 2000"),
])
def test_every_client_error_is_a_4xx_with_a_message(client, body, status, message):
    resp = client.post("/features", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]


def test_body_limit_without_content_length(client):
    def chunks():
        yield b'{"features": ["all_types.f_int"], "entities": [{"thing_id": "'
        yield b"x" * 3000
        yield b'"}]}'

    resp = client.post("/features", content=chunks())
    assert resp.status_code == 413 and "over 2000 bytes" in resp.json()["error"]


def test_unknown_path_and_method(client):
    assert client.get("/nope").status_code == 404 and client.get("/nope").json() == {"error": "Not Found"}
    resp = client.delete("/features")
    assert resp.status_code == 405 and "error" in resp.json()


def test_bearer_token(store):
    with TestClient(create_app(store.reader, token=TOKEN)) as c:
        body = {"features": ["all_types.f_int"], "entities": [{"thing_id": "a"}]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = c.post("/features", json=body, headers=headers)
            assert resp.status_code == 401 and "bearer token" in resp.json()["error"]
            assert TOKEN not in resp.text
        assert c.get("/metrics").status_code == 401 and c.get("/services").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes stay open
        assert c.post("/features", json=body, headers=AUTH).status_code == 200
        assert c.get("/metrics", headers=AUTH).status_code == 200


def test_not_ready_without_a_registry(redis_url):
    store = FeatureStore.from_url(redis_url)  # nothing synced into this empty database
    try:
        with TestClient(create_app(store.reader)) as c:
            assert c.get("/healthz").status_code == 200
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "run `featuremart sync` first" in ready.json()["error"]
            resp = c.post("/features", json={"features": ["a.b"], "entities": []})
            assert resp.status_code == 503 and "error" in resp.json()
    finally:
        store.close()


def test_serve_under_load_with_zero_errors(store, tiny_project, redis_url):  # noqa: F811
    """`featuremart serve` (real uvicorn) on a free port, 8 connections for 2 s each shape: no errors."""
    from bench.http_load import load, wait_ready

    port = free_port()
    env = {**os.environ, "FEATUREMART_REDIS_URL": redis_url, "FM_TEST_TOKEN": TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "featuremart.cli", "serve", "--project-dir", str(tiny_project), "--profiles-dir",
         str(tiny_project), "--port", str(port), "--token-env", "FM_TEST_TOKEN", "--max-entities", "100"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        one = {"features": ["all_types.*"], "entities": [{"thing_id": "a"}]}
        hundred = {"features": ["all_types.f_int", "balances.balance"],
                   "entities": [{"thing_id": t, "account_id": 7} for t in ("a", "b", "c", "zz") * 25]}
        for payload in (one, hundred):
            result = load("127.0.0.1", port, payload, concurrency=8, seconds=2, token=TOKEN)
            assert result["errors"] == 0 and result["requests"] > 50, result
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert TOKEN not in output
    assert f"http://127.0.0.1:{port}" in output


# -- a real server process: what no client may break --------------------------------------------------------

DEEP = b'{"features": ["all_types.f_int"], "entities": [{"thing_id": ' + b"[" * 1000 + b"]" * 1000 + b"}]}"
DEEPER = b"[" * 2000 + b"]" * 2000  # beyond any parser's depth limit


@pytest.fixture
def server(store, redis_url, tmp_path):
    """`featuremart serve` needing only the Redis URL, with short timeouts and a small connection cap."""
    with FeatureServer(tmp_path, serving_env(redis_url), "--max-connections", "40", "--header-timeout", "1",
                       "--body-timeout", "1", "--keep-alive", "1") as s:
        yield s


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict, dict]:
    conn.request("POST", "/features", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read())


def test_deeply_nested_json_is_a_400_and_the_connection_stays_usable(server):
    assert len(DEEP) < 2100
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for body in (DEEP, DEEPER, b"[" * 1000 + b"]" * 1000):
            status, headers, payload = _post(conn, body)
            assert status == 400, payload
            assert "connection" not in headers  # answered, not dropped: the next request reuses the socket
        status, _, payload = _post(conn, b'{"features": ["all_types.f_int"], "entities": [{"thing_id": "a"}]}')
        assert status == 200 and payload["results"][0]["values"]["f_int"]["value"] == 42
    finally:
        conn.close()
    assert "Traceback" not in server.stop() and "RecursionError" not in server.output


def test_slow_and_idle_connections_are_closed_and_capped(server):
    """50 sockets against a cap of 40 and a 1 s header deadline: 10 are closed at once, the rest within
    seconds whether idle or trickling a header, the server's descriptors return, and it answers again."""
    baseline_fds = server.open_fds()
    sockets = []
    try:
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 2:
                s.sendall(b"POST /features HTTP/1.1\r\nHost: x\r\n")  # a header that never ends
            sockets.append(s)
            time.sleep(0.005)
        time.sleep(0.3)
        closed_at_once = sum(_closed_by_server(s, wait=0.05) for s in sockets)
        assert closed_at_once >= 10, closed_at_once
        for s in sockets[1::2]:  # trickle: a byte every 0.3 s does not extend the deadline
            for _ in range(3):
                try:
                    s.sendall(b"X")
                except OSError:
                    break
                time.sleep(0.1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(_closed_by_server(s, wait=0.05) for s in sockets):
            time.sleep(0.2)
        assert all(_closed_by_server(s, wait=0.05) for s in sockets)
    finally:
        for s in sockets:
            s.close()
    time.sleep(0.3)
    assert server.open_fds() <= baseline_fds + 2
    status, body = server.request("POST", "/features", {"features": ["all_types.f_int"],
                                                         "entities": [{"thing_id": "a"}]})
    assert status == 200, body
    output = server.stop()
    assert "Traceback" not in output
    # each kind of failure logged once per 10 s, not once per socket
    assert output.count("sent no complete request headers") <= 2, output
    assert 1 <= output.count("closed a new connection") <= 2, output


def _closed_by_server(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1 << 16) == b""
    except socket.timeout:
        return False
    except OSError:  # reset by the server
        return True


def test_slow_body_gets_408_and_cut_off_body_is_a_client_error(server):
    head = (b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"features\"")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head)  # and nothing more: the body timeout is 1 s
        reply = b""
        while chunk := s.recv(1 << 16):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408 ") and b"connection: close" in reply.lower(), reply
    for _ in range(3):  # clients that hang up mid-body
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(head)
        time.sleep(0.1)
    time.sleep(0.3)
    status, _ = server.request("GET", "/healthz")
    assert status == 200
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    assert 'code="499"} 3' in metrics and 'code="408"} 1' in metrics, metrics
    assert 'code="500"' not in metrics
    assert "Traceback" not in server.stop()


def test_plan_cache_is_bounded_by_memory(server):
    """Requests naming one feature 20,000+ times (each list distinct, ~360 KB): the server's memory stays flat."""
    for i in range(3):  # warm up: first plans, threadpool, allocator
        server.request("POST", "/features", {"features": ["all_types.f_int"] * (20_000 + i), "entities": []})
    before = server.rss_mb()
    for i in range(80):
        status, body = server.request("POST", "/features", {"features": ["all_types.f_int"] * (20_100 + i),
                                                             "entities": [{"thing_id": "a"}]})
        assert status == 200 and body["results"][0]["values"]["f_int"]["value"] == 42
    grown = server.rss_mb() - before
    assert grown < 40, f"RSS grew {grown:.0f} MB over 80 requests"


def test_plan_cache_accounts_bytes(store):
    from featuremart.online.reader import PLAN_CACHE_BYTES

    reader = store.reader
    for i in range(300):
        reader.read([{"thing_id": "a"}], features=["all_types.f_int"] * (1 + i % 7) + ["all_types.f_bool"] * i)
    plans = reader._current().plans
    assert 0 < plans.nbytes <= PLAN_CACHE_BYTES and len(plans) <= 256


def test_unavailable_store_reveals_nothing_about_it(tiny_project, tmp_path):  # noqa: F811
    """503 bodies and the unauthenticated /readyz say "online store unavailable"; the log has the detail."""
    with RedisServer() as redis_server:
        admin = redis_server.client()
        admin.execute_command("ACL", "SETUSER", "fmreader", "on", ">s3cret-pw", "~*", "+@all")
        url = f"redis://fmreader:s3cret-pw@127.0.0.1:{redis_server.port}/3"
        with FeatureStore(tiny_project, redis_url=url) as fs:
            assert fs.sync().status == "success"
        with FeatureServer(tmp_path, serving_env(url)) as server:
            assert server.request("GET", "/readyz")[0] == 200
            redis_server.kill()
            status, ready = server.request("GET", "/readyz")
            assert (status, ready) == (503, {"error": "not ready: online store unavailable"})
            status, body = server.request("POST", "/features", {"features": ["all_types.f_int"],
                                                                 "entities": [{"thing_id": "a"}]})
            assert (status, body) == (503, {"error": "online store unavailable"})
            status, body = server.request("GET", "/services")
            assert (status, body) == (503, {"error": "online store unavailable"})
            output = server.stop()
    assert str(redis_server.port) in output  # the operator sees where it failed
    assert "s3cret-pw" not in output

"""HTTP load on loopback: requests/s and latency of `POST /features` at several batch sizes and concurrencies.

A Python load generator (asyncio, raw HTTP/1.1 keep-alive connections: no client library in the measured
path), bounded in time. It starts a private redis-server, syncs the reference project into it (built here at
`--customers`, or `--project` already built), and runs the feature server (uvicorn, one process) on a free port.
For 1 and 100 entities per request (`fraud_model`) and concurrency 1, 8 and 64 it reports requests/s, p50 and
p99, and asserts zero errors. It also times, in this process, what the server does to answer 100 entities
once the values are read (`render_result` + `_json`) against orjson encoding the finished response alone
(paired, rotated, `--reps` repetitions; bar: at most 2x). Prints the Redis server used (bench/redis_check.py)
and the load average. Writes `bench/results/http_load.json`.

The load generator shares the machine with the server: on a small machine it takes a good part of the CPU, so
these are lower bounds of what the server does alone.

    python bench/http_load.py                      # 20k customers, 5 s per cell
    python bench/http_load.py --io inline          # blocking reads on the event loop instead of the threadpool
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

#: the server's rendering of a 100-entity response against orjson encoding the same response alone
ENCODE_BAR = 2.0

SERVER = """
import sys, uvicorn
from featuremart import FeatureStore
from featuremart.server import create_app
reader = FeatureStore.from_url(sys.argv[1]).reader
reader.registry
app = create_app(reader, threadpool=sys.argv[3] == "threadpool", max_entities=1000)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=False, log_level="warning")
"""


async def _worker(host: str, port: int, request: bytes, deadline: float, latencies: list[float],
                  errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter
    try:
        while clock() < deadline:
            started = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append(clock() - started)
            if status != 200:
                errors.append(f"{status}: {body[:200]!r}")
    except (OSError, asyncio.IncompleteReadError) as exc:
        errors.append(repr(exc))
    finally:
        writer.close()


def post_request(host: str, port: int, payload: dict, token: str | None = None) -> bytes:
    body = json.dumps(payload).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /features HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def load(host: str, port: int, payload: dict, *, concurrency: int, seconds: float,
         token: str | None = None) -> dict:
    """Send `payload` from `concurrency` connections for `seconds`; requests/s, p50/p99 ms, errors."""
    request = post_request(host, port, payload, token)
    latencies: list[float] = []
    errors: list[str] = []

    async def run() -> float:
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(*(_worker(host, port, request, deadline, latencies, errors)
                               for _ in range(concurrency)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    latencies.sort()
    n = len(latencies)
    pick = (lambda q: round(latencies[min(n - 1, int(q * n))] * 1000, 2)) if n else (lambda q: None)
    return {"requests": n, "errors": len(errors), "first_errors": errors[:3],
            "rps": round(n / elapsed, 1), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def encode_ratio(reader, payload: dict, reps: int, calls: int = 500) -> dict:
    """Time the server's response for `payload` (`render_result` + `_json`, from an `OnlineResult`) against
    `orjson.dumps` of the finished response, paired with the order alternating; median and range of the
    per-repetition ratio of medians."""
    import orjson

    from featuremart.server import _json, render_result

    service, entities = payload["service"], payload["entities"]
    result = reader.read(entities, service=service)
    # The same response as plain Python values (a dict per value, event times as datetimes, as the records
    # API returns them): what orjson alone would be handed.
    finished = {**render_result(service, result),
                "results": [{"entity": e, "values": {k: v._asdict() for k, v in r.items()}}
                            for e, r in zip(entities, result.to_records())]}
    assert orjson.loads(_json(render_result(service, result)).body) == orjson.loads(orjson.dumps(finished))
    contenders = [("server", lambda: _json(render_result(service, result))),
                  ("orjson", lambda: orjson.dumps(finished))]
    ratios, medians = [], []
    clock = time.perf_counter_ns
    for _ in range(reps):
        times: dict[str, list[int]] = {"server": [], "orjson": []}
        for i in range(calls):
            for name, fn in (contenders if i % 2 else contenders[::-1]):
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
        m = {name: statistics.median(ns) / 1000 for name, ns in times.items()}
        medians.append(m)
        ratios.append(m["server"] / m["orjson"])
    return {"server_us": round(statistics.median(m["server"] for m in medians), 1),
            "orjson_us": round(statistics.median(m["orjson"] for m in medians), 1),
            "ratio": {"median": round(statistics.median(ratios), 2), "min": round(min(ratios), 2),
                      "max": round(max(ratios), 2)}, "bar": ENCODE_BAR}


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the feature server at {url} did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--project", type=Path, default=None, help="an already built reference project")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    parser.add_argument("--io", choices=("threadpool", "inline"), default="threadpool",
                        help="how the server runs its blocking Redis reads")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the encoding comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http_load.json")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)

    from bench.online_read import sample_pairs
    from featuremart import FeatureStore
    from tests.conftest import build_reference_project

    load_before = [round(x, 2) for x in os.getloadavg()]
    redis_server, redis_info = redis_check.start(args)
    with tempfile.TemporaryDirectory(prefix="fm-http-") as tmp, redis_check.stopping(redis_server):
        project = args.project or build_reference_project(Path(tmp) / "project", customers=args.customers)
        with FeatureStore(project, redis_url=redis_server.url) as fs:
            assert fs.sync().status == "success"
        pairs = sample_pairs(project, 100)
        with FeatureStore.from_url(redis_server.url) as fs:
            encoding = encode_ratio(fs.reader, {"service": "fraud_model", "entities": pairs}, args.reps)
        print(f"100-entity response: server render + encode {encoding['server_us']} µs, orjson alone "
              f"{encoding['orjson_us']} µs: {encoding['ratio']['median']}x [{encoding['ratio']['min']}-"
              f"{encoding['ratio']['max']}] (bar {ENCODE_BAR}x)", flush=True)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, redis_server.url, str(port), args.io],
                                  cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        cells = []
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            for n_entities in (1, 100):
                payload = {"service": "fraud_model", "entities": pairs[:n_entities]}
                for concurrency in (1, 8, 64):
                    cell = {"entities": n_entities, "concurrency": concurrency,
                            **load("127.0.0.1", port, payload, concurrency=concurrency, seconds=args.seconds)}
                    cells.append(cell)
                    print(f"{n_entities:>4} entities  concurrency {concurrency:>3}: {cell['rps']:>8.1f} req/s  "
                          f"p50 {cell['p50_ms']:>7} ms  p99 {cell['p99_ms']:>7} ms  errors {cell['errors']}",
                          flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)
    errors = sum(c["errors"] for c in cells)
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {load_before[0]}, after {load_after[0]} ({os.cpu_count()} CPUs); "
          f"redis-server {redis_info['redis_version']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"io": args.io, "seconds_per_cell": args.seconds, "cpus": os.cpu_count(),
                                    "load_average_before": load_before, "load_average_after": load_after,
                                    **redis_info, "encoding_100_entities": encoding,
                                    "python": platform.python_version(), "cells": cells}, indent=2) + "\n")
    print(f"wrote {args.out}")
    failed = []
    if errors:
        failed.append(f"{errors} errors: {[c['first_errors'] for c in cells if c['errors']]}")
    if encoding["ratio"]["median"] > ENCODE_BAR:
        failed.append(f"the 100-entity response took {encoding['ratio']['median']}x orjson alone (bar {ENCODE_BAR}x)")
    for line in failed:
        print(f"NOT met: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

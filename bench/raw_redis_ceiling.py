"""How fast can rows go into Redis from Python? The ceiling that `OnlineStore.write` is measured against.

Against a private redis-server started here (never a server of yours), writes the same rows three ways and
reports rows/s, each as a ratio to (b):

  (a) redis-py pipeline (transaction=False) of `SET key value PXAT ms`, executed every 10k rows
  (b) redis-py `MSET` of 10k rows per call (no expiry: the fastest redis-py write, the baseline)
  (c) `OnlineStore.write`: `SET key value PXAT ms`, hand-encoded RESP, 10k rows per buffer
  (d) the server alone: the buffers of (c) encoded before the clock starts, then sent and their replies read.
      Not a Python write path: it shows how much of (c)'s time is the server's own cost of SET with an expiry
      (MSET sets no expiry, so it does less work per key; (c) cannot beat (d)).
  (e) `redis-cli --pipe` of the same `SET key value PXAT ms` bytes from a file written before the clock starts:
      the physical write limit `featuremart sync` is measured against (bench/sync.py).

The server is emptied (`FLUSHALL`) before each run, so every run inserts new keys. Results go to
`bench/results/raw_redis_ceiling.json`.

    python bench/raw_redis_ceiling.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from featuremart.online.store import OnlineStore  # noqa: E402

CHUNK = 10_000
VALUE_BYTES = 120


def make_rows(n: int) -> tuple[list[bytes], list[bytes], list[int]]:
    keys = [b"fm:{customer_id=C%07d}:customer_spend:ab12cd34" % i for i in range(n)]
    filler = b"x" * (VALUE_BYTES - 24)
    values = [b"%012d|%s|%010d" % (i, filler, i * 7) for i in range(n)]
    now_ms = int(time.time() * 1000)
    expire = [now_ms + 86_400_000 + (i % 3600) * 1000 for i in range(n)]
    return keys, values, expire


def pipelined_set(client: redis.Redis, keys, values, expire) -> None:
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(keys), CHUNK):
        for k, v, e in zip(keys[start:start + CHUNK], values[start:start + CHUNK], expire[start:start + CHUNK]):
            pipe.set(k, v, pxat=e)
        results = pipe.execute(raise_on_error=True)
        assert all(results)


def mset(client: redis.Redis, keys, values, expire) -> None:
    del expire  # MSET cannot set an expiry: that is what makes it the ceiling
    for start in range(0, len(keys), CHUNK):
        assert client.mset(dict(zip(keys[start:start + CHUNK], values[start:start + CHUNK])))


def online_store_write(store: OnlineStore, keys, values, expire) -> None:
    assert store.write(keys, values, expire) == len(keys)


def server_bound(store: OnlineStore, keys, values, expire):
    """Time only sending pre-encoded SET PXAT buffers and reading their replies (one connection)."""
    from featuremart.online.store import _encode_set_pxat, _get_connection, _ReplyReader

    buffers = [(_encode_set_pxat(keys[i:i + CHUNK], values[i:i + CHUNK], expire[i:i + CHUNK]),
                len(keys[i:i + CHUNK])) for i in range(0, len(keys), CHUNK)]
    pool = store._redis.connection_pool
    conn = _get_connection(pool)
    try:
        replies = _ReplyReader(conn)
        t0 = time.perf_counter()
        for buf, n in buffers:
            conn.send_packed_command([buf], check_health=False)
            assert not replies.read(n)
        return time.perf_counter() - t0
    finally:
        pool.release(conn)


def redis_cli_pipe(port: int, folder: Path, keys, values, expire) -> float:
    """Time `redis-cli --pipe` replaying pre-encoded SET PXAT commands (the file is written untimed)."""
    import subprocess

    from featuremart.online.store import _encode_set_pxat

    path = folder / "set_pxat.resp"
    with open(path, "wb") as fh:
        for i in range(0, len(keys), CHUNK):
            fh.write(_encode_set_pxat(keys[i:i + CHUNK], values[i:i + CHUNK], expire[i:i + CHUNK]))
    with open(path, "rb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=fh, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
    path.unlink()
    assert proc.returncode == 0 and f"errors: 0, replies: {len(keys)}" in proc.stdout, proc.stdout + proc.stderr
    return elapsed


def shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it, else as given (--out may point anywhere)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs per method; the best is kept")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "raw_redis_ceiling.json")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)

    keys, values, expire = make_rows(args.rows)
    server, redis_info = redis_check.start(args)
    with redis_check.stopping(server):
        client = server.client(socket_timeout=300)  # FLUSHALL of 1M keys on a busy machine takes seconds
        store = OnlineStore.connect(server.url, embedded_dir=server.dir / "unused")
        methods = {
            "a_redis_py_pipeline_set_pxat": lambda: pipelined_set(client, keys, values, expire),
            "b_redis_py_mset": lambda: mset(client, keys, values, expire),
            "c_online_store_write": lambda: online_store_write(store, keys, values, expire),
            "d_server_only_set_pxat": lambda: server_bound(store, keys, values, expire),
            "e_redis_cli_pipe_set_pxat": lambda: redis_cli_pipe(server.port, server.dir, keys, values, expire),
        }
        # Round-robin, best of --repeat: a noisy neighbour slows every method alike instead of only one.
        best = dict.fromkeys(methods, float("inf"))
        for _ in range(args.repeat):
            for name, run in methods.items():
                client.flushall()
                t0 = time.perf_counter()
                elapsed = run() or time.perf_counter() - t0  # (d), (e) time themselves, without encoding
                best[name] = min(best[name], elapsed)
                assert client.dbsize() == args.rows, f"{name} wrote {client.dbsize()} keys, expected {args.rows}"
        results = {name: args.rows / seconds for name, seconds in best.items()}
        assert client.get(keys[-1]) == values[-1]
        version = client.info("server")["redis_version"]
        assert version == redis_info["redis_version"]
        store.close()
        client.close()

    baseline = results["b_redis_py_mset"]
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"{args.rows:,} rows, {VALUE_BYTES}-byte values, chunks of {CHUNK:,}, redis {version}, "
          f"{os.cpu_count()} CPUs, load average {load[0]} (ratios move with load: rerun on a quiet machine)")
    print(f"{'method':34} {'rows/s':>12} {'vs MSET':>8}")
    for name, rate in results.items():
        print(f"{name:34} {rate:12,.0f} {rate / baseline:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "rows": args.rows,
        "value_bytes": VALUE_BYTES,
        "chunk_rows": CHUNK,
        "redis_version": version,
        "redis_server": redis_info["redis_server"],
        "mem_allocator": redis_info["mem_allocator"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15": load,
        "redis_py": redis.__version__,
        "rows_per_second": {k: round(v) for k, v in results.items()},
        "ratio_to_mset": {k: round(v / baseline, 3) for k, v in results.items()},
    }, indent=2) + "\n")
    print(f"wrote {shown(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A steadier 100-entity figure for a loaded machine: bench/online_read.py's raw reader and contenders in one
process, p10 and p50 per repetition (the p10 moves least with other jobs' load).

Syncs `--project` (an already built reference project, e.g. 20k customers) into a private redis-server, keeps
only 100-entity batches whose 800 values are all present, warms up, calls `gc.freeze()`, then runs `--reps`
repetitions of `--calls` calls, each call pairing raw, records and columns in rotating order. Run it with
`FM_ROOT=/path/to/other/checkout` to measure another version of featuremart against the same raw reader.

    python bench/online_read_steady.py --project DIR [--clock cpu]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("FM_ROOT", str(ROOT)))
sys.path.insert(1, str(ROOT))

import duckdb  # noqa: E402
import redis  # noqa: E402

from bench import redis_check  # noqa: E402
from bench.online_read import raw_reader  # noqa: E402
from featuremart import FeatureStore  # noqa: E402


def synced_pairs(project: Path, url: str) -> tuple[FeatureStore, list[dict[str, str]]]:
    """Sync `project` into the server at `url`; a reader on it, and the customer x merchant pairs (of the first
    8,000) whose `fraud_model` values are all present."""
    with FeatureStore(project, redis_url=url) as fs:
        assert fs.sync().status == "success"
    fs = FeatureStore.from_url(url)
    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
    rows = con.sql("select distinct customer_id, merchant_id from main.customer_merchant_pair "
                   "order by 1, 2 limit 8000").fetchall()
    con.close()
    candidates = [{"customer_id": c, "merchant_id": m} for c, m in rows]
    pairs = [e for e, r in zip(candidates, fs.get_online_features(candidates, service="fraud_model"))
             if all(v.status == "present" for v in r.values())]
    return fs, pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this thread's CPU time (what a loaded machine disturbs least: the "
                             "Redis round trip and the time spent waiting for a core are left out)")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    server, info = redis_check.start(args)
    with redis_check.stopping(server):
        fs, pairs = synced_pairs(args.project, server.url)
        batches = [pairs[i:i + 100] for i in range(0, len(pairs) - 99, 100)]
        registry = fs.reader.registry

        def spec(v):
            return (v.name, v.version, v.key_names, v.ttl // timedelta(microseconds=1))

        raw = raw_reader(redis.Redis.from_url(server.url), fs.online.prefix,
                         [spec(registry.view(v)) for v in registry.service("fraud_model").view_names])
        fns = {"raw": raw, "records": lambda b: fs.get_online_features(b, service="fraud_model"),
               "columns": lambda b: fs.get_online_features_columns(b, service="fraud_model")}
        for b in batches[:50]:
            for fn in fns.values():
                fn(b)
        names = list(fns)
        gc.collect()
        gc.freeze()
        clock = time.perf_counter_ns if args.clock == "wall" else time.thread_time_ns
        print(f"{args.clock} clock; redis-server {info['redis_version']}; load average {os.getloadavg()[0]:.2f}; "
              f"{len(batches)} batches of 100 entities", flush=True)
        for rep in range(args.reps):
            times: dict[str, list[int]] = {n: [] for n in names}
            for i in range(args.calls):
                batch = batches[i % len(batches)]
                for j in range(len(names)):
                    name = names[(i + j) % len(names)]
                    t0 = clock()
                    fns[name](batch)
                    times[name].append(clock() - t0)
            q = {n: sorted(v) for n, v in times.items()}

            def at(name: str, x: float) -> float:
                return q[name][int(x * len(q[name]))] / 1000

            print(f"rep {rep + 1}: " + "  ".join(f"{n} p10 {at(n, .1):.0f} p50 {at(n, .5):.0f} µs" for n in names)
                  + "".join(f" | {n}/raw p10 {at(n, .1) / at('raw', .1):.2f} p50 {at(n, .5) / at('raw', .5):.2f}"
                            for n in names[1:]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

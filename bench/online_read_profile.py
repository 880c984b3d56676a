"""Where an online read spends its time: paired wall and CPU p50 ratios per API, and each stage timed alone.

Syncs `--project` (an already built reference project, e.g. 20k customers) into a private redis-server, then:

  ratios: 1 entity x 10 features and 100 entities x `fraud_model`, bench/online_read.py's raw redis-py reader
          and the records, columns and Arrow APIs paired in rotating order, `gc.freeze()` after warm-up,
          p50 / raw p50 per repetition (median [min-max]), wall clock and this thread's CPU time;
  stages: plan lookup, keys, MGET (redis-py's and featuremart's), decode, records, columns, Arrow, each alone
          in CPU µs (median of 5 runs);
  --profile: cProfile of the records reads, top functions by own time.

`FM_ROOT=/path/to/other/checkout` measures another version of featuremart (the stages then need this one's).

    python bench/online_read_profile.py --project DIR [--stages] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("FM_ROOT", str(ROOT)))
sys.path.insert(1, str(ROOT))

import redis  # noqa: E402

from bench import redis_check  # noqa: E402
from bench.online_read import measure, raw_reader  # noqa: E402
from bench.online_read_steady import synced_pairs  # noqa: E402

ONE, FRAUD = {"features": ["customer_spend.*"]}, {"service": "fraud_model"}


def ratios(fns: dict, batches: list, calls: int, reps: int, clock) -> None:
    names = list(fns)
    for batch in batches[:50]:
        for fn in fns.values():
            fn(batch)
    gc.collect()
    gc.freeze()
    p50s: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(reps):
        rep = measure(calls, fns, batches, clock)
        for n in names:
            p50s[n].append(rep[n]["p50_us"])
    for n in names:
        r = [a / b for a, b in zip(p50s[n], p50s[names[0]])]
        print(f"  {n:<8} p50 {statistics.median(p50s[n]):8.1f} µs  ÷ raw {statistics.median(r):.2f} "
              f"[{min(r):.2f}-{max(r):.2f}]", flush=True)


def cpu_us(fn, n: int) -> float:
    runs = []
    for _ in range(5):
        t0 = time.thread_time_ns()
        for _ in range(n):
            fn()
        runs.append((time.thread_time_ns() - t0) / n / 1000)
    return statistics.median(runs)


def stages(fs, b: list, kw: dict, raw, n: int) -> None:
    import hiredis

    reader, store = fs.reader, fs.reader.store
    plan = reader._plan(kw.get("service"), kw.get("features"))
    keys = plan.keys(b)
    values, now = store.mget(keys), time.time_ns() // 1000
    result = plan.decode(b, values, now)
    conn = store._redis.connection_pool.make_connection()

    def hiredis_mget():
        conn.send_packed_command([hiredis.pack_command(("MGET", *keys))])
        return conn.read_response()

    for name, fn in {
        "plan lookup": lambda: reader._plan(kw.get("service"), kw.get("features")),
        "build keys": lambda: plan.keys(b),
        "MGET through redis-py": lambda: store._redis.mget(keys),
        "MGET, hiredis.pack_command + read_response": hiredis_mget,
        "MGET, featuremart (OnlineStore.mget)": lambda: store.mget(keys),
        "decode (statuses, orjson, typing)": lambda: plan.decode(b, values, now),
        "to_records": result.to_records, "to_columns": result.to_columns, "to_arrow": result.to_arrow,
        "whole read, records": lambda: fs.get_online_features(b, **kw),
        "whole read, columns": lambda: fs.get_online_features_columns(b, **kw),
        "whole read, Arrow": lambda: fs.get_online_features_arrow(b, **kw),
        "raw redis-py reader, whole read": lambda: raw(b),
    }.items():
        print(f"  {name:<45} {cpu_us(fn, n):8.1f} µs CPU", flush=True)
    conn.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--stages", action="store_true", help="time each stage alone (this checkout only)")
    parser.add_argument("--profile", action="store_true", help="cProfile the records reads")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    server, info = redis_check.start(args)
    with redis_check.stopping(server):
        fs, pairs = synced_pairs(args.project, server.url)
        shapes = {"1 entity x 10 features": (ONE, [[{"customer_id": p["customer_id"]}] for p in pairs], 3000),
                  "100 entities x fraud_model": (FRAUD, [pairs[i:i + 100] for i in range(0, len(pairs) - 99, 100)],
                                                 1000)}
        registry = fs.reader.registry
        client = redis.Redis.from_url(server.url)

        def spec(name):
            v = registry.view(name)
            return (v.name, v.version, v.key_names, v.ttl // timedelta(microseconds=1))

        raws = {"1 entity x 10 features": raw_reader(client, fs.online.prefix, [spec("customer_spend")]),
                "100 entities x fraud_model": raw_reader(client, fs.online.prefix,
                                                         [spec(v) for v in registry.service("fraud_model").view_names])}
        print(f"redis-server {info['redis_version']}; load average {open('/proc/loadavg').read().split()[:3]}")
        for shape, (kw, batches, calls) in shapes.items():
            fns = {"raw": raws[shape], "records": lambda b, kw=kw: fs.get_online_features(b, **kw),
                   "columns": lambda b, kw=kw: fs.get_online_features_columns(b, **kw),
                   "arrow": lambda b, kw=kw: fs.get_online_features_arrow(b, **kw)}
            for clock_name, clock in (("wall", time.perf_counter_ns), ("cpu", time.thread_time_ns)):
                print(f"{shape}, {clock_name} clock, {args.reps} x {calls} paired calls")
                ratios(fns, batches, calls, args.reps, clock)
            if args.stages:
                print(f"{shape}, stages")
                stages(fs, batches[0], kw, raws[shape], calls // 10)
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                for i in range(calls * 5):
                    fs.get_online_features(batches[i % len(batches)], **kw)
                profile.disable()
                pstats.Stats(profile).sort_stats("tottime").print_stats(15)
        print(f"load average {open('/proc/loadavg').read().split()[:3]}")
        fs.close()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

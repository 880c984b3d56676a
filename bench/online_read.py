"""Online read latency: featuremart's Python API against a careful hand-written redis-py reader of the same keys.

Generates the reference project at `--customers` customers in a temp dir (or reuses `--project`), runs
`dbt build` and a real `featuremart sync` into a private redis-server started here (never a server of yours;
its version is printed and checked, see bench/redis_check.py), then times two shapes:

  one:   1 entity  x 10 features (`customer_spend.*`)
  batch: 100 entities x the `fraud_model` service (3 views, 8 features)

each through featuremart's records (`get_online_features`), columns and Arrow APIs, against `raw redis-py`: keys
built with f-strings, one redis-py `MGET`, each value parsed by the same JSON parser featuremart uses (orjson), the
view's ttl applied to the event time, and the event time converted to an aware UTC datetime (`from_us`).
`raw hiredis` is the same reader with its MGET sent like featuremart's (`direct_mget`: no redis-py command
path), a second baseline showing featuremart's own overhead; the bars are against `raw redis-py`.
featuremart also fetches the registry id in that MGET, checks key types, types every value and shapes the
output (records of FeatureValue, columns, or an Arrow table).

Every call of every contender is paired: the contenders run one after the other on the same batch, in an order
that rotates from call to call, so they share the machine's noise. `--reps` repetitions of `--calls` calls
each give per-repetition p50/p99 ratios; the table shows their median and [min-max]. Prints the Redis server
used, the machine's load average, and writes `bench/results/online_read.json`.

    python bench/online_read.py                         # 50k customers, 5 x 2,000 calls per shape
    python bench/online_read.py --customers 1000000     # the figures in docs/serving.md
    python bench/online_read.py --project DIR --arrow-ref main   # + the Arrow API as main reads it, paired
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import hiredis  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402

from bench import redis_check  # noqa: E402
from featuremart import FeatureStore  # noqa: E402
from featuremart.online.codec import from_us  # noqa: E402
from tests.conftest import build_reference_project  # noqa: E402

#: featuremart records against raw, median over repetitions: p50 and p99
BAR_P50, BAR_P99 = 1.10, 1.30


def sample_pairs(project: Path, n: int, seed: int = 1) -> list[dict[str, str]]:
    """Customer x merchant pairs present in the data (so every view has a value to read)."""
    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
    try:
        rows = con.sql("select distinct customer_id, merchant_id from main.customer_merchant_pair").fetchall()
    finally:
        con.close()
    random.Random(seed).shuffle(rows)
    return [{"customer_id": c, "merchant_id": m} for c, m in rows[:n]]


def customers_in(project: Path) -> int:
    """How many customers the project's built data holds (what a `--project` run measures)."""
    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
    try:
        return con.sql("select count(distinct customer_id) from main.customer_profile").fetchall()[0][0]
    finally:
        con.close()


def direct_mget(client: redis.Redis):
    """MGET without redis-py's command path: `hiredis.pack_command` sent on one connection of `client`, the reply
    parsed by its hiredis reader. featuremart's OnlineStore reads this way; a raw reader doing the same shows
    what is left of featuremart's overhead once redis-py's per-call cost (about 20 µs) is out of both."""
    conn = client.connection_pool.make_connection()

    def mget(keys):
        conn.send_packed_command([hiredis.pack_command(("MGET", *keys))])
        return conn.read_response()

    return mget


def raw_reader(client: redis.Redis, prefix: str, views: list[tuple[str, str, tuple[str, ...], int]], mget=None):
    """The careful hand-written read: keys by f-string, one MGET (redis-py's, or `mget`), orjson, the ttl rule,
    event time to datetime. Returns one row `[event_ts, value...]` per key, None where absent or past the ttl."""
    loads = orjson.loads
    mget = mget or client.mget

    def read(entities):
        keys = [f"{prefix}:{{{','.join(f'{k}={e[k]}' for k in key_names)}}}:{view}:{version}"
                if len(key_names) > 1 else f"{prefix}:{{{key_names[0]}={e[key_names[0]]}}}:{view}:{version}"
                for e in entities for view, version, key_names, _ in views]
        now_us = time.time_ns() // 1000
        thresholds = [now_us - ttl_us for *_, ttl_us in views]
        nv = len(views)
        out = []
        for i, raw in enumerate(mget(keys)):
            if raw is None:
                out.append(None)
                continue
            row = loads(raw)
            if row[0] < thresholds[i % nv]:
                out.append(None)
                continue
            row[0] = from_us(row[0])
            out.append(row)
        return out

    return read


def reader_at(ref: str):
    """featuremart/online/reader.py as it is in git `ref`, imported as a module of its own (its `OnlineReader` on
    this checkout's store reads with that ref's plans and results; the bench checks it gives the same table)."""
    import importlib.util
    import subprocess

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:featuremart/online/reader.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="fm-reader-")) / "reader_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("reader_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0  # µs


def measure(calls: int, contenders: dict, batches: list, clock=time.perf_counter_ns) -> dict[str, dict[str, float]]:
    """One repetition: every call runs each contender once on the same batch, the order rotating from call to
    call; p50/p99/mean in µs per contender (of `clock`: wall time, or e.g. `time.thread_time_ns`)."""
    names = list(contenders)
    fns = list(contenders.values())
    times: list[list[int]] = [[] for _ in names]
    n = len(fns)
    for i in range(calls):
        batch = batches[i % len(batches)]
        for j in range(n):
            c = (i + j) % n
            fn = fns[c]
            t0 = clock()
            fn(batch)
            times[c].append(clock() - t0)
    out = {}
    for name, ns in zip(names, times):
        ns.sort()
        out[name] = {"p50_us": round(percentile(ns, 0.50), 1), "p99_us": round(percentile(ns, 0.99), 1),
                     "mean_us": round(sum(ns) / len(ns) / 1000.0, 1)}
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=50_000, help="customers in the generated data")
    parser.add_argument("--calls", type=int, default=2_000, help="timed calls per repetition, shape and contender")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (each gives one p50 and p99 ratio)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="call gc.freeze() after the warm-up (what a long-running service can do)")
    parser.add_argument("--project", type=Path, default=None,
                        help="an already built reference project to reuse (skips generate + dbt build)")
    parser.add_argument("--arrow-ref", default=None,
                        help="also time the Arrow API as it is in this git ref (e.g. main): that ref's "
                             "featuremart/online/reader.py reading the same store, a paired before/after of the read "
                             "and its Arrow shaping")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time each call by the wall clock (the bars), or by this thread's CPU time (steadier on a "
                             "loaded machine: the Redis round trip and the waits for a core are left out)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "online_read.json")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    server, redis_info = redis_check.start(args)

    with tempfile.TemporaryDirectory(prefix="fm-bench-") as tmp, redis_check.stopping(server):
        started = time.monotonic()
        project = args.project or build_reference_project(Path(tmp) / "project", customers=args.customers)
        built = time.monotonic() - started
        customers = customers_in(project)
        with FeatureStore(project, redis_url=server.url) as fs:
            run = fs.sync()
            assert run.status == "success", run.to_json()
        synced = time.monotonic() - started - built
        keys_total = server.client().dbsize()
        print(f"data: {customers:,} customers ({'reused ' + str(project) if args.project else 'generated'}), "
              f"built in {built:.0f}s, synced in {synced:.1f}s ({keys_total:,} keys)")

        fs = FeatureStore.from_url(server.url)
        registry = fs.reader.registry
        client = redis.Redis.from_url(server.url)
        prefix = fs.online.prefix
        # Pairs whose three views all have a value (the generated data has pairs older than a view's ttl).
        candidates = sample_pairs(project, 30_000)
        pairs = [entity for start in range(0, len(candidates), 1000)
                 for entity, record in zip(candidates[start:start + 1000], fs.get_online_features(
                     candidates[start:start + 1000], service="fraud_model"))
                 if all(v.status == "present" for v in record.values())][:20_000]
        one_batches = [[{"customer_id": p["customer_id"]}] for p in pairs]
        batches_100 = [pairs[i:i + 100] for i in range(0, len(pairs) - 99, 100)]

        def spec(view):
            return (view.name, view.version, view.key_names, view.ttl // timedelta(microseconds=1))

        spend = registry.view("customer_spend")
        fraud_views = [registry.view(v) for v in registry.service("fraud_model").view_names]
        raw_one = raw_reader(client, prefix, [spec(spend)])
        raw_fraud = raw_reader(client, prefix, [spec(v) for v in fraud_views])
        direct = direct_mget(client)
        hiredis_one = raw_reader(client, prefix, [spec(spend)], direct)
        hiredis_fraud = raw_reader(client, prefix, [spec(v) for v in fraud_views], direct)
        one = {"features": ["customer_spend.*"]}
        fraud = {"service": "fraud_model"}

        # Sanity: both read the same, and everything sampled is present.
        [record] = fs.get_online_features(one_batches[0], **one)
        assert len(record) == 10 and all(v.status == "present" for v in record.values()), record
        assert [v.value for v in record.values()] == raw_one(one_batches[0])[0][1:]
        result = fs.read_online_features(batches_100[0], **fraud)
        assert result.status_counts()["present"] == 800, result.status_counts()
        assert sum(r is not None for r in raw_fraud(batches_100[0])) == 300
        assert hiredis_fraud(batches_100[0]) == raw_fraud(batches_100[0])

        shapes = {
            "1 entity x 10 features": ({
                "raw redis-py": raw_one,
                "raw hiredis": hiredis_one,
                "featuremart records": lambda b: fs.get_online_features(b, **one),
                "featuremart columns": lambda b: fs.get_online_features_columns(b, **one),
                "featuremart arrow": lambda b: fs.get_online_features_arrow(b, **one),
            }, one_batches),
            "100 entities x fraud_model (3 views)": ({
                "raw redis-py": raw_fraud,
                "raw hiredis": hiredis_fraud,
                "featuremart records": lambda b: fs.get_online_features(b, **fraud),
                "featuremart columns": lambda b: fs.get_online_features_columns(b, **fraud),
                "featuremart arrow": lambda b: fs.get_online_features_arrow(b, **fraud),
            }, batches_100),
        }
        if args.arrow_ref:
            at_ref = reader_at(args.arrow_ref).OnlineReader(fs.reader.store)
            for (contenders, batches), kw in zip(shapes.values(), (one, fraud)):
                contenders[f"arrow @{args.arrow_ref}"] = lambda b, kw=kw: at_ref.read(b, **kw).to_arrow()
                assert at_ref.read(batches[0], **kw).to_arrow().equals(fs.get_online_features_arrow(batches[0], **kw))
        for contenders, batches in shapes.values():  # warm up: plans cached, connections open, pyarrow loaded
            for fn in contenders.values():
                for batch in batches[:200]:
                    fn(batch)
        gc.collect()
        if args.gc_freeze:
            gc.freeze()
        reps: dict[str, list[dict]] = {shape: [] for shape in shapes}
        for rep in range(args.reps):
            for shape, (contenders, batches) in shapes.items():
                reps[shape].append(measure(args.calls, contenders, batches,
                                           time.perf_counter_ns if args.clock == "wall" else time.thread_time_ns))
            print(f"repetition {rep + 1}/{args.reps} done", flush=True)
        fs.close()
        client.close()

    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"\n{args.reps} repetitions x {args.calls:,} paired calls; load average before {load_before[0]}, "
          f"after {load_after[0]} ({os.cpu_count()} CPUs); redis-server {redis_info['redis_version']}"
          f"{'; gc.freeze() after warm-up' if args.gc_freeze else ''}; {args.clock} clock")
    print(f"{'shape':<38} {'reader':<20} {'p50 µs':>8} {'p99 µs':>8}  {'p50 ×raw [range]':<20} "
          f"{'p99 ×raw [range]':<20} {'p50 ×hiredis [range]':<20} {'p99 ×hiredis [range]':<20}")
    summary: dict[str, dict] = {}
    ok = True
    for shape, runs in reps.items():
        summary[shape] = {}
        for name in runs[0]:
            p50s = [r[name]["p50_us"] for r in runs]
            p99s = [r[name]["p99_us"] for r in runs]
            row = {"p50_us": spread(p50s), "p99_us": spread(p99s),
                   "p50_ratio": spread([r[name]["p50_us"] / r["raw redis-py"]["p50_us"] for r in runs]),
                   "p99_ratio": spread([r[name]["p99_us"] / r["raw redis-py"]["p99_us"] for r in runs]),
                   "p50_ratio_hiredis": spread([r[name]["p50_us"] / r["raw hiredis"]["p50_us"] for r in runs]),
                   "p99_ratio_hiredis": spread([r[name]["p99_us"] / r["raw hiredis"]["p99_us"] for r in runs])}
            summary[shape][name] = row
            if name.startswith("featuremart"):  # records, columns and Arrow are held to the same bars
                ok &= row["p50_ratio"]["median"] <= BAR_P50 and row["p99_ratio"]["median"] <= BAR_P99

            def cell(x):
                return f"{x['median']:.2f} [{x['min']:.2f}-{x['max']:.2f}]"

            print(f"{shape:<38} {name:<20} {row['p50_us']['median']:>8.1f} {row['p99_us']['median']:>8.1f}  "
                  f"{cell(row['p50_ratio']):<20} {cell(row['p99_ratio']):<20} "
                  f"{cell(row['p50_ratio_hiredis']):<20} {cell(row['p99_ratio_hiredis']):<20}")
    print(f"\nbar: featuremart records, columns and Arrow each at most {BAR_P50}x raw at p50 and {BAR_P99}x at p99 (medians): "
          f"{'met' if ok else 'NOT met'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "customers": customers, "keys": keys_total, "reps": args.reps, "calls_per_rep": args.calls,
        "gc_freeze": args.gc_freeze, "clock": args.clock, "bar_p50": BAR_P50, "bar_p99": BAR_P99, "bar_met": ok,
        "load_average_before": load_before, "load_average_after": load_after, "cpus": os.cpu_count(),
        "python": platform.python_version(), "redis_py": redis.__version__, "machine": platform.machine(),
        **redis_info, "summary": summary, "repetitions": reps,
    }, indent=2) + "\n")
    print(f"wrote {args.out.resolve().relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Online read latency: featuremart's Python API against raw redis-py reading the same keys.

Generates the reference project at `--customers` customers in a temp dir, runs `dbt build` and a real
`featuremart sync` into a private redis-server started here (never a server of yours), then times two shapes,
alternating featuremart and raw calls so both see the same machine noise:

  one:   1 entity  x 10 features (`customer_spend.*`), records of FeatureValue
  batch: 100 entities x the `fraud_model` service (3 views, 8 features); records, and the Arrow table

raw = build the same keys with f-strings, one redis-py `MGET`, `json.loads` of each value and the event time
converted to an aware UTC datetime (the same `from_us` featuremart uses) — the habit featuremart replaces.
featuremart also fetches the registry id in that MGET, checks ttls, types every value and shapes the output.

Prints a table and writes `bench/results/online_read.json`.

    python bench/online_read.py                       # 50k customers, 10,000 calls per shape
    python bench/online_read.py --customers 1000000   # the figure in docs/serving.md
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import redis  # noqa: E402

from featuremart import FeatureStore  # noqa: E402
from featuremart.online.codec import from_us  # noqa: E402
from tests.conftest import build_reference_project  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BAR = 1.5


def sample_pairs(project: Path, n: int, seed: int = 1) -> list[dict[str, str]]:
    """Customer x merchant pairs present in the data (so every view has a value to read)."""
    con = duckdb.connect(str(project / "target" / "featuremart.duckdb"), read_only=True)
    try:
        rows = con.sql("select distinct customer_id, merchant_id from main.customer_merchant_pair").fetchall()
    finally:
        con.close()
    random.Random(seed).shuffle(rows)
    return [{"customer_id": c, "merchant_id": m} for c, m in rows[:n]]


def raw_reader(client: redis.Redis, prefix: str, views: list[tuple[str, str, tuple[str, ...]]]):
    """The hand-written read: keys by f-string, MGET, json.loads, event time to datetime."""
    loads = json.loads

    def read(entities):
        keys = [f"{prefix}:{{{','.join(f'{k}={e[k]}' for k in key_names)}}}:{view}:{version}"
                if len(key_names) > 1 else f"{prefix}:{{{key_names[0]}={e[key_names[0]]}}}:{view}:{version}"
                for e in entities for view, version, key_names in views]
        out = []
        for raw in client.mget(keys):
            if raw is None:
                out.append(None)
                continue
            row = loads(raw)
            row[0] = from_us(row[0])
            out.append(row)
        return out

    return read


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0  # µs


def measure(calls: int, contenders: dict, batches: list) -> dict[str, dict[str, float]]:
    """Time each contender on the same batches, interleaved; p50/p99 in µs."""
    times = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up: plans cached, connections open
        for batch in batches[:200]:
            fn(batch)
    gc.collect()
    clock = time.perf_counter_ns
    for i in range(calls):
        batch = batches[i % len(batches)]
        for name, fn in contenders.items():
            t0 = clock()
            fn(batch)
            times[name].append(clock() - t0)
    out = {}
    for name, ns in times.items():
        ns.sort()
        out[name] = {"p50_us": round(percentile(ns, 0.50), 1), "p99_us": round(percentile(ns, 0.99), 1),
                     "mean_us": round(sum(ns) / len(ns) / 1000.0, 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=50_000, help="customers in the generated data")
    parser.add_argument("--calls", type=int, default=10_000, help="timed calls per shape and contender")
    parser.add_argument("--project", type=Path, default=None,
                        help="an already built reference project to reuse (skips generate + dbt build)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "online_read.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fm-bench-") as tmp, RedisServer() as server:
        started = time.monotonic()
        project = args.project or build_reference_project(Path(tmp) / "project", customers=args.customers)
        built = time.monotonic() - started
        with FeatureStore(project, redis_url=server.url) as fs:
            run = fs.sync()
            assert run.status == "success", run.to_json()
        synced = time.monotonic() - started - built
        print(f"data: {args.customers:,} customers, built in {built:.0f}s, synced in {synced:.1f}s "
              f"({server.client().dbsize():,} keys)")

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

        spend = registry.view("customer_spend")
        fraud_views = [registry.view(v) for v in registry.service("fraud_model").view_names]
        raw_one = raw_reader(client, prefix, [(spend.name, spend.version, spend.key_names)])
        raw_fraud = raw_reader(client, prefix, [(v.name, v.version, v.key_names) for v in fraud_views])
        one_features = ["customer_spend.*"]

        # Sanity: both read the same, and everything sampled is present.
        [record] = fs.get_online_features(one_batches[0], features=one_features)
        assert len(record) == 10 and all(v.status == "present" for v in record.values()), record
        result = fs.read_online_features(batches_100[0], service="fraud_model")
        assert result.status_counts()["present"] == 800, result.status_counts()
        assert sum(r is not None for r in raw_fraud(batches_100[0])) == 300

        shapes = {
            "1 entity x 10 features": measure(args.calls, {
                "raw redis-py": raw_one,
                "featuremart records": lambda b: fs.get_online_features(b, features=one_features),
            }, one_batches),
            "100 entities x fraud_model (3 views)": measure(args.calls, {
                "raw redis-py": raw_fraud,
                "featuremart records": lambda b: fs.get_online_features(b, service="fraud_model"),
                "featuremart arrow": lambda b: fs.get_online_features_arrow(b, service="fraud_model"),
            }, batches_100),
        }
        fs.close()
        client.close()

    print(f"\n{'shape':<38} {'reader':<22} {'p50 µs':>8} {'p99 µs':>8} {'p50 ×raw':>9} {'p99 ×raw':>9}")
    ok = True
    for shape, results in shapes.items():
        raw = results["raw redis-py"]
        for name, r in results.items():
            r["p50_ratio"] = round(r["p50_us"] / raw["p50_us"], 2)
            r["p99_ratio"] = round(r["p99_us"] / raw["p99_us"], 2)
            if name == "featuremart records":
                ok &= r["p50_ratio"] <= BAR and r["p99_ratio"] <= BAR
            print(f"{shape:<38} {name:<22} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} "
                  f"{r['p50_ratio']:>9.2f} {r['p99_ratio']:>9.2f}")
    print(f"\nbar: featuremart records at most {BAR}x raw at p50 and p99: {'met' if ok else 'NOT met'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "customers": args.customers, "calls_per_shape": args.calls, "bar": BAR, "bar_met": ok,
        "python": platform.python_version(), "redis_py": redis.__version__, "machine": platform.machine(),
        "shapes": shapes,
    }, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Served-feature logging overhead: online read latency with logging on against the same reads with it off.

Generates the reference project at `--customers` customers in a temp dir (or reuses `--project`), runs
`dbt build` and a real `featuremart sync` into a private redis-server started here, then times the
`fraud_model` service (3 views, 8 features) through `get_online_features` for two shapes:

  1 entity     and     100 entities

Each repetition runs two blocks of `--calls` calls per shape, one with a `ServedLog` attached (every read
logged, written as Parquet to a temp dir by its background thread, flushing every `--flush-seconds`, 2 s as
in production: several flushes land inside a block) and one without; the order of the two blocks alternates from
repetition to repetition and from shape to shape, so both share the machine's noise. A block's p50 and p99
are compared with its partner's: the table shows the median and [min-max] of the ratios over `--reps`
repetitions. The final flush of a block (closing the log) is not timed; the flushes during it are.

    python bench/logging_overhead.py                        # 20k customers, 7 x 3,000 calls per shape and block
    python bench/logging_overhead.py --project DIR --reps 9
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.online_read import customers_in, percentile, sample_pairs, spread  # noqa: E402
from featuremart import FeatureStore  # noqa: E402
from featuremart.servedlog import ServedLog  # noqa: E402
from tests.conftest import build_reference_project  # noqa: E402

#: logging on against off, median over repetitions, p99 (the issue's bar)
BAR_P99 = 1.10


def block(read, batches: list, calls: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    times = []
    for i in range(calls):
        batch = batches[i % len(batches)]
        t0 = clock()
        read(batch)
        times.append(clock() - t0)
    times.sort()
    return {"p50_us": round(percentile(times, 0.50), 1), "p99_us": round(percentile(times, 0.99), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000, help="customers in the generated data")
    parser.add_argument("--calls", type=int, default=3_000, help="timed calls per block")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (each gives one ratio per shape)")
    parser.add_argument("--flush-seconds", type=float, default=2.0,
                        help="the log's flush interval (default 2.0, ServedLog's default; several flushes per block)")
    parser.add_argument("--project", type=Path, default=None, help="an already built reference project to reuse")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "logging_overhead.json")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    server, redis_info = redis_check.start(args)

    with tempfile.TemporaryDirectory(prefix="fm-bench-log-") as tmp, redis_check.stopping(server):
        project = args.project or build_reference_project(Path(tmp) / "project", customers=args.customers)
        with FeatureStore(project, redis_url=server.url) as fs:
            assert fs.sync().status == "success"
        customers = customers_in(project)
        fs = FeatureStore.from_url(server.url)
        candidates = sample_pairs(project, 20_000)
        pairs = [entity for start in range(0, len(candidates), 1000)
                 for entity, record in zip(candidates[start:start + 1000], fs.get_online_features(
                     candidates[start:start + 1000], service="fraud_model"))
                 if all(v.status == "present" for v in record.values())][:10_000]
        shapes = {"1 entity": [[p] for p in pairs], "100 entities": [pairs[i:i + 100]
                                                                     for i in range(0, len(pairs) - 99, 100)]}

        def read(batch):
            return fs.get_online_features(batch, service="fraud_model")

        for batches in shapes.values():  # warm up: plan cached, connection open, pyarrow loaded (by a log)
            warm = ServedLog(Path(tmp) / "warm", services="all").attach(fs.reader)
            for batch in batches[:300]:
                read(batch)
            warm.close()
            fs.reader.served_log = None
        gc.collect()

        reps: dict[str, list[dict]] = {shape: [] for shape in shapes}
        for rep in range(args.reps):
            for s, (shape, batches) in enumerate(shapes.items()):
                result: dict[str, dict] = {}
                order = ("off", "on") if (rep + s) % 2 == 0 else ("on", "off")
                for mode in order:
                    log = None
                    if mode == "on":
                        log = ServedLog(Path(tmp) / "logs" / f"{rep}-{s}", services="all",
                                        flush_seconds=args.flush_seconds).attach(fs.reader)
                    gc.collect()
                    result[mode] = block(read, batches, args.calls)
                    if log is not None:
                        during = log.stats()
                        log.close()
                        fs.reader.served_log = None
                        stats = log.stats()
                        assert stats.dropped_rows == 0 and stats.written_rows == stats.logged_rows, stats
                        result["files_during_block"] = during.files
                        result["rows_logged"] = stats.logged_rows
                result["order"] = list(order)
                reps[shape].append(result)
            print(f"repetition {rep + 1}/{args.reps} done", flush=True)
        fs.close()

    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"\n{args.reps} repetitions x {args.calls:,} calls per block; flush every {args.flush_seconds}s; load "
          f"average before {load_before[0]}, after {load_after[0]} ({os.cpu_count()} CPUs); redis-server "
          f"{redis_info['redis_version']}")
    print(f"{'shape':<14} {'off p50':>8} {'on p50':>8} {'off p99':>8} {'on p99':>8}  {'p50 on/off [range]':<20} "
          f"{'p99 on/off [range]':<20} {'flushes/block':>13}")
    summary: dict[str, dict] = {}
    ok = True
    for shape, runs in reps.items():
        row = {
            "off_p50_us": spread([r["off"]["p50_us"] for r in runs]),
            "on_p50_us": spread([r["on"]["p50_us"] for r in runs]),
            "off_p99_us": spread([r["off"]["p99_us"] for r in runs]),
            "on_p99_us": spread([r["on"]["p99_us"] for r in runs]),
            "p50_ratio": spread([r["on"]["p50_us"] / r["off"]["p50_us"] for r in runs]),
            "p99_ratio": spread([r["on"]["p99_us"] / r["off"]["p99_us"] for r in runs]),
            "files_during_block": statistics.median(r["files_during_block"] for r in runs),
        }
        summary[shape] = row
        ok &= row["p99_ratio"]["median"] <= BAR_P99

        def cell(x):
            return f"{x['median']:.2f} [{x['min']:.2f}-{x['max']:.2f}]"

        print(f"{shape:<14} {row['off_p50_us']['median']:>8.1f} {row['on_p50_us']['median']:>8.1f} "
              f"{row['off_p99_us']['median']:>8.1f} {row['on_p99_us']['median']:>8.1f}  {cell(row['p50_ratio']):<20} "
              f"{cell(row['p99_ratio']):<20} {row['files_during_block']:>13}")
    print(f"\nbar: p99 with logging at most {BAR_P99}x without (median of the paired ratios): "
          f"{'met' if ok else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "customers": customers, "reps": args.reps, "calls_per_block": args.calls,
        "flush_seconds": args.flush_seconds, "bar_p99": BAR_P99, "bar_met": ok, "load_average_before": load_before,
        "load_average_after": load_after, "cpus": os.cpu_count(), "python": platform.python_version(),
        **redis_info, "summary": summary, "repetitions": reps}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

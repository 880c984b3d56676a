"""Served-feature logging overhead: online read latency with logging on against the same reads with it off.

Generates the reference project at `--customers` customers in a temp dir (or reuses `--project`), runs
`dbt build` and a real `featuremart sync` into a private redis-server started here, then times the
`fraud_model` service (3 views, 8 features) through `get_online_features` for two shapes:

  1 entity     and     100 entities

Each repetition runs one block of calls per shape and contender (`--calls` 100-entity calls, `--calls-1`
1-entity calls, so that each block lasts seconds): "off" (no log), "on" (a `ServedLog` attached: every read
logged, its spool thread writing a segment to a temp dir every `--flush-seconds`, 2 s as in production, so that
writes land inside a block), with `--discard` "on-discard" (the same log, its spool thread taking the buffer and
writing nothing: the reading process's share alone) and, with `--compare-ref REF`, "on@REF": the `ServedLog` of
featuremart/servedlog/writer.py at git REF, loaded from git (e.g. the writer process this one replaced). The order of the contenders rotates from repetition to repetition and from shape to shape, so all
share the machine's noise. A block's p50 and p99 are compared with the "off" block of the same repetition: the
table shows the median and [min-max] of the ratios over `--reps` repetitions. The final flush of a block
(closing the log) is not timed; the writes during it are. "writer capacity" is the block's wall time over the
CPU time the log's writer (the spool thread; REF's writer process) spent on the block's rows (read from /proc after
a final flush): how many times the reader's full-speed row rate it could take. After each "on" block the
block's spool is exported (`featuremart logs export`, untimed): its rows per CPU-second are reported, the cost
moved off the serving path.

    python bench/logging_overhead.py                        # 20k customers, 7 repetitions
    python bench/logging_overhead.py --project DIR --reps 5 --discard --compare-ref 133f49a
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.online_read import customers_in, percentile, sample_pairs, spread  # noqa: E402
from featuremart import FeatureStore  # noqa: E402
from featuremart.servedlog import ServedLog, export_logs  # noqa: E402
from tests.conftest import build_reference_project  # noqa: E402

#: logging on against off, median over repetitions, p99 (the issue's bar)
BAR_P99 = 1.10
#: the writer process's capacity (block wall time / its CPU time for the block's rows), at least, in every block
BAR_CAPACITY = 2.0


def block(read, batches: list, calls: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    times = []
    start = clock()
    for i in range(calls):
        batch = batches[i % len(batches)]
        t0 = clock()
        read(batch)
        times.append(clock() - t0)
    wall = (clock() - start) / 1e9
    times.sort()
    return {"p50_us": round(percentile(times, 0.50), 1), "p99_us": round(percentile(times, 0.99), 1), "wall_s": wall}


def cpu_seconds(log) -> float:
    """User + system CPU time so far of a log's writer: its spool thread (/proc/self/task/TID/stat), or the writer
    process of a log from before (/proc/PID/stat)."""
    process = getattr(log, "_process", None)
    where = f"/proc/{process.pid}/stat" if process is not None else f"/proc/self/task/{log._thread.native_id}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_at(ref: str, tmp: Path) -> type:
    """The ServedLog class of featuremart/servedlog/writer.py at git `ref`, loaded as a module of its own. The
    package at `ref` is extracted under `tmp`, so that a writer process it starts runs the sink of `ref` too
    (the two speak a protocol of their own)."""
    dest = tmp / f"at-{ref}"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "featuremart"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    text = (dest / "featuremart" / "servedlog" / "writer.py").read_text()
    module = types.ModuleType(f"servedlog_writer_at_{ref}")
    sys.modules[module.__name__] = module  # dataclasses and NamedTuple look their module up
    module.__file__ = str(dest / "featuremart" / "servedlog" / "writer.py")  # its writer process runs REF's sink
    exec(compile(text, f"{ref}:featuremart/servedlog/writer.py", "exec"), module.__dict__)
    # its writer process must import REF's package: `python -m` puts the working directory first on sys.path
    module.subprocess = types.SimpleNamespace(Popen=functools.partial(subprocess.Popen, cwd=str(dest)),
                                              DEVNULL=subprocess.DEVNULL)
    base = module.ServedLog
    if "request_id" in inspect.signature(base.record).parameters:
        return base

    class Before(base):  # the reader passes the request id now; a writer from before took it from a contextvar
        def record(self, result, stored, service, features, now_us, request_id=None):
            base.record(self, result, stored, service, features, now_us)

    return Before


class Discarding(ServedLog):
    """This log with a spool thread that takes the buffer, counts its rows written and writes nothing."""

    def _spool(self) -> bool:
        with self._lock:
            rows, self._outbox, self._outbox_rows = self._outbox_rows, bytearray(), 0
            self._held -= rows
            self._counts["written"] += rows
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000, help="customers in the generated data")
    parser.add_argument("--calls", type=int, default=3_000, help="timed 100-entity calls per block")
    parser.add_argument("--calls-1", type=int, default=20_000, help="timed 1-entity calls per block")
    parser.add_argument("--compare-ref", default=None,
                        help="also time the ServedLog of this git ref (e.g. the commit before the writer process)")
    parser.add_argument("--discard", action="store_true",
                        help="also time 'on-discard': this log with a spool thread that writes nothing, the "
                             "reading process's share of the cost alone")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the run (default Python's 0.005 s): a tail that moves with "
                             "it is a thread of the reading process holding the GIL")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (each gives one ratio per shape)")
    parser.add_argument("--flush-seconds", type=float, default=2.0,
                        help="the log's flush interval (default 2.0, ServedLog's default; several flushes per block)")
    parser.add_argument("--project", type=Path, default=None, help="an already built reference project to reuse")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "logging_overhead.json")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
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

        contenders = {"off": None, "on": ServedLog}
        if args.discard:
            contenders["on-discard"] = Discarding
        if args.compare_ref:
            contenders[f"on@{args.compare_ref}"] = writer_at(args.compare_ref, Path(tmp))
        names = list(contenders)
        calls = {"1 entity": args.calls_1, "100 entities": args.calls}
        reps: dict[str, list[dict]] = {shape: [] for shape in shapes}
        for rep in range(args.reps):
            for s, (shape, batches) in enumerate(shapes.items()):
                result: dict[str, dict] = {}
                k = (rep + s) % len(names)
                order = names[k:] + names[:k]
                for mode in order:
                    log = None
                    if contenders[mode] is not None:
                        log = contenders[mode](Path(tmp) / "logs" / f"{rep}-{s}-{mode}", services="all",
                                               flush_seconds=args.flush_seconds).attach(fs.reader)
                        log.flush()  # started (a writer process has imported pyarrow) before the clock runs
                        writer_cpu = cpu_seconds(log)
                    gc.collect()
                    result[mode] = block(read, batches, calls[shape])
                    if log is not None:
                        during = log.stats()
                        log.flush(timeout=600)  # untimed: the writer's CPU for all of the block's rows
                        writer_cpu = cpu_seconds(log) - writer_cpu
                        # how many times the reader's row rate the writer could take: block time / its CPU time
                        result[mode]["writer_cpu_s"] = writer_cpu
                        result[mode]["writer_capacity"] = result[mode]["wall_s"] / max(writer_cpu, 0.01)
                        log.close()
                        fs.reader.served_log = None
                        stats = log.stats()
                        result[mode].update(files_during_block=during.files, rows_logged=stats.logged_rows,
                                            rows_written=stats.written_rows, rows_dropped=stats.dropped_rows)
                        if mode == "on":  # the Parquet work, now off the serving path: untimed, its CPU counted
                            cpu = time.process_time()
                            exported = export_logs(log.directory).rows
                            result[mode]["export_rows_per_cpu_s"] = exported / max(time.process_time() - cpu, 1e-3)
                result["order"] = order
                reps[shape].append(result)
            print(f"repetition {rep + 1}/{args.reps} done, load average {os.getloadavg()[0]:.2f}", flush=True)
        fs.close()

    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"\n{args.reps} repetitions x {args.calls_1:,} (1 entity) / {args.calls:,} (100 entities) calls per block; "
          f"flush every {args.flush_seconds}s; load average before {load_before[0]}, after {load_after[0]} "
          f"({os.cpu_count()} CPUs); redis-server {redis_info['redis_version']}")
    print(f"{'shape':<14} {'contender':<14} {'p50 us':>9} {'p99 us':>9}  {'p50 /off [range]':<20} "
          f"{'p99 /off [range]':<20} {'files/block':>11} {'dropped':>8}  writer capacity x reader [range]")
    summary: dict[str, dict] = {}
    ok = True

    def cell(x):
        return f"{x['median']:.2f} [{x['min']:.2f}-{x['max']:.2f}]"

    for shape, runs in reps.items():
        for mode in names:
            row = {q: spread([r[mode][q] for r in runs]) for q in ("p50_us", "p99_us")}
            if mode != "off":
                row.update(p50_ratio=spread([r[mode]["p50_us"] / r["off"]["p50_us"] for r in runs]),
                           p99_ratio=spread([r[mode]["p99_us"] / r["off"]["p99_us"] for r in runs]),
                           files_during_block=statistics.median(r[mode]["files_during_block"] for r in runs),
                           writer_capacity=spread([r[mode]["writer_capacity"] for r in runs]),
                           writer_rows_per_cpu_s=spread([r[mode]["rows_written"] / max(r[mode]["writer_cpu_s"], 0.01)
                                                         for r in runs]),
                           reader_rows_per_s=spread([r[mode]["rows_logged"] / r[mode]["wall_s"] for r in runs]),
                           rows_dropped=sum(r[mode]["rows_dropped"] for r in runs))
            summary[f"{shape} {mode}"] = row
            if mode == "on":  # a log that dropped rows did less work than it should: not a pass
                ok &= (row["p99_ratio"]["median"] <= BAR_P99 and row["rows_dropped"] == 0
                       and row["writer_capacity"]["min"] >= BAR_CAPACITY)
            print(f"{shape:<14} {mode:<14} {row['p50_us']['median']:>9.1f} {row['p99_us']['median']:>9.1f}  "
                  + (f"{cell(row['p50_ratio']):<20} {cell(row['p99_ratio']):<20} {row['files_during_block']:>11} "
                     f"{row['rows_dropped']:>8}  {cell(row['writer_capacity'])}" if mode != "off" else ""))
    for shape, runs in reps.items():
        rates = [r["on"]["export_rows_per_cpu_s"] for r in runs]
        summary[f"{shape} on"]["export_rows_per_cpu_s"] = spread(rates)
        print(f"{shape} on: featuremart logs export {statistics.median(rates):,.0f} log rows per CPU-second "
              f"(median; off the serving path)")
    for key, row in summary.items():
        if "writer_rows_per_cpu_s" in row:
            print(f"{key}: writer {row['writer_rows_per_cpu_s']['median']:,.0f} log rows per CPU-second, reader "
                  f"{row['reader_rows_per_s']['median']:,.0f} log rows per second (medians)")
    print(f"\nbar: p99 with logging at most {BAR_P99}x without (median of the paired ratios), nothing dropped, "
          f"the writer able to take at least {BAR_CAPACITY}x the reader's row rate in every block: "
          f"{'met' if ok else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "customers": customers, "reps": args.reps, "calls_per_block": calls, "contenders": names,
        "flush_seconds": args.flush_seconds, "switch_interval": sys.getswitchinterval(), "bar_p99": BAR_P99, "bar_writer_capacity": BAR_CAPACITY, "bar_met": ok, "load_average_before": load_before,
        "load_average_after": load_after, "cpus": os.cpu_count(), "python": platform.python_version(),
        **redis_info, "summary": summary, "repetitions": reps}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reading process's cost of logging one read (experiment (b) of the served-log tail, bench/README.md).

Times, with `timeit`, `ServedLog.record` on a real read's result and MGET reply (fraud_model, 1 and 100
entities), in CPU time of the calling thread, against the read itself (wall time: it waits for Redis), on a private redis-server and the reference project at `--project` (as
built by bench/logging_overhead.py). The log's spool thread discards what it takes (`Discarding` of
bench/logging_overhead.py), so only the read path's work is timed.

    python bench/logging_record_cost.py --project DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.logging_overhead import Discarding  # noqa: E402
from bench.online_read import sample_pairs, spread  # noqa: E402
from featuremart import FeatureStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a built reference project")
    parser.add_argument("--number", type=int, default=2000, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings (the median and range are shown)")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    server, _ = redis_check.start(args)
    with tempfile.TemporaryDirectory(prefix="fm-bench-record-") as tmp, redis_check.stopping(server):
        with FeatureStore(args.project, redis_url=server.url) as fs:
            assert fs.sync().status == "success"
        fs = FeatureStore.from_url(server.url)
        pairs = sample_pairs(args.project, 1000)
        reader = fs.reader
        log = Discarding(Path(tmp) / "log", services="all", max_buffered_rows=1 << 40).attach(reader)  # nothing dropped
        log.flush()
        held = {}
        real = log.record

        def keep(result, stored, service, features, now_us, request_id=None):
            held.update(args=(result, stored, service, features, now_us, request_id))
            real(result, stored, service, features, now_us, request_id)

        print(f"load average {os.getloadavg()[0]:.2f}; median [min-max] over {args.repeat} x {args.number} calls")
        for n in (1, 100):
            batch = pairs[:n]
            log.record = keep
            reader.read(batch, service="fraud_model")
            log.record = real
            call = held["args"]
            reads = [t / args.number * 1e6 for t in timeit.repeat(
                lambda: reader.read(batch, service="fraud_model"), number=args.number, repeat=args.repeat)]
            # CPU time of this thread: on a loaded machine, wall time is mostly the other processes' turns
            records = [t / args.number * 1e6 for t in timeit.repeat(
                lambda: log.record(*call), number=args.number, repeat=args.repeat, timer=time.thread_time)]
            log.flush()
            read, record = spread(reads), spread(records)
            print(f"{n:>3} entities: read (logged) {read['median']:.1f} us [{read['min']:.1f}-{read['max']:.1f}] "
                  f"(wall), record() {record['median']:.2f} us of CPU [{record['min']:.2f}-{record['max']:.2f}] "
                  f"= {record['median'] / read['median']:.1%} of the read")
        print(f"load average {os.getloadavg()[0]:.2f}; dropped {log.stats().dropped_rows}")
        log.close()
        fs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

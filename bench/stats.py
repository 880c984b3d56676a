"""Statistics benchmark: what computing feature statistics adds to a full sync (issue 12: at most 15%).

One generated view of N entities × 10 features (5 int, 5 float; bench/synthetic.py's table, 3 rows of history
per entity), the system redis-server. Each repetition runs two full syncs (`full_refresh`: every value
rewritten) in a rotated order: statistics on (the default, with a previous record, so the drift counts on
its bins are included) and statistics off (FEATUREMART_STATS=off); and, between them, the statistics query
alone (`profile_view`, what "on" adds), so that its share of the sync is measured even when the machine's
load makes whole-sync times noisy. Reported: each contender's median and range over the repetitions, the
paired ratio on/off per repetition, and the paired share query/off (median and range).

    python bench/stats.py --entities 1000000 --repeat 5
Results: bench/results/stats.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.synthetic import NOW, make_table, sync, view  # noqa: E402
from featuremart.durable import StatsHistory  # noqa: E402
from featuremart.monitoring.stats import profile_view  # noqa: E402
from featuremart.online.store import OnlineStore  # noqa: E402
from featuremart.warehouse import DuckDBLimits, DuckDBWarehouse  # noqa: E402


def spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def timed(db: Path, url: str, state: Path, stats_on: bool) -> float:
    os.environ["FEATUREMART_STATS"] = "on" if stats_on else "off"
    seconds, result = sync(db, url, state, full_refresh=True)
    assert result.inserted + result.updated + result.unchanged > 0, result
    return seconds


def query_alone(db: Path, url: str, state: Path, entities: int) -> float:
    """The statistics query of one sync, alone, with the sync's DuckDB limits (and its previous record)."""
    with OnlineStore.connect(url, embedded_dir=state, prefix="fm") as store, DuckDBWarehouse(db) as wh:
        wh.bound_memory(DuckDBLimits.from_env(), state / "tmp")
        started = time.perf_counter()
        profile_view(wh, StatsHistory(store), view(), NOW, entities)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--history", type=int, default=3, help="rows per entity in the warehouse table")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    server, found = redis_check.start(args)
    results: dict = {"entities": args.entities, "features": 10, "repeat": args.repeat, "redis": found,
                     "cpus": os.cpu_count()}
    with redis_check.stopping(server), tempfile.TemporaryDirectory() as tmp:
        db, state = Path(tmp) / "w.duckdb", Path(tmp) / "state"
        make_table(db, args.entities, args.history)
        timed(db, server.url, state, True)  # the previous record every "on" run compares with
        times: dict[str, list[float]] = {"on": [], "off": [], "query": []}
        ratios, shares = [], []
        for rep in range(args.repeat):
            order = [["on", "query", "off"], ["off", "on", "query"], ["query", "off", "on"]][rep % 3]
            got = {name: (query_alone(db, server.url, state, args.entities) if name == "query" else
                          timed(db, server.url, state, name == "on")) for name in order}
            for name, seconds in got.items():
                times[name].append(seconds)
            ratios.append(got["on"] / got["off"])
            shares.append(got["query"] / got["off"])
            print(f"rep {rep}: order {order}, on {got['on']:.2f}s, off {got['off']:.2f}s, query {got['query']:.2f}s,"
                  f" ratio on/off {ratios[-1]:.3f}, query/off {shares[-1]:.3f}", flush=True)
        results.update(on=spread(times["on"]), off=spread(times["off"]), query=spread(times["query"]),
                       ratio=spread(ratios), query_share=spread(shares))
    out = ROOT / "bench" / "results" / "stats.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

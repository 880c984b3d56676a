"""Durable sync state benchmark: what keeping the sync state in Redis costs, and what it saves a fresh runner.

On one generated view (N entities × 10 features, bench/sync.py's table) and the system redis-server 7:

  memory     Redis memory per entity of the feature values (INFO used_memory, before/after a full sync) and of
             the durable state (MEMORY USAGE of its record and parts); per key and per feature value from views
             of 1, 10 and 20 features (the sizing formula in docs/operations.md)
  upload     exporting and uploading the view's state (what a sync that changed the view adds), as a ratio to
             the full sync it follows
  restore    an unchanged sync from a fresh runner (no local state): restored from Redis and diffed, as a ratio
             to the same sync with no durable state (SCAN rebuild and rewrite of every value, what every fresh
             runner paid before)

Timed contenders run paired in each repetition, their order rotated; median and range over --repeat runs.
Results: bench/results/durable_state.json.   python bench/durable_state.py --entities 1000000 --repeat 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.common import save, spread  # noqa: E402
from bench.synthetic import make_table, manifest, sync, view  # noqa: E402
from featuremart.durable import DurableState  # noqa: E402
from featuremart.online.store import OnlineStore  # noqa: E402
from featuremart.state import SyncState  # noqa: E402


def upload_seconds(db: Path, url: str, state: Path) -> float:
    """Export and upload the view's committed state, under a scratch prefix (deleted after)."""
    with OnlineStore.connect(url, embedded_dir=state, prefix="bench_upload") as store:
        local = SyncState(state / "sync_state.duckdb")
        try:
            durable = DurableState(store, manifest(db), uuid.uuid4().hex)
            started = time.perf_counter()
            durable.upload(local, "feats")
            seconds = time.perf_counter() - started
        finally:
            local.close()
        store.delete(list(store.scan("bench_upload:*")))
    return seconds


def state_bytes(client) -> tuple[int, int]:
    """(MEMORY USAGE of every durable state key, their value bytes)."""
    keys = list(client.scan_iter(match="fm:state*", count=1000))
    return (sum(client.memory_usage(k, samples=0) for k in keys), sum(client.strlen(k) for k in keys))


def memory_per_entity(db: Path, url: str, client, entities: int, features: int, tmp: Path) -> dict:
    client.flushall()
    base = client.info("memory")["used_memory"]
    state = tmp / f"mem{features}"
    sync(db, url, state, view(features, changed_at=None), full_refresh=True)
    used = client.info("memory")["used_memory"] - base
    durable_usage, durable_value = state_bytes(client)
    sample = [k for k in client.scan_iter(match="fm:{*", count=1000)][:1000]
    key_len = statistics.mean(len(k) for k in sample)
    value_len = statistics.mean(client.strlen(k) for k in sample)
    shutil.rmtree(state)
    values = used - durable_usage
    return {"features": features, "entities": entities, "used_memory_bytes": used,
            "value_bytes_per_entity": round(values / entities, 1),
            "mean_key_bytes": round(key_len, 1), "mean_value_bytes": round(value_len, 1),
            "durable_state_bytes_per_entity": round(durable_usage / entities, 2),
            "durable_state_parquet_bytes_per_entity": round(durable_value / entities, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    redis_check.add_arguments(parser)
    args = parser.parse_args()

    server, found = redis_check.start(args)
    results: dict = {"entities": args.entities, "features": 10, "redis": found}
    with redis_check.stopping(server), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = tmp / "wh.duckdb"
        make_table(db, args.entities, 1)
        con = duckdb.connect(str(db))  # 20 features: the 10 of bench/sync.py twice
        con.execute("create or replace table feats as select *, " +
                    ", ".join(f"f{n} as f{n + 10}" for n in range(10)) + " from feats")
        con.close()
        client = server.client()

        results["memory"] = [memory_per_entity(db, server.url, client, args.entities, n, tmp) for n in (1, 10, 20)]

        v = view(10, changed_at=None)
        state = tmp / "state"
        client.flushall()
        sync(db, server.url, state, v)  # the store and state every contender starts from

        def full() -> float:
            client.flushall()
            shutil.rmtree(state, ignore_errors=True)
            return sync(db, server.url, state, v)[0]

        def upload() -> float:
            return upload_seconds(db, server.url, state)

        def restore() -> float:
            shutil.rmtree(state, ignore_errors=True)
            seconds, result = sync(db, server.url, state, v)
            assert result.restored and not result.rebuilt, result
            assert result.inserted + result.updated + result.deleted == 0, result
            return seconds

        def rebuild() -> float:
            shutil.rmtree(state, ignore_errors=True)
            client.delete(*client.keys("fm:state*"))
            seconds, result = sync(db, server.url, state, v)
            assert result.rebuilt and result.updated == args.entities, result
            return seconds

        contenders = {"full_sync": full, "upload": upload, "fresh_restore_sync": restore,
                      "fresh_rebuild_sync": rebuild}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for rep in range(args.repeat):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                times[name].append(contenders[name]())
            print(f"repetition {rep + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names), flush=True)
        client.close()

    ratio = lambda a, b: spread([x / y for x, y in zip(times[a], times[b])])  # noqa: E731
    results["seconds"] = {name: spread(values) for name, values in times.items()}
    results["upload_vs_full_sync"] = ratio("upload", "full_sync")
    results["fresh_restore_vs_fresh_rebuild"] = ratio("fresh_restore_sync", "fresh_rebuild_sync")
    results["note"] = "2-core machine shared with other jobs while measured: wall times are noisy, ratios paired"
    save(ROOT / "bench" / "results" / "durable_state.json", results)


if __name__ == "__main__":
    main()

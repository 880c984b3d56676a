"""Sync benchmark: featuremart sync against the raw Redis write ceiling, measured in one run.

Generates a feature view in a DuckDB file (N entities × H history rows × 10 features, in SQL), starts a private
redis-server, and measures:

  full       a full sync (warehouse query, diff against empty state, writes) in entities/s, and its ratio to
             raw: redis-py MSET of exactly the same (key, value) bytes, chunks of 10k (the fastest redis-py write)
  unchanged  a rerun with nothing changed (must write nothing), diffing every entity (--no-incremental), as
             a ratio to the bare warehouse query + diff (a dry run computes exactly that); and incrementally
  1%         a sync after 1% of entities got a newer row (incremental: the view declares changed_at), as a
             fraction of the full sync's time
  memory     peak RSS of a full sync at H and at 10×H history rows (same entities), each in its own process

Results: bench/results/sync.json.  python bench/sync.py --entities 1000000 --history 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.raw_redis_ceiling import mset  # noqa: E402
from featuremart import sql  # noqa: E402
from featuremart.config import Entity  # noqa: E402
from featuremart.gate import BuildGate, NodeResult  # noqa: E402
from featuremart.manifest import Manifest  # noqa: E402
from featuremart.online.store import OnlineStore  # noqa: E402
from featuremart.registry import Feature, FeatureView, Registry, Relation  # noqa: E402
from featuremart.sync import Syncer  # noqa: E402
from featuremart.warehouse import DuckDBWarehouse  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

FEATURES = [f"f{i}" for i in range(10)]
NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def make_table(path: Path, entities: int, history: int) -> None:
    """`history` rows per entity, a day apart, the newest within the ttl; 5 int and 5 float features."""
    cols = ", ".join(f"(hash(i, h, {n}) % 100000)::bigint as f{n}" if n < 5 else
                     f"(hash(i, h, {n}) % 1000000) / 100.0 as f{n}" for n in range(10))
    con = duckdb.connect(str(path))
    con.execute(f"""
        create or replace table feats as
        select 'C' || lpad(i::varchar, 8, '0') as customer_id,
               timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval (h) day - interval (i % 3600) second as ts, {cols},
               timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval 1 day as changed_at
        from range({entities}) e(i), range({history}) r(h)
    """)
    con.close()


def view() -> FeatureView:
    return FeatureView(name="feats", entities=("customer",), join_keys=(("customer_id", "string"),), timestamp="ts",
                       ttl=timedelta(days=30), relation=Relation(None, "main", "feats"), model_id="model.b.feats",
                       changed_at="changed_at",
                       features=tuple(Feature("feats", f, "int" if int(f[1:]) < 5 else "float") for f in FEATURES))


def sync(db: Path, url: str, state: Path, **kw):
    v = view()
    registry = Registry({"customer": Entity("customer", (("customer_id", "string"),))}, {"feats": v}, {})
    manifest = Manifest(db, 12, "", "", "duckdb", "bench", {}, (), {}, {})
    built = {v.model_id: NodeResult(v.model_id, "success", None, datetime.now(timezone.utc).replace(tzinfo=None))}
    gate = BuildGate(manifest, built, Relation(None, "main", "featuremart_build_results"))
    with OnlineStore.connect(url, embedded_dir=state, prefix="fm") as store, DuckDBWarehouse(db) as wh:
        started = time.perf_counter()
        run = Syncer(registry, manifest, gate, wh, store, state).run([v], **kw)
        seconds = time.perf_counter() - started
    assert run.status in ("success", "dry-run"), run
    return seconds, run.views[0]


def raw_mset_seconds(db: Path, url: str) -> tuple[float, int]:
    """The same keys and values the sync writes, extracted first (not timed), then MSET through redis-py."""
    con = duckdb.connect(str(db), read_only=True)
    table = con.sql(sql.render(sql.online_payload(view(), "fm", NOW, "duckdb"), "duckdb")).to_arrow_table()
    con.close()
    keys, values = table.column("key").to_pylist(), table.column("value").to_pylist()
    client = redis.Redis.from_url(url)
    client.flushall()
    started = time.perf_counter()
    mset(client, keys, values, None)
    seconds = time.perf_counter() - started
    client.flushall()
    return seconds, len(keys)


def child(db: str, url: str) -> None:
    """One full sync in this process; prints its peak RSS (the memory figure)."""
    with tempfile.TemporaryDirectory() as state:
        seconds, v = sync(Path(db), url, Path(state), full_refresh=True)
    print(json.dumps({"seconds": seconds, "entities": v.inserted + v.updated,
                      "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(db: Path, server: RedisServer) -> dict:
    server.client().flushall()
    out = subprocess.run([sys.executable, __file__, "--child", str(db), server.url], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--history", type=int, default=1, help="history rows per entity (memory run uses 10×)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    results: dict = {"entities": args.entities, "history": args.history, "features": len(FEATURES)}
    with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
        tmp = Path(tmp)
        db, state = tmp / "wh.duckdb", tmp / "state"
        make_table(db, args.entities, args.history)

        raw_s, rows = raw_mset_seconds(db, server.url)
        full_s, v = sync(db, server.url, state)
        assert v.inserted == rows
        unchanged_s, again = sync(db, server.url, state, incremental=False)
        assert again.inserted + again.updated + again.deleted == 0
        diff_s, _ = sync(db, server.url, state, dry_run=True, incremental=False)
        unchanged_inc_s, again = sync(db, server.url, state)
        assert again.incremental and again.inserted + again.updated + again.deleted == 0

        con = duckdb.connect(str(db))
        con.execute(f"""insert into feats select customer_id, max(ts) + interval 1 second, {", ".join(
            f"any_value({f}) + 1" for f in FEATURES)}, now()::timestamp
            from feats where hash(customer_id) % 100 = 0 group by all""")
        con.close()
        change_s, changed = sync(db, server.url, state)
        assert changed.incremental

        results["full"] = {"seconds": round(full_s, 3), "entities_per_s": round(rows / full_s),
                           "raw_mset_seconds": round(raw_s, 3), "raw_mset_rows_per_s": round(rows / raw_s),
                           "ratio_to_raw": round(raw_s / full_s, 3)}
        results["unchanged"] = {"seconds": round(unchanged_s, 3), "writes": 0, "diff_query_seconds": round(diff_s, 3),
                                "ratio_to_diff_query": round(unchanged_s / diff_s, 3),
                                "incremental_seconds": round(unchanged_inc_s, 3)}
        results["one_percent"] = {"entities": changed.updated, "seconds": round(change_s, 3),
                                  "fraction_of_full": round(change_s / full_s, 3)}

        mem = {}
        for history in (args.history, args.history * 10):
            make_table(db, args.entities, history)
            mem[f"{history}_rows_per_entity"] = peak_memory(db, server)
        small, big = mem.values()
        results["memory"] = {**mem, "ratio_10x_history": round(big["max_rss_mb"] / small["max_rss_mb"], 3)}

    out = ROOT / "bench" / "results" / "sync.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Redis Cluster benchmark: sync write throughput on three masters against one node, on the same machine.

Starts, from the system redis-server 7.x (bench/redis_check.py), one private node and a private three-master
cluster (tests/redis_server.py `RedisCluster`, no replicas, no persistence), builds one feature view in DuckDB
(N entities × 10 features, the table of bench/sync.py), and measures two things per repetition, each contender
against the other in the same repetition, their order rotated from one repetition to the next:

  sync   a full `featuremart sync` (warehouse query, diff, writes) from an empty state and an empty store
  write  `OnlineStore.write_encoded` alone: the same hand-encoded `SET key value PXAT ms` chunks (10k rows),
         encoded before the clock starts, so only the write path is timed (the cluster's includes the split by slot)

The figure is the paired ratio cluster ÷ single-node throughput (> 1: the cluster writes faster), median and
range over the repetitions. On a 2-core machine three redis-server processes and the writer's threads share two
cores, so the cluster cannot show the scaling it would on separate hosts: this bench shows what the fan-out
costs or gains here, not the ceiling of a real cluster.

    python bench/cluster.py --entities 200000 --repetitions 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.common import save, spread  # noqa: E402
from bench.synthetic import NOW, make_table, sync, view  # noqa: E402
from featuremart import sql  # noqa: E402
from featuremart.online.store import WRITE_CHUNK_ROWS, OnlineStore, _encode_set_pxat  # noqa: E402
from tests.redis_server import RedisCluster  # noqa: E402


def flush(url: str, cluster: bool) -> None:
    """Empty a server (every master of a cluster) that this script started."""
    client = redis.cluster.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    try:
        nodes = [client.get_redis_connection(n) for n in client.get_primaries()] if cluster else [client]
        for node in nodes:
            node.flushall()
    finally:
        client.close()


def encoded_chunks(db: Path) -> list[tuple[bytes, list[bytes]]]:
    """The rows a full sync writes, as the chunks `write_encoded` takes, encoded once (not timed)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    table = con.sql(sql.render(sql.online_payload(view(), "fm", NOW, "duckdb"), "duckdb")).to_arrow_table()
    con.close()
    keys = [k.encode() for k in table.column("key").to_pylist()]
    values = [v.encode() for v in table.column("value").to_pylist()]
    expire = [int(time.time() * 1000) + 86_400_000] * len(keys)
    return [(_encode_set_pxat(keys[i:i + WRITE_CHUNK_ROWS], values[i:i + WRITE_CHUNK_ROWS],
                              expire[i:i + WRITE_CHUNK_ROWS]), keys[i:i + WRITE_CHUNK_ROWS])
            for i in range(0, len(keys), WRITE_CHUNK_ROWS)]


def time_write(url: str, chunks) -> float:
    with OnlineStore.connect(url, embedded_dir=Path("unused"), prefix="fm") as store:
        store.server_id()  # as the sync does before writing: records every master's run_id on a cluster
        started = time.perf_counter()
        written = store.write_encoded(iter(chunks))
        seconds = time.perf_counter() - started
    assert written == sum(len(k) for _, k in chunks), written
    return seconds


def time_sync(db: Path, url: str, tmp: Path, n: int) -> float:
    with tempfile.TemporaryDirectory(dir=tmp) as state:
        seconds, v = sync(db, url, Path(state), full_refresh=True)
    assert v.inserted == n, v
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=200_000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--masters", type=int, default=3)
    redis_check.add_arguments(parser)
    args = parser.parse_args()
    if args.repetitions < 5:
        parser.error("--repetitions must be at least 5 (median and range)")

    single, found = redis_check.start(args)
    with redis_check.stopping(single), RedisCluster(args.masters, binary=found["redis_server"]) as cluster, \
            tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = tmp / "wh.duckdb"
        make_table(db, args.entities, 1)
        chunks = encoded_chunks(db)
        rows = sum(len(k) for _, k in chunks)
        contenders = {"single": (single.url, False), "cluster": (cluster.url, True)}
        measured: dict[str, dict[str, list[float]]] = {kind: {c: [] for c in contenders} for kind in ("write", "sync")}
        for rep in range(args.repetitions):
            order = list(contenders)[rep % 2:] + list(contenders)[:rep % 2]  # rotated: each goes first in turn
            for kind in ("write", "sync"):
                for name in order:
                    url, is_cluster = contenders[name]
                    flush(url, is_cluster)
                    seconds = (time_write(url, chunks) if kind == "write" else time_sync(db, url, tmp, rows))
                    measured[kind][name].append(seconds)
            print(f"rep {rep + 1}: order {order}; " + "; ".join(
                f"{kind} {' '.join(f'{c} {measured[kind][c][-1]:.2f}s' for c in contenders)}" for kind in measured),
                flush=True)
        results: dict = {"entities": rows, "features": 10, "masters": args.masters, "repetitions": args.repetitions,
                         "redis": found, "machine": "2 cores shared by the single node, the cluster's masters and "
                                                    "the writer"}
        for kind, by in measured.items():
            ratios = [s / c for s, c in zip(by["single"], by["cluster"])]  # throughput ratio cluster / single
            results[kind] = {
                **{f"{c}_rows_per_s": spread([rows / s for s in by[c]]) for c in contenders},
                **{f"{c}_seconds": spread(by[c]) for c in contenders},
                "cluster_to_single_throughput": spread(ratios),
            }
    save(ROOT / "bench" / "results" / "cluster.json", results)


if __name__ == "__main__":
    main()

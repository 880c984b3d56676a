"""Sync benchmark: a full `featuremart sync` against the Redis write ceiling, paired in one run.

For each entity count (`--entities 1000000 10000000`), a small dbt project (featuremart installed as a package)
generates one feature view of N entities x 10 features in DuckDB with `dbt build`; a private system
redis-server 7.x (bench/redis_check.py) receives the writes. Each repetition runs these contenders on an
emptied server, in an order rotated by one every repetition, and every ratio is taken within a repetition:

  pipe          `redis-cli --pipe` replaying exactly the bytes the sync sends (`SET key value PXAT ms`,
                encoded by featuremart's own query, written to a file before the clock starts): the ceiling
  mset          redis-py MSET of the same keys and values, 10k per call (no expiry): the second line
  sync          Syncer.run in-process, timed by its own run record, through `FeatureStore.sync()` on an open
                project (warehouse read, diff against an empty state, encoding, writes, state commit; the
                call's manifest, selection and build gate are reported apart as `sync_call_seconds`)
  process       a whole `featuremart sync --json` process, dbt project loading included; its start-up is its
                wall time minus the run's own `seconds`
  ref           with `--ref-featuremart EXE`: the same process of another checkout's `featuremart` executable
                (e.g. /work/main/.venv/bin/featuremart), paired and rotated with the others

Then, once per size: an unchanged rerun diffing every entity (`--no-incremental`) against a dry run (the bare
warehouse query + diff), an incremental unchanged rerun, and a 1% change read incrementally, as a fraction of
the full sync. Peak RSS is the whole `featuremart sync` process's (its own process every time).

With `--postgres` (Postgres at 127.0.0.1:5432, trust auth), the same rows are loaded into a throwaway schema
with COPY, built there by the same dbt project (`--target pg`), and synced in-process and as a process.

    python bench/sync.py --entities 1000000 --reps 5
    python bench/sync.py --entities 1000000 --reps 5 --no-reruns --contenders pipe process \
        --ref-featuremart /work/main/.venv/bin/featuremart
    python bench/sync.py --entities 10000000 --reps 1 --postgres

Results: bench/results/sync.json (median [min-max] of every time and ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.common import dbt_project, spread  # noqa: E402
from bench.raw_redis_ceiling import mset  # noqa: E402
from featuremart import FeatureStore, sql  # noqa: E402
from featuremart.state import SyncState  # noqa: E402

FEATURES = [f"f{i}" for i in range(10)]
NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
CONTENDERS = ("pipe", "mset", "sync", "process")


def project(dest: Path, entities: int, pg_schema: str) -> Path:
    """A dbt project whose model `feats` generates N entities (DuckDB) or copies the COPY-loaded rows (pg)."""
    dbt_project(dest, "bench_sync", join_key_type="string", key_prefix="fm", extra_outputs=(
        f"pg: {{type: postgres, host: 127.0.0.1, port: 5432, user: postgres, password: \"\", dbname: postgres,\n"
        f"      schema: {pg_schema}, threads: 2}}\n"))
    cols = ",\n    ".join(f"(hash(i, {n}) % 100000)::bigint as f{n}" if n < 5 else
                          f"(hash(i, {n}) % 1000000) / 100.0 as f{n}" for n in range(10))
    (dest / "models" / "feats.sql").write_text(textwrap.dedent(f"""\
        {{% if target.type == 'postgres' %}}
        select * from {pg_schema}_raw.feats
        {{% else %}}
        select 'C' || lpad(i::varchar, 9, '0') as customer_id,
            timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval (i % 3600) second as ts,
            timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval 1 day as changed_at,
            {cols}
        from range({entities}) e(i)
        {{% endif %}}
        """))
    (dest / "models" / "schema.yml").write_text(textwrap.dedent("""\
        version: 2
        models:
          - name: feats
            config:
              meta:
                featuremart: {entity: customer, timestamp: ts, ttl: 30d, changed_at: changed_at}
        """))
    dbt(dest, "deps")
    dbt(dest, "build")
    return dest


def dbt(dest: Path, *command: str) -> None:
    exe = str(Path(sys.executable).with_name("dbt"))
    proc = subprocess.run([exe, *command, "--project-dir", str(dest), "--profiles-dir", str(dest)],
                          capture_output=True, text=True, env={**os.environ, "DO_NOT_TRACK": "1"}, cwd=dest)
    if proc.returncode != 0:
        raise SystemExit(f"dbt {' '.join(command)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def load_postgres(dest: Path, pg_schema: str) -> None:
    """COPY the generated rows into <schema>_raw.feats, then `dbt build --target pg` (feats as a table)."""
    import psycopg2

    csv = dest / "feats.csv"
    con = duckdb.connect(str(dest / "bench.duckdb"), read_only=True)
    con.execute(f"copy main.feats to '{csv}' (header false)")
    types = {r[0]: r[1] for r in con.execute("select column_name, data_type from information_schema.columns "
                                             "where table_name = 'feats' order by ordinal_position").fetchall()}
    con.close()
    pg_types = {"VARCHAR": "text", "TIMESTAMP": "timestamp", "BIGINT": "bigint", "DOUBLE": "double precision"}
    with psycopg2.connect(PG_DSN) as pg, pg.cursor() as cur:
        cur.execute(f'create schema "{pg_schema}_raw"')
        cur.execute(f'create table "{pg_schema}_raw".feats ('
                    + ", ".join(f'"{c}" {pg_types.get(t, "double precision")}' for c, t in types.items()) + ")")
        with open(csv) as fh:
            cur.copy_expert(f'copy "{pg_schema}_raw".feats from stdin with (format csv)', fh)
    pg.close()
    csv.unlink()
    dbt(dest, "build", "--target", "pg")


def drop_postgres(pg_schema: str) -> None:
    import psycopg2

    with psycopg2.connect(PG_DSN) as pg, pg.cursor() as cur:
        for schema in (pg_schema, f"{pg_schema}_raw"):
            cur.execute(f'drop schema if exists "{schema}" cascade')
    pg.close()


def commands_file(store: FeatureStore, out: Path) -> tuple[int, list[bytes], list[bytes]]:
    """The exact bytes a full sync sends (featuremart's encoding query over its staged rows), and the keys and
    values for MSET."""
    view = store.registry.views["feats"]
    query = sql.render(sql.online_payload(view, "fm", NOW, "duckdb"), "duckdb")
    con = duckdb.connect(str(store.project.project_dir / "bench.duckdb"), read_only=True)
    table = con.sql(query).to_arrow_table()
    con.close()
    state = SyncState(out.with_suffix(".state.duckdb"))
    try:
        state.stage("feats", pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
        state.diff("feats", view.version, rewrite=False, expired_before_us=0)
        with open(out, "wb") as fh:
            for buffer, _ in state.upsert_commands("feats", int(view.ttl.total_seconds() * 1000)):
                fh.write(buffer)
    finally:
        state.close()
    return table.num_rows, table.column("key").to_pylist(), table.column("value").to_pylist()


def fresh(client: redis.Redis, store_dir: Path) -> None:
    """An empty server and no sync state: every contender inserts every key."""
    client.flushall()
    shutil.rmtree(store_dir / "target" / "featuremart", ignore_errors=True)


#: Runs a command and reports its wall time and peak RSS. A process forked from this (large) bench process would
#: report the bench's RSS (ru_maxrss survives fork and exec); forked from this small wrapper, it reports its own.
WRAPPER = """
import json, os, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "code": os.waitstatus_to_exitcode(status),
                  "peak_rss_mb": usage.ru_maxrss / 1024}), file=sys.stderr)
"""


def run_process(argv: list[str], env: dict) -> tuple[float, dict, float]:
    """Wall seconds, parsed --json output and peak RSS (MB) of one process, measured by WRAPPER."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True, text=True, env=env)
    measured = json.loads(proc.stderr.strip().splitlines()[-1])
    if measured["code"] != 0:
        raise SystemExit(f"{' '.join(argv)} exited {measured['code']}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return measured["seconds"], json.loads(proc.stdout), measured["peak_rss_mb"]


def bench_size(entities: int, reps: int, server, port: int, tmp: Path, postgres: bool,
               reruns: bool = True, contenders: tuple[str, ...] = CONTENDERS, ref: str | None = None) -> dict:
    pg_schema = f"fm_bench_{uuid.uuid4().hex[:8]}"
    dest = project(tmp / f"p{entities}", entities, pg_schema)
    client = server.client(socket_timeout=600)
    fm = str(Path(sys.executable).with_name("featuremart"))
    env = {**os.environ, "FEATUREMART_REDIS_URL": server.url}
    store = FeatureStore(dest, profiles_dir=dest, redis_url=server.url)
    resp = tmp / f"cmds{entities}.resp"
    rows, keys, values = (commands_file(store, resp) if {"pipe", "mset"} & set(contenders) else
                          (entities, [], []))
    assert rows == entities

    def pipe() -> dict:
        started = time.perf_counter()
        with open(resp, "rb") as fh:
            proc = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=fh, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        assert proc.returncode == 0 and f"errors: 0, replies: {rows}" in proc.stdout, proc.stdout + proc.stderr
        return {"seconds": seconds}

    def mset_() -> dict:
        started = time.perf_counter()
        mset(client, keys, values, None)
        return {"seconds": time.perf_counter() - started}

    def sync() -> dict:
        return _timed_sync(store, rows)

    def process(target: str = "dev", exe: str = fm) -> dict:
        seconds, record, rss = run_process([exe, "sync", "--json", "--project-dir", str(dest),
                                            "--profiles-dir", str(dest), "--target", target], env)
        assert record["status"] == "success" and record["views"][0]["inserted"] == rows, record
        return {"seconds": seconds, "startup": seconds - record["seconds"], "peak_rss_mb": rss}

    if ref:
        contenders = (*contenders, "ref")
    runs = {n: f for n, f in {"pipe": pipe, "mset": mset_, "sync": sync, "process": process,
                              "ref": lambda: process(exe=ref)}.items() if n in contenders}
    times: dict[str, list[dict]] = {name: [] for name in runs}
    for rep in range(reps):
        order = contenders[rep % len(contenders):] + contenders[:rep % len(contenders)]
        for name in order:
            fresh(client, dest)
            times[name].append(with_cpu(runs[name], client))
            assert client.dbsize() >= rows, f"{name} left {client.dbsize()} keys, expected {rows}"
            print(f"    {name}: {json.dumps(times[name][-1])}", flush=True)  # long runs report as they go
        print(f"  {entities:,} rep {rep + 1}/{reps} ({' '.join(order)}): " + ", ".join(
            f"{n} {times[n][-1]['seconds']:.2f}s" for n in contenders), flush=True)
    secs = {n: [t["seconds"] for t in times[n]] for n in runs}
    result: dict = {
        "entities": rows, "features": len(FEATURES), "reps": reps, "load_average": os.getloadavg(),
        "seconds": {n: spread(secs[n]) for n in runs},
        "entities_per_s": {n: round(rows / statistics.median(secs[n])) for n in runs},
        # the bar: ceiling time / featuremart time, >= 0.8 (a sync within 1.25x of redis-cli --pipe)
        "ratio_to_pipe": {n: spread([p / s for p, s in zip(secs["pipe"], secs[n])])
                          for n in ("sync", "process", "ref") if {"pipe", n} <= set(runs)},
        "ratio_to_mset": {n: spread([m / s for m, s in zip(secs["mset"], secs[n])])
                          for n in ("sync", "process") if {"mset", n} <= set(runs)},
    }
    # CPU seconds spent (by this bench and its child processes: the client side; by redis-server), which the
    # machine's load disturbs less than wall times: the work each contender makes the machine do.
    result["cpu_seconds"] = {n: {side: spread([t[f"{side}_cpu"] for t in times[n]]) for side in ("client", "redis")}
                             for n in runs}
    if "pipe" in runs:
        work = {n: [t["client_cpu"] + t["redis_cpu"] for t in times[n]] for n in runs}
        result["cpu_ratio_to_pipe"] = {n: spread([p / w for p, w in zip(work["pipe"], work[n])])
                                       for n in runs if n != "pipe"}
    if {"pipe", "mset"} <= set(runs):
        result["pipe_vs_mset"] = spread([m / p for m, p in zip(secs["mset"], secs["pipe"])])
    if "sync" in runs:
        result["sync_call_seconds"] = spread([t["call_seconds"] for t in times["sync"]])
    if "process" in runs:
        result["process_startup_seconds"] = spread([t["startup"] for t in times["process"]])
        result["process_peak_rss_mb"] = spread([t["peak_rss_mb"] for t in times["process"]])
    if {"process", "ref"} <= set(runs):  # > 1: this checkout's process is the faster, in the same repetition
        result["ref"] = {"featuremart": ref, "startup_seconds": spread([t["startup"] for t in times["ref"]]),
                         "ref_over_process": spread([r["seconds"] / p["seconds"]
                                                     for r, p in zip(times["ref"], times["process"])])}

    # Cost proportional to the work: unchanged reruns and a 1% change, after one more full sync.
    if reruns:
        fresh(client, dest)
        full = store.sync()
        unchanged_s = timed(lambda: store.sync(incremental=False), writes=0)
        diff_s = timed(lambda: store.sync(dry_run=True, incremental=False), writes=None)
        unchanged_inc_s = timed(lambda: store.sync(), writes=0)
        con = duckdb.connect(str(dest / "bench.duckdb"))
        changed = datetime.now(timezone.utc).replace(tzinfo=None)  # UTC like every time here, not the session zone
        con.execute(f"""insert into feats select customer_id, ts + interval 1 second,
            timestamp '{changed:%Y-%m-%d %H:%M:%S.%f}',
            {", ".join(f"{f} + 1" for f in FEATURES)} from feats where hash(customer_id) % 100 = 0""")
        con.close()
        change_s = timed(lambda: store.sync(), writes=-1)
        result["unchanged"] = {"seconds": round(unchanged_s, 3), "diff_query_seconds": round(diff_s, 3),
                               "ratio_to_diff_query": round(unchanged_s / diff_s, 3),
                               "incremental_seconds": round(unchanged_inc_s, 3)}
        result["one_percent"] = {"seconds": round(change_s, 3),
                                 "fraction_of_full": round(change_s / full.seconds, 3)}
    store.close()

    print(json.dumps({k: v for k, v in result.items() if k != "load_average"}), flush=True)
    if postgres:
        try:
            load_postgres(dest, pg_schema)
            pg_store = FeatureStore(dest, profiles_dir=dest, target="pg", redis_url=server.url)
            pg_runs = {n: f for n, f in {"pipe": pipe, "sync": lambda: _timed_sync(pg_store, rows),
                                         "process": lambda: process("pg")}.items() if n in contenders}
            pg_times: dict[str, list[dict]] = {n: [] for n in pg_runs}
            names = list(pg_runs)
            for rep in range(reps):
                for name in names[rep % len(names):] + names[:rep % len(names)]:
                    fresh(client, dest)
                    pg_times[name].append(pg_runs[name]())
                    print(f"    postgres {name}: {json.dumps(pg_times[name][-1])}", flush=True)
            pg_store.close()
            pg_secs = {n: [t["seconds"] for t in pg_times[n]] for n in pg_runs}
            result["postgres"] = {
                "seconds": {n: spread(pg_secs[n]) for n in pg_runs},
                "ratio_to_pipe": {n: spread([p / s for p, s in zip(pg_secs["pipe"], pg_secs[n])])
                                  for n in ("sync", "process") if {"pipe", n} <= set(pg_runs)},
                "process_peak_rss_mb": spread([t["peak_rss_mb"] for t in pg_times.get("process", [])] or [0]),
            }
        finally:
            drop_postgres(pg_schema)
    client.close()
    return result


def with_cpu(contender, client: redis.Redis) -> dict:
    """Run a contender; add the CPU seconds it took on the client side (this process and the child processes it
    waited for) and in redis-server (INFO cpu)."""
    def redis_cpu() -> float:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def client_cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    before = (client_cpu(), redis_cpu())
    measured = contender()
    measured["client_cpu"] = round(client_cpu() - before[0], 3)
    measured["redis_cpu"] = round(redis_cpu() - before[1], 3)
    return measured


def _timed_sync(store: FeatureStore, rows: int) -> dict:
    """Syncer.run's own time (`seconds`), and that of the `FeatureStore.sync` call around it (manifest, dbt
    selection and build gate added)."""
    started = time.perf_counter()
    run = store.sync()
    seconds = time.perf_counter() - started
    assert run.status == "success" and run.views[0].inserted == rows, run
    return {"seconds": run.seconds, "call_seconds": seconds}


def timed(call, writes: int | None) -> float:
    started = time.perf_counter()
    run = call()
    seconds = time.perf_counter() - started
    view = run.views[0]
    assert run.status in ("success", "dry-run"), run
    if writes == 0:
        assert view.inserted + view.updated + view.deleted == 0, view
    elif writes == -1:
        assert view.incremental and view.updated > 0, view
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--postgres", action="store_true", help="also sync from Postgres at 127.0.0.1:5432")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS,
                        help="run only these (e.g. `process` for peak memory alone)")
    parser.add_argument("--no-reruns", action="store_true", help="skip the unchanged and 1%% change reruns")
    parser.add_argument("--ref-featuremart", default=None, metavar="EXE",
                        help="also time this `featuremart` executable's process (another checkout: `ref`)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sync.json")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    if not shutil.which("redis-cli"):
        raise SystemExit("redis-cli is not on PATH: the ceiling is `redis-cli --pipe`")
    server, info = redis_check.start(args)
    results: dict = {"redis": info, "cpus": os.cpu_count(), "writers": os.environ.get("FEATUREMART_SYNC_WRITERS", "2"),
                     "duckdb_memory_limit": os.environ.get("FEATUREMART_DUCKDB_MEMORY_LIMIT", "default"),
                     "sizes": {}}
    with redis_check.stopping(server), tempfile.TemporaryDirectory() as tmp:
        for n in args.entities:
            results["sizes"][str(n)] = bench_size(n, args.reps, server, server.port, Path(tmp), args.postgres,
                                                    not args.no_reruns, tuple(args.contenders), args.ref_featuremart)
            print(json.dumps(results["sizes"][str(n)], indent=1), flush=True)
    sizes = list(results["sizes"].values())
    if len(sizes) > 1:
        small, big = sizes[0], sizes[-1]
        results["scaling"] = {
            f"throughput_ratio_{n}": round(big["entities_per_s"][n] / small["entities_per_s"][n], 3)
            for n in small["entities_per_s"]}
        if "process_peak_rss_mb" in small:
            results["scaling"]["peak_rss_ratio"] = round(
                big["process_peak_rss_mb"]["median"] / small["process_peak_rss_mb"]["median"], 3)
        print(json.dumps(results["scaling"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

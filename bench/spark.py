"""Spark beside DuckDB: a full sync and a training set at N entities, and how their cost grows with N.

For each entity count (`--entities 250000 500000 1000000`), one Parquet file of N entities x 10 features (one row
each, within the ttl) and one of N labels (a spine row per entity, after its feature row) are written, and a small
dbt project (featuremart installed as a package) reads them into the tables `feats` and `labels` with `dbt build`
on both targets: `dev` (DuckDB) and `spark` (dbt-spark session mode, its warehouse and metastore under the
project). Each repetition then runs, for both warehouses in an order rotated every repetition, one
`featuremart` worker process (this script with `--worker`) that:

  sync      `FeatureStore.sync(full_refresh=True)` into a private redis-server (emptied first): the warehouse's
            latest-value query, encoding, writes; timed by the run's own record
  training  `FeatureStore.write_training_set` of the N labels with the 10 features to a Parquet file (the
            point-in-time join runs in the warehouse; the result is written from a stream)

and reports its own peak RSS (the featuremart Python process; on Spark the JVM is a separate process, its peak
reported apart) and the seconds it took to open the project (Spark: starting the session). Figures are the
median [min-max] over the repetitions; ratios (Spark/DuckDB, and each size against the smallest) are taken
within a repetition.

    python bench/spark.py --entities 250000 500000 1000000 --reps 5

`--baseline DIR` adds a contender, `spark_baseline`: the same Spark worker run from another featuremart checkout
(`git worktree add DIR main`: this script there imports that checkout's featuremart), in the same rotated order,
so that a change is measured against the code before it in the same run (ratios `spark_over_baseline_*`).

Results: bench/results/spark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import redis_check  # noqa: E402
from bench.common import dbt_project, save, spread  # noqa: E402
from bench.sync import dbt  # noqa: E402

NOW = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
WAREHOUSES = {"duckdb": "dev", "spark": "spark"}


def make_project(dest: Path, entities: int) -> Path:
    """The bench project of N entities: Parquet inputs, the two targets, the two models, both built."""
    import duckdb

    dbt_project(dest, "bench_spark", join_key_type="int", key_prefix="fm", extra_outputs=textwrap.dedent(f"""\
        spark:
          type: spark
          method: session
          host: NA
          schema: bench
          threads: 1
          server_side_parameters:
            spark.sql.session.timeZone: UTC
            spark.sql.warehouse.dir: "{dest}/spark/warehouse"
            spark.driver.extraJavaOptions: "-Dderby.system.home={dest}/spark"
            spark.hadoop.javax.jdo.option.ConnectionURL: "jdbc:derby:;databaseName=metastore_db;create=true"
            spark.driver.memory: 2g
            spark.sql.shuffle.partitions: "4"
            spark.ui.enabled: "false"
        """))
    cols = ", ".join(f"(hash(i, {n}) % 100000)::bigint as f{n}" if n < 5 else
                     f"(hash(i, {n}) % 1000000) / 100.0 as f{n}" for n in range(10))
    con = duckdb.connect()
    con.execute(f"""copy (select i as customer_id, timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval 2 day
                                 - interval (i % 3600) second as ts, {cols} from range({entities}) e(i))
                    to '{dest}/feats.parquet' (format parquet)""")
    con.execute(f"""copy (select i as customer_id, timestamp '{NOW:%Y-%m-%d %H:%M:%S}' - interval 1 day
                                 - interval (i % 7200) second as label_ts, (i % 2)::int as label
                          from range({entities}) e(i))
                    to '{dest}/labels.parquet' (format parquet)""")
    con.close()
    for name in ("feats", "labels"):
        (dest / "models" / f"{name}.sql").write_text(
            f"select * from {{% if target.type == 'spark' %}}parquet.`{dest}/{name}.parquet`"
            f"{{% else %}}read_parquet('{dest}/{name}.parquet'){{% endif %}}\n")
    (dest / "models" / "schema.yml").write_text(textwrap.dedent("""\
        version: 2
        models:
          - name: feats
            config:
              meta:
                featuremart: {entity: customer, timestamp: ts, ttl: 30d}
        """))
    dbt(dest, "deps")
    build = {}
    for warehouse, target in WAREHOUSES.items():
        started = time.perf_counter()
        dbt(dest, "build", "--target", target, "--target-path", str(dest / "target" / warehouse))
        build[warehouse] = round(time.perf_counter() - started, 3)
    return build


def worker(project: Path, warehouse: str, redis_url: str) -> dict:
    """One featuremart process: open the project, a full sync, a training set to Parquet; times and peak RSS."""
    from featuremart import FeatureStore

    os.environ["DBT_TARGET"] = WAREHOUSES[warehouse]
    os.environ["DBT_TARGET_PATH"] = str(project / "target" / warehouse)  # each target's own manifest
    started = time.perf_counter()
    with FeatureStore(project, redis_url=redis_url) as store:
        store.warehouse().query("select 1 as x")  # Spark: the session starts here
        opened = time.perf_counter() - started
        run = store.sync(full_refresh=True)
        if run.status != "success":
            raise SystemExit(f"sync from {warehouse} failed: {run.error}")
        rows_synced = sum(v.inserted + v.updated for v in run.views if v.view == "feats")
        t0 = time.perf_counter()
        rows, _ = store.write_training_set(project / f"train_{warehouse}.parquet", "labels", "label_ts",
                                           features=["feats.*"])
        training = time.perf_counter() - t0
        jvm_peak_mb = _jvm_peak_mb(store) if warehouse == "spark" else None
    return {"open_s": round(opened, 3), "sync_s": run.seconds, "training_s": round(training, 3),
            "synced": rows_synced, "training_rows": rows, "jvm_peak_rss_mb": jvm_peak_mb,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _jvm_peak_mb(store) -> float | None:
    """The Spark driver JVM's peak RSS (VmHWM), read from /proc while it runs."""
    try:
        pid = store.warehouse().session.sparkContext._gateway.proc.pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (AttributeError, OSError):
        return None
    return None


def bench_size(n: int, reps: int, server, tmp: Path, baseline: Path | None = None) -> dict:
    project = tmp / f"n{n}"
    build = make_project(project, n)
    scripts = {w: Path(__file__) for w in WAREHOUSES}
    if baseline is not None:
        scripts["spark_baseline"] = baseline / "bench" / "spark.py"
    order = list(scripts)
    runs: dict[str, list[dict]] = {w: [] for w in order}
    loads = []
    for rep in range(reps):
        shift = rep % len(order)
        for contender in order[shift:] + order[:shift]:
            server.client().flushall(asynchronous=True)  # a synchronous FLUSHALL of millions of keys can outlast the client's timeout
            warehouse = contender.removesuffix("_baseline")
            proc = subprocess.run([sys.executable, str(scripts[contender]), "--worker", str(project), warehouse,
                                   server.url], capture_output=True, text=True, cwd=project)
            if proc.returncode != 0:
                raise SystemExit(f"worker {contender} at {n} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
            runs[contender].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
        print(f"{n} rep {rep}: " + json.dumps({w: r[-1] for w, r in runs.items()}), flush=True)
    out = {"entities": n, "dbt_build_s": build, "load_1min": spread(loads)}
    for warehouse, rs in runs.items():
        out[warehouse] = {k: spread([r[k] for r in rs]) for k in rs[0] if rs[0][k] is not None}
    for what in ("sync_s", "training_s"):
        out[f"spark_over_duckdb_{what}"] = spread([s[what] / d[what] for s, d in zip(runs["spark"], runs["duckdb"])])
    if baseline is not None:
        for what in ("sync_s", "training_s", "peak_rss_mb"):
            out[f"spark_over_baseline_{what}"] = spread([s[what] / b[what] for s, b in
                                                         zip(runs["spark"], runs["spark_baseline"])])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--worker", nargs=3, metavar=("PROJECT", "WAREHOUSE", "REDIS_URL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spark.json")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the Spark worker from the featuremart checkout at DIR (paired before/after)")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), args.worker[1], args.worker[2])))
        return 0
    print(f"load average at start: {open('/proc/loadavg').read().strip()}", flush=True)
    server, info = redis_check.start(args)
    results: dict = {"redis": info, "cpus": os.cpu_count(), "started": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}Z",
                     "sizes": {}}
    with redis_check.stopping(server), tempfile.TemporaryDirectory() as tmp:
        for n in args.entities:
            results["sizes"][str(n)] = bench_size(n, args.reps, server, Path(tmp), args.baseline)
    sizes = list(results["sizes"].values())
    if len(sizes) > 1:  # cost per entity at the largest size over the smallest: 1.0 is linear growth
        small, big = sizes[0], sizes[-1]
        grow = big["entities"] / small["entities"]
        contenders = [w for w in small if w in WAREHOUSES or w == "spark_baseline"]
        results["per_entity_cost_growth"] = {
            f"{w}_{k}": round(big[w][k]["median"] / small[w][k]["median"] / grow, 3)
            for w in contenders for k in ("sync_s", "training_s")}
        results["peak_rss_growth"] = {w: round(big[w]["peak_rss_mb"]["median"] / small[w]["peak_rss_mb"]["median"], 3)
                                      for w in contenders}
    results["load_at_end"] = open("/proc/loadavg").read().strip()
    save(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

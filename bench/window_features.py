"""window_features on DuckDB: full build vs the best hand-written SQL, and an incremental day vs a full build.

Data: `--events` card events (default 5M) over 365 days, `--entities` customers (default 100k), generated in
a DuckDB file by SQL. The feature view: per customer per day with activity, approved spend and attempts over
1d / 7d / 30d, the largest approved amount over 7d and declines over 7d (10 features).

Contenders for the full build (each in a fresh `python` process running `create table ... as <sql>`, which
reports its own wall time and peak RSS; paired per repetition, order rotated):
  hand     the best hand-written DuckDB SQL we know for these windows: one `group by customer, day` pass, then
           window functions over RANGE frames with interval offsets (the reference project's former SQL)
  macro    the SQL dbt compiles from featuremart.window_features for the same windows

Incremental (real `dbt run`s, node execution time from run_results.json): the model over 364 days, one more
day of events inserted, then `dbt run` (incremental, default lookback 2d) against `dbt run --full-refresh`
over the 365 days, paired per repetition, order rotated. Twice per repetition: with the `events` source in
time order (the realistic case: event sources are appended as time goes by, so DuckDB can skip the row groups
before the run's cutoff), and in random order (every run reads all of it), the second figure. The wall time of each `dbt` process is recorded too: the rest
(wall - node) is dbt's own start-up (imports, parsing, connecting), the same for both runs.

    .venv/bin/python bench/window_features.py                  # 5M events, 5 repetitions
    .venv/bin/python bench/window_features.py --events 500000 --reps 3
    .venv/bin/python bench/window_features.py --part incremental   # only the incremental runs
Writes bench/results/window_features.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BARS = {"full macro/hand": 1.3, "incremental day/full": 0.10, "incremental day/full, random-order source": 0.10,
        "memory macro/hand": 1.2}

HAND_SQL = """
with daily as (
    select customer_id, date_trunc('day', txn_ts) + interval 1 day as event_ts,
        sum(case when is_approved then amount end) as spend,
        count(*) as txn_count,
        max(case when is_approved then amount end) as max_amount,
        count(case when not is_approved then 1 end) as declined_count
    from events
    group by all
)
select customer_id, event_ts,
    spend as spend_1d, sum(spend) over w7 as spend_7d, sum(spend) over w30 as spend_30d,
    txn_count as txn_count_1d, sum(txn_count) over w7 as txn_count_7d, sum(txn_count) over w30 as txn_count_30d,
    max(max_amount) over w7 as max_amount_7d, sum(declined_count) over w7 as declined_count_7d
from daily
window
    w7 as (partition by customer_id order by event_ts range between interval 6 days preceding and current row),
    w30 as (partition by customer_id order by event_ts range between interval 29 days preceding and current row)
"""

MODEL = """\
{{{{ featuremart.window_features(
    source=source('raw', 'events'), keys=['customer_id'], timestamp='txn_ts', grain='1d',
    incremental={incremental},
    aggregations=[
        {{'name': 'spend', 'function': 'sum', 'column': 'amount', 'where': 'is_approved',
         'windows': ['1d', '7d', '30d']}},
        {{'name': 'txn_count', 'function': 'count', 'column': '*', 'windows': ['1d', '7d', '30d']}},
        {{'name': 'max_amount', 'function': 'max', 'column': 'amount', 'where': 'is_approved', 'windows': ['7d']}},
        {{'name': 'declined_count', 'function': 'count', 'column': '*', 'where': 'not is_approved',
         'windows': ['7d']}},
    ]) }}}}
"""

RUNNER = textwrap.dedent("""\
    import resource, sys, time, duckdb
    path, sql = sys.argv[1], open(sys.argv[2]).read()
    con = duckdb.connect(path)
    start = time.perf_counter()
    con.execute("create or replace table bench_out as " + sql)
    elapsed = time.perf_counter() - start
    rows = con.execute("select count(*) from bench_out").fetchone()[0]
    con.execute("drop table bench_out")
    print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rows)
""")


def dbt(project: Path, *args: str) -> tuple[dict, float]:
    """A real dbt invocation; returns run_results.json's node timings by model name, and the process's wall
    time."""
    cmd = [str(Path(sys.executable).with_name("dbt")), *args, "--project-dir", str(project), "--profiles-dir",
           str(project)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True,
                          env={**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"})
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"dbt {' '.join(args)} failed:\n{proc.stdout[-3000:]}")
    results = json.loads((project / "target" / "run_results.json").read_text())
    return {r["unique_id"].split(".")[-1]: r["execution_time"] for r in results["results"]}, wall


def make_project(dest: Path) -> Path:
    shutil.copytree(ROOT / "macros", dest / "macros")
    (dest / "models").mkdir()
    (dest / "dbt_project.yml").write_text("name: featuremart\nversion: '0.1.0'\nconfig-version: 2\n"
                                          "profile: wf_bench\nmodel-paths: [models]\nmacro-paths: [macros]\n")
    (dest / "profiles.yml").write_text(f"wf_bench:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
                                       f"      path: '{dest / 'bench.duckdb'}'\n      threads: 1\n")
    (dest / "models" / "_sources.yml").write_text(
        "version: 2\nsources:\n  - name: raw\n    schema: main\n    tables:\n      - name: events\n")
    (dest / "models" / "wf_table.sql").write_text(MODEL.format(incremental="false"))
    (dest / "models" / "wf_incremental.sql").write_text(MODEL.format(incremental="true"))
    return dest


def generate(path: Path, events: int, entities: int) -> None:
    import duckdb

    with duckdb.connect(str(path)) as con:
        con.execute("select setseed(0.14)")
        con.execute(f"""
            create or replace table all_events as
            select 'C' || lpad(cast(cast(floor(random() * {entities}) as integer) as varchar), 7, '0') as customer_id,
                timestamp '2025-01-01' + to_microseconds(cast(floor(random() * 365 * 86400e6) as bigint)) as txn_ts,
                cast(round(random() * 500, 2) as decimal(12, 2)) as amount,
                random() > 0.05 as is_approved
            from range({events})
        """)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def load_events(db: Path, days_365: bool, time_order: bool = False) -> None:
    """The `events` source: all 365 days of the generated events, or the first 364; in the generated (random)
    order, or in time order (as appended day after day: day 365 lands after the 364 days either way)."""
    import duckdb

    with duckdb.connect(str(db)) as con:
        con.execute("create or replace table events as select * from all_events"
                    + ("" if days_365 else " where txn_ts < timestamp '2025-12-31'")
                    + (" order by txn_ts" if time_order else ""))


def full_builds(project: Path, db: Path, reps: int) -> dict:
    """hand vs macro `create table as`, each in a fresh process: {name: {"seconds": [...], "rss": [...]}}."""
    load_events(db, days_365=True)
    dbt(project, "compile", "--select", "wf_table")
    macro_sql = (project / "target" / "compiled" / "featuremart" / "models" / "wf_table.sql").read_text()
    sql_files = {"hand": project / "hand.sql", "macro": project / "macro.sql"}
    sql_files["hand"].write_text(HAND_SQL)
    sql_files["macro"].write_text(macro_sql)
    runner = project / "runner.py"
    runner.write_text(RUNNER)
    order = ["hand", "macro"]
    results = {name: {"seconds": [], "rss": []} for name in order}
    rows = {}
    for rep in range(reps):
        for name in order[rep % 2:] + order[:rep % 2]:
            out = subprocess.run([sys.executable, str(runner), str(db), str(sql_files[name])],
                                 capture_output=True, text=True, check=True).stdout.split()
            results[name]["seconds"].append(float(out[0]))
            results[name]["rss"].append(int(out[1]))
            rows[name] = int(out[2])
        print(f"rep {rep}: hand {results['hand']['seconds'][-1]:.2f}s, "
              f"macro {results['macro']['seconds'][-1]:.2f}s", flush=True)
    if rows["hand"] != rows["macro"]:
        sys.exit(f"the contenders disagree on the row count: {rows}")
    return results


def incremental_runs(project: Path, db: Path, reps: int) -> dict:
    """The incremental day vs the full refresh, as real `dbt run`s, paired, order rotated, for a source in time
    order and in random order: {source order: {name: {"node": [...], "process": [...]}}}."""
    def run(results: dict, name: str, *args: str) -> None:
        nodes, wall = dbt(project, "run", "--select", "wf_incremental", *args)
        results[name]["node"].append(nodes["wf_incremental"])
        results[name]["process"].append(wall)

    def incremental_day(results: dict, time_order: bool) -> None:
        load_events(db, days_365=False, time_order=time_order)
        dbt(project, "run", "--select", "wf_incremental", "--full-refresh")
        load_events(db, days_365=True, time_order=time_order)  # the 364 days unchanged, plus day 365
        run(results, "incremental_day")

    def full_refresh(results: dict, time_order: bool) -> None:
        load_events(db, days_365=True, time_order=time_order)
        run(results, "full_refresh", "--full-refresh")

    order = [incremental_day, full_refresh]
    by_source = {source: {name: {"node": [], "process": []} for name in ("incremental_day", "full_refresh")}
                 for source in ("time_order", "random_order")}
    for rep in range(reps):
        for source, results in by_source.items():
            for contender in order[rep % 2:] + order[:rep % 2]:
                contender(results, source == "time_order")
            print(f"rep {rep}, {source}: " + ", ".join(
                f"{name} {r['node'][-1]:.2f}s ({r['process'][-1]:.2f}s with dbt start-up)"
                for name, r in results.items()) + f"; load {open('/proc/loadavg').read().split()[0]}", flush=True)
    return by_source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--part", choices=["all", "full", "incremental"], default="all",
                        help="measure both parts (default), or only the full builds or the incremental runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "window_features.json")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    print(f"load average at start: {load_start}", flush=True)
    with tempfile.TemporaryDirectory(prefix="wf_bench_") as tmp:
        project = make_project(Path(tmp) / "project")
        db = project / "bench.duckdb"
        generate(db, args.events, args.entities)
        full = full_builds(project, db, args.reps) if args.part in ("all", "full") else None
        runs = incremental_runs(project, db, args.reps) if args.part in ("all", "incremental") else None

    report = {"events": args.events, "entities": args.entities, "reps": args.reps, "load_average_start": load_start,
              "load_average": os.getloadavg(), "seconds": {}, "ratios": {}, "bars": BARS}
    if full:
        report["seconds"].update({name: spread(r["seconds"]) for name, r in full.items()})
        report["peak_rss_bytes"] = {name: spread(r["rss"]) for name, r in full.items()}
        for figure, measure in (("full macro/hand", "seconds"), ("memory macro/hand", "rss")):
            report["ratios"][figure] = spread([m / h for m, h in zip(full["macro"][measure], full["hand"][measure])])
    for source, results in (runs or {}).items():
        inc, ref = results["incremental_day"], results["full_refresh"]
        suffix = "" if source == "time_order" else ", random-order source"
        report["seconds"].update({f"{name}{suffix}": spread(values) for name, values in (
            ("incremental_day", inc["node"]), ("full_refresh", ref["node"]),
            ("incremental_day_process", inc["process"]), ("full_refresh_process", ref["process"]),
            ("dbt_startup", [w - n for r in (inc, ref) for w, n in zip(r["process"], r["node"])]))})
        report["ratios"][f"incremental day/full{suffix}"] = spread([i / f for i, f in zip(inc["node"], ref["node"])])
        report["ratios"][f"incremental day/full, whole dbt processes{suffix}"] = spread(
            [i / f for i, f in zip(inc["process"], ref["process"])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for name, value in report["ratios"].items():
        verdict = f" ({'meets' if value['median'] <= BARS[name] else 'MISSES'} the bar {BARS[name]})" \
            if name in BARS else ""
        print(f"{name}: median {value['median']:.3f} [{value['min']:.3f}-{value['max']:.3f}]{verdict}")
    if runs:
        print(f"load average at start {load_start}, at the end {report['load_average']}")
        startup = report["seconds"]["dbt_startup"]
        print(f"dbt start-up (process wall - node time): median {startup['median']:.1f}s "
              f"[{startup['min']:.1f}-{startup['max']:.1f}] per run")


if __name__ == "__main__":
    main()

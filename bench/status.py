"""`featuremart status` at 100 feature views: the bar is an answer in under 1 s.

Builds the reference project plus 95 generated feature views (100 in all, each a dbt table model with
featuremart meta, tier gold) with `dbt build`, publishes them with `featuremart sync` to a private
redis-server, and runs `dbt source freshness`. Then times, each in a fresh process from the project directory
with the loaded-project cache warm (as a scheduler calling it every few minutes would find it):

  status:    featuremart status --json          (every view and service: one UNION ALL, one GET)
  list:      featuremart list                   (baseline: the same project and registry loading, no status)
  collect:   featuremart.monitoring.status.collect() in one warm process (the status work alone)

each as wall-clock and CPU seconds (the machine is shared: CPU time is the steadier figure). With `--before DIR`
(a source tree of an earlier featuremart, e.g. `git archive main | tar -x -C DIR`), also

  before:    featuremart status --json          with PYTHONPATH=DIR (the same environment, the earlier code)

paired with `status` in every round, for a before/after ratio measured under the same load.

Rounds are paired, the order rotates; prints median and range of each and of status/list per round, and
writes `bench/results/status.json`.

    python bench/status.py                # 7 rounds, 100 views
    python bench/status.py --views 300
    python bench/status.py --before /tmp/featuremart-main
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.project_start import spread, timed  # noqa: E402
from tests.conftest import AS_OF, copy_project, dbt  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

REFERENCE_VIEWS = 5


def generate_views(project: Path, count: int) -> None:
    """`count` more feature views over customer_spend, each its own table model and YAML."""
    folder = project / "models" / "features" / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"bench_view_{i:03d}"
        (folder / f"{name}.sql").write_text(
            "select customer_id, event_ts, spend_1d * " + str(i + 1) + " as spend_scaled, txn_count_7d + "
            + str(i) + " as txn_shifted\nfrom {{ ref('customer_spend') }}\n")
        (folder / f"{name}.yml").write_text(
            f"version: 2\nmodels:\n  - name: {name}\n    description: Generated for bench/status.py.\n"
            "    config:\n      meta:\n        featuremart:\n          entity: customer\n"
            "          timestamp: event_ts\n          tier: gold\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds (at least 5 for a reported figure)")
    parser.add_argument("--views", type=int, default=100, help="feature views in all (default: 100)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "status.json")
    parser.add_argument("--before", type=Path, default=None, metavar="DIR",
                        help="a source tree of an earlier featuremart to time `status` of, paired")
    args = parser.parse_args(argv)
    fm = str(Path(sys.executable).with_name("featuremart"))
    from demo.generate import generate

    with tempfile.TemporaryDirectory(prefix="fm-bench-status-") as tmp_name, RedisServer() as redis_server:
        tmp = Path(tmp_name)
        project = copy_project(tmp / "project")
        generate(project / "data" / "raw", customers=300, seed=7, as_of=AS_OF)  # fresh: status exits 0
        generate_views(project, args.views - REFERENCE_VIEWS)
        print(f"dbt build of {args.views} feature views ...", flush=True)
        dbt(project, "build")
        dbt(project, "source", "freshness", check=False)
        env = {**os.environ, "DO_NOT_TRACK": "1", "FEATUREMART_CACHE_DIR": str(tmp / "cache"),
               "FEATUREMART_REDIS_URL": redis_server.url}
        timed([fm, "sync"], project, env)
        out = subprocess.run([fm, "status", "--json"], cwd=project, env=env, capture_output=True, text=True)
        doc = json.loads(out.stdout)
        views = sum(r["kind"] == "view" for r in doc["rows"])
        assert views == args.views, f"status reported {views} views, not {args.views}"
        timed([fm, "list"], project, env)  # warm the loaded-project cache
        os.environ.update({k: env[k] for k in ("FEATUREMART_CACHE_DIR", "FEATUREMART_REDIS_URL")})
        os.chdir(project)
        from featuremart.monitoring.status import collect
        from featuremart.store import FeatureStore

        def in_process() -> tuple[float, float]:
            with FeatureStore(project) as store:
                store.online  # connected, as a scheduler's long-lived process would be
                started, cpu = time.perf_counter(), time.process_time()
                collect(store, store.select(online_only=True))
                return time.perf_counter() - started, time.process_time() - cpu

        def process(argv: list[str], environ: dict[str, str] = env) -> tuple[float, float]:
            """Wall and CPU seconds (user + system of the child): on a shared machine CPU time is the steadier."""
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = timed(argv, project, environ)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

        contenders = {"status": lambda: process([fm, "status", "--json"]), "list": lambda: process([fm, "list"]),
                      "collect": in_process}
        if args.before:
            earlier = {**env, "PYTHONPATH": str(args.before.resolve())}
            contenders["before"] = lambda: process([fm, "status", "--json"], earlier)
            timed([fm, "status", "--json"], project, earlier)  # its loaded-project cache warm too
        names = list(contenders)
        load_before = [round(x, 2) for x in os.getloadavg()]
        rounds: list[dict[str, float]] = []
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            measured = {name: contenders[name]() for name in order}
            rounds.append({**{n: w for n, (w, _) in measured.items()}, **{f"{n}_cpu": c for n, (_, c) in measured.items()}})
            print(f"round {r + 1}: " + ", ".join(f"{n} {measured[n][0]:.3f}s (cpu {measured[n][1]:.3f}s)"
                                                 for n in order), flush=True)
        names += [f"{n}_cpu" for n in names]
    record = {"benchmark": "status", "views": args.views, "rounds": args.rounds, "cpus": os.cpu_count(),
              "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "python": platform.python_version(),
              "seconds": {name: spread([r[name] for r in rounds]) for name in names},
              "ratios": {"status/list": spread([r["status"] / r["list"] for r in rounds]),
                         "status/list cpu": spread([r["status_cpu"] / r["list_cpu"] for r in rounds]),
                         **({"status/before": spread([r["status"] / r["before"] for r in rounds]),
                             "status/before cpu": spread([r["status_cpu"] / r["before_cpu"] for r in rounds])}
                            if args.before else {})},
              "per_round": rounds}
    print(f"\n{args.views} views, {args.rounds} rounds; load average before {load_before}, after "
          f"{record['load_average_after']} ({os.cpu_count()} CPUs)")
    lines = [(f"{name:12s}", s, "s", 3) for name, s in record["seconds"].items()]
    lines += [(f"{name:16s}", s, "x", 2) for name, s in record["ratios"].items()]
    for label, s, unit, digits in lines:
        print(f"  {label} {s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]")
    os.makedirs(args.out.parent, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Start-up of a project command: `featuremart list` with the loaded project cached against dbt's loader.

Every project command (`sync`, `list`, `validate`, `training-set`, ...) first loads the dbt project. dbt's
loader costs seconds, nearly all of it importing dbt; featuremart caches its result keyed by every input
(featuremart.dbtcore, docs/training-sets.md "Opening the project"). This times, each in a fresh process from
the project directory, on an unbuilt copy of the reference project (no warehouse is read by `list` beyond the
manifest, so it is built once here with `dbt build`):

  cold:      featuremart list, FEATUREMART_CACHE_DIR empty (dbt's loader runs, as on a first command)
  cached:    featuremart list, the cache filled by an earlier run
  baseline:  python -c "import featuremart.cli"  (the interpreter and featuremart's own imports)

Runs are paired (one of each per round) and the order within a round rotates; prints the median and range
of each and of the per-round ratios cold/cached and cached/baseline, and writes
`bench/results/project_start.json`.

    python bench/project_start.py               # 7 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import build_reference_project  # noqa: E402


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds (at least 5 for a reported figure)")
    parser.add_argument("--project", type=Path, default=None, help="an already built reference project to reuse")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "project_start.json")
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    fm = str(Path(sys.executable).with_name("featuremart"))
    with tempfile.TemporaryDirectory(prefix="fm-bench-start-") as tmp_name:
        tmp = Path(tmp_name)
        project = args.project or build_reference_project(tmp / "project", customers=300)
        base_env = {**os.environ, "DO_NOT_TRACK": "1"}
        cached_env = {**base_env, "FEATUREMART_CACHE_DIR": str(tmp / "cache")}
        timed([fm, "list"], project, cached_env)  # fills the cache
        cold_dir = tmp / "cold"

        def cold() -> float:
            shutil.rmtree(cold_dir, ignore_errors=True)
            return timed([fm, "list"], project, {**base_env, "FEATUREMART_CACHE_DIR": str(cold_dir)})

        contenders = {
            "cold": cold,
            "cached": lambda: timed([fm, "list"], project, cached_env),
            "baseline": lambda: timed([sys.executable, "-c", "import featuremart.cli"], project, base_env),
        }
        names = list(contenders)
        rounds: list[dict[str, float]] = []
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            rounds.append({name: contenders[name]() for name in order})
            print(f"round {r + 1}: " + ", ".join(f"{n} {rounds[-1][n]:.2f}s" for n in order), flush=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    summary = {name: spread([r[name] for r in rounds]) for name in names}
    ratios = {"cold/cached": spread([r["cold"] / r["cached"] for r in rounds]),
              "cached/baseline": spread([r["cached"] / r["baseline"] for r in rounds])}
    print(f"\n{args.rounds} rounds; load average before {load_before}, after {load_after} ({os.cpu_count()} CPUs)")
    for name, s in summary.items():
        print(f"  {name:9s} {s['median']:.2f}s [{s['min']:.2f}-{s['max']:.2f}]")
    for name, s in ratios.items():
        print(f"  {name:16s} {s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "project_start", "rounds": args.rounds, "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after,
        "python": platform.python_version(), "seconds": summary, "ratios": ratios, "per_round": rounds,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cold start of `featuremart get` for one entity against a bare `python -c "import redis; ... GET"`.

Builds the reference project at `--customers` customers in a temp dir, runs `dbt build` and a real
`featuremart sync` into a private redis-server started here (never a server of yours), then times, from a
fresh process each time and from an empty temp directory (no dbt project; only FEATUREMART_REDIS_URL set):

  baseline:     python -c "import redis; redis.Redis.from_url(URL).get(KEY)"   (one GET of one entity's key)
  featuremart:  featuremart get --features customer_spend.spend_7d customer_id=C...

Runs are paired (one of each per round) and the order within a round rotates, so both see the same machine
noise; prints the median and range of each and of the per-round ratio, and writes
`bench/results/cold_start.json`. Bar: the median ratio at most 2.0.

    python bench/cold_start.py               # 9 rounds
    python bench/cold_start.py --rounds 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import build_reference_project  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

BAR = 2.0
CUSTOMER = "C0000001"


def featuremart_command() -> list[str]:
    script = Path(sys.executable).with_name("featuremart")
    return [str(script)] if script.exists() else [sys.executable, "-m", "featuremart.cli"]


def timed(cmd: list[str], cwd: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="paired runs (at least 5)")
    parser.add_argument("--customers", type=int, default=300, help="size of the reference project's data")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")

    with tempfile.TemporaryDirectory(prefix="fm-cold-") as tmp, RedisServer() as server:
        project = build_reference_project(Path(tmp) / "project", customers=args.customers)
        env = {**os.environ, "FEATUREMART_REDIS_URL": server.url}
        subprocess.run(featuremart_command() + ["sync", "--project-dir", str(project), "--profiles-dir",
                                                str(project)], env=env, check=True, capture_output=True)
        client = server.client()
        key = next(k.decode() for k in client.scan_iter(match=f"fm:{{customer_id={CUSTOMER}}}:customer_spend:*"))
        client.close()
        empty = Path(tmp) / "serving-host"
        empty.mkdir()
        contenders = {
            "baseline": [sys.executable, "-c",
                         f"import redis; redis.Redis.from_url({server.url!r}).get({key!r})"],
            "featuremart": featuremart_command() + ["get", "--features", "customer_spend.spend_7d",
                                                    f"customer_id={CUSTOMER}"],
        }
        names = list(contenders)
        for name in names:  # warm the file system cache once; not timed
            timed(contenders[name], str(empty), env)
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(args.rounds):
            order = names[i % 2:] + names[:i % 2]
            for name in order:
                times[name].append(timed(contenders[name], str(empty), env))

    ratios = [f / b for f, b in zip(times["featuremart"], times["baseline"])]
    result = {name: summary(values) for name, values in times.items()}
    result["ratio"] = summary(ratios)
    print(f"cold start, {args.rounds} paired rounds (seconds; median [min-max])")
    for name in names:
        s = result[name]
        print(f"  {name:<12} {s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]")
    r = result["ratio"]
    print(f"  {'ratio':<12} {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]  (bar: <= {BAR})")
    out = ROOT / "bench" / "results" / "cold_start.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "python": platform.python_version(), "raw": times,
                               **result}, indent=2))
    if r["median"] > BAR:
        raise SystemExit(f"median ratio {r['median']:.2f} is above the bar {BAR}")


if __name__ == "__main__":
    main()

"""The incremental day of window_features with this tree's macros against another tree's (e.g. main's), paired.

Same data and model as bench/window_features.py. Per source order (time, random) and per macro tree, one
prepared DuckDB file: day 365 loaded, the model built over the 364 days before it. Each repetition copies the
prepared file back and times the incremental `dbt run` (node execution time), the two trees in rotated order.
The ratio new/baseline within a repetition is steadier on a shared machine than either time.

    .venv/bin/python bench/window_features_ab.py --baseline-macros /work/main/macros --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import window_features as wf


def prepare(root: Path, name: str, macros: Path, events: int, entities: int, time_order: bool) -> Path:
    """A project using `macros`, its database holding 365 days of events and the model over the first 364."""
    project = wf.make_project(root / name)
    shutil.rmtree(project / "macros")
    shutil.copytree(macros, project / "macros")
    db = project / "bench.duckdb"
    wf.generate(db, events, entities)
    wf.load_events(db, days_365=False, time_order=time_order)
    wf.dbt(project, "run", "--select", "wf_incremental", "--full-refresh")
    wf.load_events(db, days_365=True, time_order=time_order)
    shutil.copy(db, root / f"{name}.prepared")
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-macros", type=Path, required=True)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=wf.ROOT / "bench" / "results" / "window_features_ab.json")
    args = parser.parse_args()
    report = {"load_average_start": os.getloadavg(), "reps": args.reps, "events": args.events}
    trees = {"baseline": args.baseline_macros, "new": wf.ROOT / "macros"}
    with tempfile.TemporaryDirectory(prefix="wf_ab_") as tmp:
        for source in ("time_order", "random_order"):
            projects = {tree: prepare(Path(tmp), f"{tree}_{source}", macros, args.events, args.entities,
                                      source == "time_order") for tree, macros in trees.items()}
            times = {tree: [] for tree in trees}
            order = list(trees)
            for rep in range(args.reps):
                for tree in order[rep % 2:] + order[:rep % 2]:
                    shutil.copy(Path(tmp) / f"{tree}_{source}.prepared", projects[tree] / "bench.duckdb")
                    nodes, _ = wf.dbt(projects[tree], "run", "--select", "wf_incremental")
                    times[tree].append(nodes["wf_incremental"])
                print(f"{source} rep {rep}: baseline {times['baseline'][-1]:.2f}s, new {times['new'][-1]:.2f}s; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            ratio = wf.spread([n / b for n, b in zip(times["new"], times["baseline"])])
            report[source] = {tree: wf.spread(values) for tree, values in times.items()} | {"new/baseline": ratio}
            print(f"{source}: new/baseline median {ratio['median']:.3f} [{ratio['min']:.3f}-{ratio['max']:.3f}]")
            for tree in trees:
                shutil.rmtree(projects[tree])
                (Path(tmp) / f"{tree}_{source}.prepared").unlink()
    report["load_average_end"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=2))
    print(f"load average at start {report['load_average_start']}, at the end {report['load_average_end']}")


if __name__ == "__main__":
    main()

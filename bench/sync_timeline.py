"""Timeline of a whole `featuremart sync` process at N entities: where Redis sits idle.

A full sync process is bound by Redis (one core busy about 3 s per 1M `SET … PXAT`); every moment Redis is idle
while the process runs is time the whole process spends above the write ceiling. This script runs the same
`featuremart sync --json` process as bench/sync.py (a fresh store and state each time) with marks recorded
from inside it, and the redis-server's CPU sampled from outside (/proc, every 5 ms), on one clock
(CLOCK_MONOTONIC is system-wide):

  start        the parent spawns the process
  cli          featuremart.cli imported
  prefetch     the first view's reads started (warehouse.Prefetch)
  imports      featuremart.sync imported (the last large import before any write)
  batch        the warehouse's first batch ready (the latest-value aggregate done)
  first_write  the first chunk handed to a writer
  stats_start  the statistics query started; stats: done
  last_write   every write acknowledged
  commit       the state committed
  publish      the registry switched
  upload_start the durable copy's upload started; upload: done
  seal         the store's generation moved
  run_end      Syncer.run returned
  exit         the process reaped by the parent

Each mark has the wall seconds since `start` and the process's CPU seconds (all threads) at that moment. Redis
idle is the process's wall time minus the redis-server CPU seconds spent meanwhile; split into before the
first write, during the writes, and after the last one. The marks are patched in by this script's child (a
meta-path hook wraps the functions as featuremart imports its modules, so no import moves): featuremart itself
carries no instrumentation.

    python bench/sync_timeline.py --entities 1000000 --reps 3 [--ref-python /work/wt-syncbefore/.venv/bin/python]

`--ref-python`: also run another checkout's featuremart (its venv's python runs this same child), alternated
with this one. Results: bench/results/sync_timeline.json.
"""

from __future__ import annotations

import argparse
import functools
import importlib.abc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The marks in the order a sync reaches them (upload_start may fall before or after publish).
MARKS = ("cli", "imports", "prefetch", "batch", "first_write", "last_write", "commit", "stats_start", "stats",
         "upload_start", "upload", "publish", "seal", "run_end", "exit")


# ---- the child: a `featuremart` process with marks ----------------------------------------------------------------

def child(out: str, argv: list[str]) -> None:
    """Run `featuremart <argv>` in this process, recording the marks; write them to `out` as JSON."""
    marks: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()

    def mark(name: str, first: bool = True) -> None:
        with lock:
            if not (first and name in marks):
                marks[name] = (time.perf_counter(), time.process_time())

    def after(fn, name, first=True):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            finally:
                mark(name, first)
        return wrapped

    def before(fn, name):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            mark(name)
            return fn(*args, **kwargs)
        return wrapped

    def patch_store(module) -> None:
        original = module.OnlineStore.write_encoded

        def write_encoded(self, chunks, **kwargs):
            def first(items):
                for item in items:
                    mark("first_write")
                    yield item
            try:
                return original(self, first(chunks), **kwargs)
            finally:
                mark("last_write", first=False)
        module.OnlineStore.write_encoded = write_encoded

    def patch_warehouse(module) -> None:
        module.Prefetch.__init__ = before(module.Prefetch.__init__, "prefetch")
        module.Prefetch._run = after(module.Prefetch._run, "batch")

    def patch_state(module) -> None:
        module.SyncState.commit_first = after(module.SyncState.commit_first, "commit")
        module.SyncState.commit = after(module.SyncState.commit, "commit")

    def patch_durable(module) -> None:
        module.DurableState.upload = before(after(module.DurableState.upload, "upload", first=False),
                                            "upload_start")

    def patch_sync(module) -> None:
        module.Syncer._publish = after(module.Syncer._publish, "publish")
        module.Syncer.run = after(module.Syncer.run, "run_end")
        module.DurableState.seal = after(module.DurableState.seal, "seal")
        mark("imports")

    def patch_cli(module) -> None:
        mark("cli")

    def patch_stats(module) -> None:
        module.profile_view = before(after(module.profile_view, "stats", first=False), "stats_start")

    patches = {"featuremart.online.store": patch_store, "featuremart.warehouse": patch_warehouse,
               "featuremart.state": patch_state, "featuremart.durable": patch_durable,
               "featuremart.sync": patch_sync, "featuremart.cli": patch_cli,
               "featuremart.monitoring.stats": patch_stats}

    class Hook(importlib.abc.MetaPathFinder):
        """Patch a module of `patches` right after it executed (its importer then sees the patched one)."""

        def find_spec(self, name, path, target=None):
            if name not in patches:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    run = spec.loader.exec_module

                    def exec_module(module, run=run, name=name):
                        run(module)
                        patches[name](module)
                    spec.loader.exec_module = exec_module
                    return spec
            return None

    sys.meta_path.insert(0, Hook())
    code = 0
    try:
        from featuremart.cli import main
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        Path(out).write_text(json.dumps({"marks": marks, "code": code}))


# ---- the parent: project, redis, runs, analysis --------------------------------------------------------------------

class RedisCpu:
    """The redis-server's CPU seconds sampled every `every` seconds from /proc, in a thread: (perf_counter, cpu)."""

    def __init__(self, pid: int, every: float = 0.005):
        self.path, self.every = f"/proc/{pid}/stat", every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu(self) -> float:
        fields = Path(self.path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.perf_counter(), self.cpu()))

    def __enter__(self) -> RedisCpu:
        self.samples.append((time.perf_counter(), self.cpu()))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter(), self.cpu()))

    def between(self, start: float, end: float) -> float:
        """Redis CPU seconds spent from `start` to `end` (samples interpolated linearly)."""
        return self._at(end) - self._at(start)

    def _at(self, moment: float) -> float:
        samples = self.samples
        if moment <= samples[0][0]:
            return samples[0][1]
        for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
            if t0 <= moment <= t1:
                return c0 + (c1 - c0) * ((moment - t0) / (t1 - t0) if t1 > t0 else 0)
        return samples[-1][1]


def run_once(python: str, dest: Path, env: dict, redis_pid: int, tmp: Path) -> dict:
    """One marked `featuremart sync` process: its marks (s since start, CPU s) and Redis's busy and idle time."""
    out = tmp / "marks.json"
    argv = ["sync", "--json", "--project-dir", str(dest), "--profiles-dir", str(dest)]
    with RedisCpu(redis_pid) as redis_cpu:
        start = time.perf_counter()
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--child", str(out), "--", *argv],
                              capture_output=True, text=True, env=env)
        end = time.perf_counter()
    found = json.loads(out.read_text())
    if proc.returncode or found["code"]:
        raise SystemExit(f"featuremart sync failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    marks = {name: (t, cpu) for name, (t, cpu) in found["marks"].items()}
    marks["exit"] = (end, None)
    first, last = marks["first_write"][0], marks["last_write"][0]
    busy = {"before_first_write": redis_cpu.between(start, first), "writes": redis_cpu.between(first, last),
            "after_last_write": redis_cpu.between(last, end)}
    spans = {"before_first_write": first - start, "writes": last - first, "after_last_write": end - last}
    return {
        "seconds": round(end - start, 3),
        "marks": {n: {"at": round(marks[n][0] - start, 3), "cpu": None if marks[n][1] is None else round(marks[n][1], 3)}
                  for n in MARKS if n in marks},
        "redis_cpu": {k: round(v, 3) for k, v in busy.items()},
        "redis_idle": {k: round(spans[k] - busy[k], 3) for k in spans},
    }


def summary(runs: list[dict]) -> dict:
    """Median [min-max] of every mark's time and CPU, and of Redis's busy and idle seconds per phase."""
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"

    out: dict = {"seconds": spread([r["seconds"] for r in runs]), "marks": {}}
    for name in MARKS:
        found = [r["marks"][name] for r in runs if name in r["marks"]]
        if found:
            out["marks"][name] = {"at": spread([m["at"] for m in found])}
            if found[0]["cpu"] is not None:
                out["marks"][name]["cpu"] = spread([m["cpu"] for m in found])
    for side in ("redis_cpu", "redis_idle"):
        out[side] = {k: spread([r[side][k] for r in runs]) for k in runs[0][side]}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[3:])
        return 0
    sys.path.insert(0, str(ROOT))
    from bench import redis_check
    from bench.sync import fresh, project

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ref-python", default=None, metavar="EXE",
                        help="also run another checkout's featuremart, with its venv's python")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sync_timeline.json")
    redis_check.add_arguments(parser)
    args = parser.parse_args(argv)
    contenders = {"this": sys.executable, **({"ref": args.ref_python} if args.ref_python else {})}
    server, info = redis_check.start(args)
    results: dict = {"entities": args.entities, "redis": info, "runs": {n: [] for n in contenders}}
    with redis_check.stopping(server), tempfile.TemporaryDirectory() as tmp:
        dest = project(Path(tmp) / "p", args.entities, "unused")
        client = server.client(socket_timeout=600)
        pid = int(client.info("server")["process_id"])
        env = {**os.environ, "FEATUREMART_REDIS_URL": server.url}
        for name, python in contenders.items():  # fills each checkout's project caches: not counted
            fresh(client, dest)
            run_once(python, dest, env, pid, Path(tmp))
        names = list(contenders)
        for rep in range(args.reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                fresh(client, dest)
                run = run_once(contenders[name], dest, env, pid, Path(tmp))
                results["runs"][name].append(run)
                print(f"{name} rep {rep + 1}: {json.dumps(run)}", flush=True)
        client.close()
    results["load_average"] = os.getloadavg()
    results["summary"] = {n: summary(r) for n, r in results["runs"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

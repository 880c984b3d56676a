"""A real `featuremart serve` process (uvicorn) on a free loopback port, for tests that need real sockets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.redis_server import free_port

#: Variables a serving host would not have: the tests drop them so nothing but the Redis URL is found.
PROJECT_VARS = ("FEATUREMART_TARGET", "FEATUREMART_DUCKDB_PATH", "FEATUREMART_DATA_DIR", "DBT_PROFILES_DIR",
                "DBT_PROJECT_DIR", "FEATUREMART_PREFIX")


def serving_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a serving host: the parent's, without project variables, with only the Redis URL."""
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_VARS and k != "FEATUREMART_REDIS_URL"}
    if redis_url:
        env["FEATUREMART_REDIS_URL"] = redis_url
    return {**env, **extra}


def featuremart_command() -> list[str]:
    return [sys.executable, "-m", "featuremart.cli"]


class FeatureServer:
    """`featuremart serve ARGS` started in `cwd`; a context manager that waits for /healthz and stops it."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str, ready_timeout: float = 60.0):
        self.port = free_port()
        self.cwd, self.env, self.args, self.ready_timeout = cwd, env, args, ready_timeout
        self.proc: subprocess.Popen | None = None
        self.output = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FeatureServer:
        self.proc = subprocess.Popen(featuremart_command() + ["serve", "--port", str(self.port), *self.args],
                                     cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"featuremart serve exited {self.proc.returncode}:\n{self.stop()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"featuremart serve did not answer /healthz:\n{self.stop()}")

    def stop(self) -> str:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                self.output, _ = self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.output, _ = self.proc.communicate()
        return self.output

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request(self, method: str, path: str, body: dict | bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def children(self) -> list[int]:
        """The process ids of the server's child processes (uvicorn workers)."""
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def open_fds(self) -> int:
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

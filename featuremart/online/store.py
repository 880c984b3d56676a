"""The connection and bulk I/O layer of the online store: one Redis (or Valkey) server or a Redis Cluster, by URL.

`OnlineStore` knows nothing of features: it moves bytes. Its reason to exist is the bulk write: redis-py spends
several microseconds of Python per pipelined command, so `write` hand-encodes RESP for a whole chunk of
`SET key value PXAT ms` commands into one buffer, sends it with one system call, and reads the replies with a
hiredis reader straight from the socket. Everything else (`mget`, `delete`, `scan`, JSON values, the sync lock)
goes through redis-py, with transient errors retried.

Redis Cluster: detected from the server (`INFO cluster` says `cluster_enabled:1`), so the URL of any node will do.
Then the small commands go through redis-py's `RedisCluster` (slot routing, MOVED/ASK); the bulk write splits each
chunk by the slot of each key (every key of one entity carries one hash tag `{...}`), sends each master its share on
its own connection and thread, with the same pipelined path, and resends what a resharding redirected (MOVED: to
the new owner; ASK: with `ASKING` first). `mget` is one MGET per slot, pipelined per node; `scan` covers every
master. Bookkeeping keys share one hash tag (`keys.meta_key`), so the fenced script and MULTI/EXEC work there.

Example:
    >>> store = OnlineStore.connect(None, embedded_dir=Path(".featuremart"))  # doctest: +SKIP
    >>> store.write([b"fm:{customer_id=C1}:spend:ab12"], [b"..."], [1_900_000_000_000])  # doctest: +SKIP
    1
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from featuremart.errors import InvalidURLError, OnlineStoreError, StoreChangedError, SyncLockedError
from featuremart.online import keys as key_format

try:  # redis[hiredis] is a dependency; the pure-Python fallback only keeps a broken install working.
    import hiredis
except ImportError:  # pragma: no cover
    hiredis = None

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Rows per hand-encoded buffer: big enough that one system call and one round trip serve many rows, small
#: enough that a chunk retried after a dropped connection costs little (about 1.5 MB with 120-byte values).
WRITE_CHUNK_ROWS = 10_000
#: Keys per `UNLINK`.
DELETE_CHUNK_KEYS = 10_000
#: `mget` is one round trip up to this many keys, then chunks (one huge reply would stall the server).
MGET_CHUNK_KEYS = 100_000

_RETRY_ATTEMPTS = 5
_RETRY_BASE_SECONDS = 0.1
_RETRY_MAX_TOTAL_SECONDS = 15.0
_TRANSIENT_REPLY_PREFIXES = ("BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN")
_REDIRECT_PREFIXES = ("MOVED ", "ASK ")
#: Rounds of resending redirected writes (each after refreshing the slot map) before a write gives up.
_REDIRECT_ROUNDS = 20
#: Start-up tries of a cluster client: each moves redis-py's default node to another live master.
_START_RETRIES = 5
_ASKING = b"*1\r\n$6\r\nASKING\r\n"
_URL_HINT = "is FEATUREMART_REDIS_URL right? is the server running and reachable from here?"
_URL_FORM = ("write FEATUREMART_REDIS_URL as redis://[[user]:password@]host[:port][/db], rediss://... for TLS, or "
             "unix:///path/to/redis.sock?db=N")

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end
"""
# KEYS: store_id, lock, generation, then keys to set; ARGV: their expected values, the server's run_id ('' = not
# checked), then the values to set. Sets nothing and names the first thing that changed, or sets and says 'ok'.
_FENCED = """
if ARGV[4] ~= '' and string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') ~= ARGV[4] then return 'server' end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'store_id' end
if (redis.call('GET', KEYS[3]) or '') ~= ARGV[3] then return 'generation' end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'lock' end
for i = 4, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1]) end
return 'ok'
"""
_CHANGED = {
    "server": "the Redis server restarted or failed over (its run_id changed)",
    "store_id": "its store_id changed or vanished (flushed, or a new server)",
    "generation": "its generation changed (restored from an older snapshot, a lagging replica, or another sync)",
    "lock": "the sync lock was lost (expired, or the server restarted)",
}


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)?(?P<userinfo>.*)@", re.DOTALL)
_PASSWORD_ARG = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with its password (in the userinfo or a `password=` query argument) replaced by `***`.

    Found without URL parsing, which a password holding `/ # ? @` defeats (`redis://u:pa/ss#w?d@host/0` parses
    as host `u`, port `pa`): everything from the first `:` after the scheme up to the LAST `@` is the password.
    An `@` elsewhere only redacts more than needed, never less.
    """
    match = _USERINFO.match(url)
    if match:
        user, sep, _password = match["userinfo"].partition(":")
        if sep:
            url = f"{match['scheme'] or ''}{user}:***@{url[match.end():]}"
    return _PASSWORD_ARG.sub(r"\1***", url)


def _check_database(url: str) -> None:
    """Refuse a `redis://` / `rediss://` URL whose path is not a database number: redis-py would silently use
    database 0 for `redis://host/feature`, so a sync and its readers could meet in the wrong database."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss"):
        return
    path = re.split(r"[?#]", rest.rpartition("@")[2], maxsplit=1)[0].partition("/")[2]
    if path.strip("/") and not unquote(path).strip("/").isdigit():
        raise ValueError(f"the path /{path} is not a database number (redis-py would use database 0)")


def redacted_error(exc: BaseException, url: str) -> str:
    """The text of an error about `url`, unless it quotes a piece of the password (redis-py's URL errors can:
    "Port could not be cast to integer value as 'pa'")."""
    text = str(exc)
    match = _USERINFO.match(url)
    secret = match["userinfo"].partition(":")[2] if match else ""
    secret_args = [m.group(0).split("=", 1)[1] for m in _PASSWORD_ARG.finditer(url)]
    pieces = [p for s in (secret, *secret_args) for p in re.split(r"[/#?@:&]", s) if len(p) >= 2]
    return "it cannot be parsed as a Redis URL" if any(p in text for p in pieces) else text


@dataclass(frozen=True)
class Fence:
    """What a sync saw of the store when it started; if any of it changed, what it wrote may be lost.

    `store_id` and `generation` are the JSON values of those keys ('' when absent), `lock_value` the raw value
    of the sync's lock ('' for none), `server` the server's run_id (None where INFO is not permitted).
    """

    store_id_key: str
    store_id: str
    generation_key: str
    generation: str
    lock_key: str
    lock_value: str
    server: str | None


def _get_connection(pool: redis.ConnectionPool) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py 5 requires a command name
        return pool.get_connection("SET")


#: The errors `OnlineStore._retry` looks at (retrying those `_is_transient` finds transient)
_RETRIED = (redis.RedisError, OSError, redis.exceptions.RedisClusterException)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, redis.exceptions.RedisClusterException):  # e.g. slots not covered while a master is down
        return True
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError)):
        return not isinstance(exc, redis.AuthenticationError)
    if isinstance(exc, redis.ResponseError):
        return str(exc).startswith(_TRANSIENT_REPLY_PREFIXES)
    return False


def _as_bytes(value: bytes | str | memoryview) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _as_bytes_list(values: Sequence[bytes | str]) -> list[bytes]:
    # The common case (all bytes, or all str from Arrow's to_pylist) without a per-item isinstance in Python.
    if values and isinstance(values[0], bytes):
        try:
            b"".join(values)  # raises TypeError if any item is not bytes-like
            return list(values) if not isinstance(values, list) else values
        except TypeError:
            pass
    return [_as_bytes(v) for v in values]


def _drop_connection(conns: list[Any], lock: threading.Lock, conn: Any) -> None:
    with lock:
        if conn in conns:
            conns.remove(conn)
    conn.disconnect()


#: RESP bulk string headers by length, for `_encode_mget`
_BULK_HEADERS = tuple(f"${n}" for n in range(1024))


def _encode_mget(keys: Sequence[bytes | str]) -> bytes:
    """RESP for `MGET keys...`. A batch of ASCII str keys (what the reader builds) is written as one str join with
    no Python step per key (at 300 keys, half the time of hiredis.pack_command); anything else (bytes, non-ASCII,
    a few keys) goes through hiredis.pack_command."""
    if len(keys) >= 16:
        pieces: list[Any] = [None] * (2 * len(keys))
        try:
            pieces[0::2] = map(_BULK_HEADERS.__getitem__, map(len, keys))
            pieces[1::2] = keys
            text = "\r\n".join(pieces)
        except (TypeError, IndexError):  # a bytes key, or one longer than the table
            text = ""
        if text and text.isascii():
            return b"*%d\r\n$4\r\nMGET\r\n%s\r\n" % (len(keys) + 1, text.encode())
    return hiredis.pack_command(("MGET", *keys))


def _shown(key: Any) -> Any:
    """A key for a message: Arrow scalars (from write_encoded callers) as plain Python values."""
    return key.as_py() if hasattr(key, "as_py") else key


def _ms_to_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


class _ReadConnection:
    """One thread's connection for reads: redis-py connects it (TLS, AUTH, SELECT), then `request` sends a packed
    command with one `sendall` and parses its reply with the connection's own hiredis reader, straight from the
    socket (as `_ReplyReader` reads a bulk write's replies). redis-py's own send and read paths (health checks,
    maintenance-notification hooks, its parser's frames) cost about 8 µs a call beyond this, 6% of a one-entity
    read (bench/README.md). The connection speaks RESP2, so no push message can arrive between replies.

    An error reply is returned (a `hiredis.ReplyError`), not raised: the connection stays usable. Any exception
    drops the connection; the next request connects again."""

    __slots__ = ("conn", "pid", "_sock", "_reader", "_buffer")

    def __init__(self, conn: Any):
        self.conn, self.pid = conn, os.getpid()
        self._sock: Any = None
        self._reader: Any = None
        self._buffer = bytearray(1 << 16)

    def request(self, packed: bytes) -> Any:
        sock = self._sock
        try:
            if sock is None:
                self.conn.connect()
                sock = self._sock = self.conn._sock
                self._reader = hiredis.Reader(notEnoughData=_NOT_ENOUGH_DATA)
            sock.sendall(packed)
            reader, buffer = self._reader, self._buffer
            reply = reader.gets()
            while reply is _NOT_ENOUGH_DATA:
                n = sock.recv_into(buffer)
                if not n:
                    raise redis.ConnectionError("Connection closed by the server while reading a reply")
                reader.feed(buffer, 0, n)
                reply = reader.gets()
            return reply
        except BaseException:
            self._sock = None
            self.conn.disconnect()
            raise


#: What the hiredis reader of `_ReadConnection` returns while a reply is incomplete
_NOT_ENOUGH_DATA = object()
_REPLY_ERROR = hiredis.ReplyError if hiredis is not None else None


class OnlineStore:
    """A connection pool to one Redis server, with the bulk and batched operations the online store needs.

    Build it with `OnlineStore.connect`. All methods take and return bytes (or JSON-able objects for
    `get_json`/`set_json`); keys are full keys, already prefixed by the caller.
    """

    def __init__(self, client: redis.Redis | RedisCluster, *, url: str, prefix: str = "fm", embedded: Any = None):
        self._redis = client
        #: True on a Redis Cluster (`connect` detects it); then `_node_ids` maps each master seen to its run_id.
        self.cluster = isinstance(client, RedisCluster)
        self._node_ids: dict[str, str | None] = {}
        #: Writes a resharding redirected, by kind (MOVED, ASK), over this store's life: they were resent.
        self.redirected = {"MOVED": 0, "ASK": 0}
        self._url = redact_url(url)  # only the redacted form is ever kept
        self.prefix = prefix
        self._embedded = embedded
        self._unlock_script = client.register_script(_UNLOCK)
        self._refresh_script = client.register_script(_REFRESH)
        self._fenced_script = client.register_script(_FENCED)
        self._written_on: str | None = None  # the server (run_id) that acknowledged this store's last write()
        #: each thread's connection for `mget` (`_mget_direct`), and all of them, closed by `close`
        self._reads = threading.local()
        self._reads_lock = threading.Lock()
        self._read_conns: list[Any] = []

    @classmethod
    def connect(cls, url: str | None, *, embedded_dir: Path, prefix: str = "fm") -> OnlineStore:
        """Connect to `url` (`redis://`, `rediss://`, `unix://`), or with `None` to the embedded server.

        The embedded server (see `featuremart.online.embedded`) persists to `embedded_dir / "redis.db"` and is
        shared by every process using that directory, so the quick start needs no Redis. The server is pinged
        here, so a wrong URL fails now, with a message that names it (password redacted).
        """
        embedded = None
        if url is None:
            from featuremart.online.embedded import EmbeddedRedis

            embedded = EmbeddedRedis.start(Path(embedded_dir))
            url = embedded.url
        shown = redact_url(url)
        try:
            _check_database(url)
            client = redis.Redis.from_url(
                url,
                # The store retries itself (with backoff, bounded); a second retry layer would multiply the waits.
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=5,
                socket_timeout=60,
                health_check_interval=30,
                decode_responses=False,
            )
        except ValueError as exc:
            if embedded is not None:
                embedded.release()
            raise InvalidURLError(f"Invalid Redis URL {shown}: {redacted_error(exc, url)}; {_URL_FORM}") from None
        store = cls(client, url=url, prefix=prefix, embedded=embedded)
        try:
            store._retry(f"PING {shown}", client.ping, budget_seconds=5.0)
        except OnlineStoreError as exc:
            store.close()
            raise OnlineStoreError(f"Cannot reach the online store at {shown}: {exc.__cause__ or exc}; "
                                   f"{_URL_HINT}") from None
        except redis.AuthenticationError as exc:
            store.close()
            raise OnlineStoreError(f"The online store at {shown} refused the credentials ({exc}); check the "
                                   "user name and password in FEATUREMART_REDIS_URL.") from None
        except redis.RedisError as exc:
            store.close()
            raise OnlineStoreError(f"The online store at {shown} answered PING with an error: {exc}; "
                                   f"{_URL_HINT}") from None
        if embedded is None and store._cluster_enabled():
            store._redis.close()
            store._redis.connection_pool.disconnect()
            try:
                # redis-py asks its default node (the first master of CLUSTER SLOTS) for COMMAND at start-up: a
                # retry per master lets that move to a live master when the first is down, so readers still
                # start and serve the keys on live masters. Then the store's own retry takes over.
                cluster = RedisCluster.from_url(url, retry=Retry(NoBackoff(), _START_RETRIES),
                                                socket_connect_timeout=5, socket_timeout=60,
                                                health_check_interval=30, decode_responses=False)
                cluster.set_retry(Retry(NoBackoff(), 0))
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                raise OnlineStoreError(f"The online store at {shown} is a Redis Cluster node, but the cluster "
                                       f"cannot be reached through it: {exc}; {_URL_HINT}") from None
            store = cls(cluster, url=url, prefix=prefix)
        return store

    def _cluster_enabled(self) -> bool:
        """Whether the server is a Redis Cluster node (`INFO cluster`); False where INFO is not permitted (then a
        cluster answers writes with MOVED, which fails loudly)."""
        try:
            return str(self._retry("INFO cluster", lambda: self._redis.info("cluster"))
                       .get("cluster_enabled", 0)) == "1"
        except redis.ResponseError:
            return False

    @property
    def url(self) -> str:
        """The server URL, password redacted."""
        return self._url

    def __repr__(self) -> str:
        return f"OnlineStore(url={self._url!r}, prefix={self.prefix!r}{', cluster' if self.cluster else ''})"

    def close(self) -> None:
        """Close every connection; for the embedded server, let it stop (saving) if no other process uses it."""
        self._redis.close()
        if not self.cluster:
            self._redis.connection_pool.disconnect()
        with self._reads_lock:
            for conn in self._read_conns:
                conn.disconnect()
        if self._embedded is not None:
            self._embedded.release()
            self._embedded = None

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- retries ---------------------------------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T], *, budget_seconds: float = _RETRY_MAX_TOTAL_SECONDS,
               failed: tuple[BaseException, float] | None = None) -> T:
        """Call `fn`, retrying transient errors with exponential backoff; give up after a few attempts or
        `budget_seconds`, raising `OnlineStoreError` (the last error as its cause).

        `failed`: the caller made the first attempt itself (the error it raised, and `time.monotonic()` when
        it began): the attempts and the budget count from it."""
        deadline = (time.monotonic() if failed is None else failed[1]) + budget_seconds
        for attempt in range(1, _RETRY_ATTEMPTS + 1):
            try:
                if failed is None:
                    return fn()
                error, failed = failed[0], None
                raise error
            except _RETRIED as exc:
                if not _is_transient(exc):
                    raise
                delay = _RETRY_BASE_SECONDS * 2 ** (attempt - 1)
                if attempt == _RETRY_ATTEMPTS or time.monotonic() + delay > deadline:
                    raise OnlineStoreError(
                        f"{what} failed after {attempt} attempts on {self._url}: {exc}"
                    ) from exc
                log.warning("%s on %s failed (%s); retry %d in %.2fs", what, self._url, exc, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, what: str, fn: Callable[[], T], failed: tuple[BaseException, float] | None = None) -> T:
        """`_retry`, with a permanent error reply turned into `OnlineStoreError` too."""
        try:
            return self._retry(what, fn, failed=failed)
        except redis.RedisError as exc:
            raise OnlineStoreError(f"{what} failed on {self._url}: {exc}") from exc

    # ---- bulk write ------------------------------------------------------------------------------------------

    def write(
        self,
        keys: Sequence[bytes | str],
        values: Sequence[bytes | str],
        expire_at_ms: Sequence[int | None],
        *,
        chunk_rows: int = WRITE_CHUNK_ROWS,
    ) -> int:
        """`SET key value PXAT expire_at_ms` for every row; returns the number of rows written.

        An expiry of `None` writes the key without one. Rows go out in chunks of `chunk_rows` commands, each
        hand-encoded into one buffer and sent in one call on one connection; the next chunk is encoded while
        the server executes the previous one, and every reply is read and checked. After a dropped connection
        or a BUSY/LOADING reply, the unacknowledged chunks are sent again (SETs are idempotent), with backoff.
        A rejected command raises `OnlineStoreError` naming its key; earlier chunks are written, later ones
        may or may not be.
        """
        n = len(keys)
        if len(values) != n or len(expire_at_ms) != n:
            raise ValueError(f"write() got {n} keys, {len(values)} values and {len(expire_at_ms)} expiries")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")

        def encoded() -> Iterator[tuple[bytes, list[bytes]]]:
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                k = _as_bytes_list(keys[start:stop])
                yield _encode_set_pxat(k, _as_bytes_list(values[start:stop]), expire_at_ms[start:stop]), k

        expected, self._written_on = self._written_on, None
        servers: list[str | None] = []
        written = self.write_encoded(encoded(), server=expected, seen=servers)
        self._written_on = servers[-1] if servers else None
        return written

    def server_id(self) -> str | None:
        """The server's `run_id` (new with every restart or failover), or None where INFO is not permitted.

        On a cluster: the run_id of the master holding the bookkeeping keys (what the fenced script checks), and
        every master's run_id is recorded, so the writer and `fenced` notice any master restarting or failing over.
        """
        if self.cluster:
            self._node_ids = {node.name: self._node_run_id(node) for node in self._redis.get_primaries()}
            owner = self._redis.get_node_from_key(key_format.store_id_key(self.prefix))
            return self._node_ids.get(owner.name) if owner is not None else None
        try:
            return self._redis.info("server").get("run_id")
        except redis.ResponseError:  # NOPERM for an ACL user without INFO: restarts are then caught by store_id
            return None

    def masters(self) -> dict[str, str | None]:
        """On a cluster: each master (host:port) and its run_id as `server_id()` last read them; {} on one node."""
        return dict(sorted(self._node_ids.items())) if self.cluster else {}

    def _node_run_id(self, node: Any) -> str | None:
        client = self._redis.get_redis_connection(node)

        def run_id() -> str | None:
            try:
                return client.info("server").get("run_id")
            except redis.ResponseError as exc:  # NOPERM: as on a single node, restarts are then caught by store_id
                if _is_transient(exc):
                    raise
                return None

        return self._call(f"INFO server on cluster node {node.name}", run_id)

    def _check_node(self, node: Any, written: int) -> None:
        """On a cluster: raise `StoreChangedError` if `node` is a master this store did not see at `server_id()`,
        or one that restarted since (its writes may be lost); a first write records what it sees."""
        current = self._node_run_id(node)
        if not self._node_ids:
            self._node_ids = {n.name: self._node_run_id(n) for n in self._redis.get_primaries()}
            self._node_ids[node.name] = current
        if node.name not in self._node_ids:
            raise StoreChangedError(
                f"The online store {self._url} changed during the sync: {node.name} became a master of the cluster "
                f"(a failover?) after {written} rows were acknowledged: those writes may be lost.")
        expected = self._node_ids[node.name]
        if expected is not None and current is not None and current != expected:
            raise StoreChangedError(
                f"The online store {self._url} changed during the sync: cluster node {node.name} restarted or "
                f"failed over (run_id {expected[:8]} is now {current[:8]}), after {written} rows were "
                "acknowledged: those writes may be lost.")

    def write_encoded(self, chunks: Iterable[tuple[bytes | memoryview, Sequence[Any]]], *,
                      server: str | None = None, seen: list[str | None] | None = None) -> int:
        """Send chunks of already RESP-encoded commands that each answer `+OK` (e.g. `SET ... PXAT`).

        Each chunk is (buffer, keys): the keys, one per command, count the replies and name the key of a rejected
        command. This is `write` without the encoding, for callers that encode elsewhere (the sync encodes in
        SQL, so no Python runs per row). Retries and checks are those of `write`.

        On every connection it takes (the first, and after each reconnect) it checks the server's run_id against
        `server` (or the first one it saw): a server that restarted or failed over has lost or never had earlier
        writes, so retrying there would be a silent loss; it raises `StoreChangedError` instead. The run_id
        seen is appended to `seen`. On a cluster each master's run_id is checked against the one `server_id()`
        recorded (`_write_cluster`).
        """
        if self.cluster:
            written = self._write_cluster(chunks)
            if seen is not None:
                seen.append(server)
            return written

        def check(written: int) -> None:
            nonlocal server
            current = self.server_id()
            if server is not None and current is not None and current != server:
                raise StoreChangedError(
                    f"The online store {self._url} restarted or failed over during the write (server "
                    f"run_id {server[:8]} is now {current[:8]}), after {written} rows were "
                    "acknowledged: those writes may be lost.")
            server = server or current
            if seen is not None:
                seen.append(current)

        return self._pipelined(self._redis.connection_pool, ((buf, k, 1) for buf, k in chunks), check, self._url)

    def _pipelined(self, pool: redis.ConnectionPool, chunks: Iterable[tuple[Any, Sequence[Any], int]],
                   check: Callable[[int], None], where: str,
                   redirected: list[tuple[bytes, Any, str]] | None = None,
                   commands: Callable[[Any], list[bytes]] | None = None) -> int:
        """The pipelined write on one connection from `pool`: chunks are (buffer, keys, replies per key).

        `check(written)` runs on every connection taken. With `redirected` (a cluster), MOVED/ASK replies do not
        fail the write: (command, key, error) of each goes there for the caller to resend; `commands(chunk)`
        gives the chunk's commands one by one.
        """
        chunks = iter(chunks)
        upcoming = next(chunks, None)
        in_flight: deque[tuple[Any, Sequence[Any], int]] = deque()  # sent, replies not yet read (at most two)
        conn = None
        written = 0
        failures = 0
        deadline = time.monotonic() + _RETRY_MAX_TOTAL_SECONDS
        try:
            while upcoming is not None or in_flight:
                try:
                    if conn is None:
                        check(written)
                        conn = _get_connection(pool)
                        replies = _ReplyReader(conn)
                        for chunk in in_flight:  # after a reconnect: resend what was not acknowledged
                            conn.send_packed_command([chunk[0]], check_health=False)
                    if upcoming is not None:
                        conn.send_packed_command([upcoming[0]], check_health=False)
                        in_flight.append(upcoming)
                        upcoming = next(chunks, None)  # encoded while the server executes the chunk just sent
                    if in_flight and (upcoming is None or len(in_flight) > 1):
                        chunk = in_flight[0]
                        chunk_keys, per = chunk[1], chunk[2]
                        errors = replies.read(len(chunk_keys) * per)
                        if errors and redirected is not None and commands is not None:
                            moved = [(i // per, str(e)) for i, e in errors if str(e).startswith(_REDIRECT_PREFIXES)]
                            if len(moved) == len(errors):
                                cmds = commands(chunk)
                                redirected.extend((cmds[i], chunk_keys[i], e) for i, e in moved)
                                written -= len(moved)
                                errors = []
                        if errors:
                            index, error = errors[0]
                            if str(error).startswith(_TRANSIENT_REPLY_PREFIXES):
                                raise redis.BusyLoadingError(str(error))
                            hint = ("; the server is a Redis Cluster node, but INFO (which detects one) is not "
                                    "permitted: grant INFO to the user" if str(error).startswith(_REDIRECT_PREFIXES)
                                    else "")
                            raise OnlineStoreError(
                                f"Redis rejected {len(errors)} of {len(chunk_keys)} writes on {where}; first: "
                                f"key {_shown(chunk_keys[index // per])!r}: {error}{hint}"
                            )
                        in_flight.popleft()
                        written += len(chunk_keys)
                        failures = 0
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError) as exc:
                    if not _is_transient(exc):
                        raise
                    if conn is not None:
                        conn.disconnect()
                        pool.release(conn)
                        conn = None
                    failures += 1
                    delay = _RETRY_BASE_SECONDS * 2 ** (failures - 1)
                    if failures >= _RETRY_ATTEMPTS or time.monotonic() + delay > deadline:
                        first = (in_flight or [upcoming])[0]
                        raise OnlineStoreError(
                            f"Write failed on {where} after {failures} attempts at the chunk "
                            f"starting with key {_shown(first[1][0])!r}, {written} rows written: {exc}"
                        ) from exc
                    log.warning("write on %s failed (%s); retry %d in %.2fs", where, exc, failures, delay)
                    time.sleep(delay)
        finally:
            if conn is not None:
                if in_flight or not replies.drained:
                    conn.disconnect()  # replies left unread: the stream is out of step, never reuse it
                pool.release(conn)
        return written

    # ---- Redis Cluster bulk write ----------------------------------------------------------------------------

    def _write_cluster(self, chunks: Iterable[tuple[bytes | memoryview, Sequence[Any]]]) -> int:
        """`write_encoded` on a cluster: each chunk's commands grouped by the master owning their key's slot, each
        master's share written on its own connection and thread (`_pipelined`), then whatever a resharding
        redirected resent to the node named in the redirection, `ASKING` first for ASK, until none is left."""
        owners = self._slot_owners()
        redirected: list[tuple[bytes, Any, str]] = []

        def split() -> Iterator[dict[str, tuple[list[bytes], list[Any]]]]:
            for buffer, chunk_keys in chunks:
                groups: dict[str, tuple[list[bytes], list[Any]]] = {}
                for command, key in zip(_split_commands(buffer), chunk_keys):
                    name = owners[key_slot(command[1])]
                    group = groups.get(name)
                    if group is None:
                        if not name:
                            raise OnlineStoreError(
                                f"Slot {key_slot(command[1])} of key {_shown(key)!r} is served by no master of the "
                                f"cluster {self._url} (a master down, or slots never assigned?): nothing of this "
                                "chunk was written; check `redis-cli --cluster check`.")
                        group = groups[name] = ([], [])
                    group[0].append(_encode_command(command))
                    group[1].append(key)
                yield groups

        written = self._fan_out(split(), 1, redirected)
        for round_ in range(1, _REDIRECT_ROUNDS + 1):
            if not redirected:
                return written
            self._redis.nodes_manager.initialize()  # the slot map moved: later reads and writes use the new one
            groups: dict[str, tuple[list[bytes], list[Any]]] = {}
            asking: dict[str, tuple[list[bytes], list[Any]]] = {}
            for command, key, error in redirected:
                self.redirected[error.split()[0]] += 1
                target = error.split()[2]  # "MOVED 3999 127.0.0.1:6381", "ASK 3999 127.0.0.1:6381"
                group = (asking if error.startswith("ASK ") else groups).setdefault(target, ([], []))
                group[0].append(command)
                group[1].append(key)
            log.info("resharding: resending %d redirected writes (round %d)", len(redirected), round_)
            redirected = []
            written += self._fan_out(iter([groups]), 1, redirected)
            written += self._fan_out(iter([{n: ([_ASKING + c for c in cmds], ks) for n, (cmds, ks) in asking.items()}]),
                                     2, redirected)
            time.sleep(0.01 * round_)
        raise OnlineStoreError(
            f"Write on the cluster {self._url} still redirected after {_REDIRECT_ROUNDS} rounds (a resharding that "
            f"does not settle?): {len(redirected)} rows not written, first key {_shown(redirected[0][1])!r}: "
            f"{redirected[0][2]}")

    def _slot_owners(self) -> list[str]:
        """The name (host:port) of the master owning each of the 16384 slots, from the client's slot map."""
        cache = self._redis.nodes_manager.slots_cache
        owners = [""] * 16384
        for slot, nodes in cache.items():
            owners[slot] = nodes[0].name
        return owners

    def _fan_out(self, groups: Iterator[dict[str, tuple[list[bytes], list[Any]]]], per: int,
                 redirected: list[tuple[bytes, Any, str]]) -> int:
        """Write each node's share of each item of `groups` ({node name: (commands, keys)}) on one thread and one
        connection per node, in order; returns the rows acknowledged. The first error stops every node."""
        queues: dict[str, queue.Queue] = {}
        workers: dict[str, threading.Thread] = {}
        errors: list[BaseException] = []
        counts: list[int] = []
        found: list[list[tuple[bytes, Any, str]]] = []
        stop = threading.Event()

        def feed(q: Any) -> Iterator[tuple[bytes, list[Any], int, list[bytes]]]:
            while True:
                try:
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is None or stop.is_set():
                    return
                yield item

        def worker(name: str, q: Any) -> None:
            mine: list[tuple[bytes, Any, str]] = []
            found.append(mine)
            try:
                node = self._node(name)
                counts.append(self._pipelined(
                    self._redis.get_redis_connection(node).connection_pool, feed(q),
                    lambda written: self._check_node(node, written), f"cluster node {name} of {self._url}",
                    mine, lambda chunk: chunk[3]))
            except BaseException as exc:  # handed to the caller, which raises the first
                errors.append(exc)
                stop.set()

        def queue_for(name: str) -> Any:
            q = queues.get(name)
            if q is None:
                q = queues[name] = queue.Queue(maxsize=4)
                thread = workers[name] = threading.Thread(target=worker, args=(name, q), daemon=True,
                                                          name=f"featuremart-write-{name}")
                thread.start()
            return q

        try:
            for item in groups:
                for name, (cmds, chunk_keys) in item.items():
                    for start in range(0, len(cmds), WRITE_CHUNK_ROWS):
                        part = cmds[start:start + WRITE_CHUNK_ROWS]
                        chunk = (b"".join(part), chunk_keys[start:start + WRITE_CHUNK_ROWS], per, part)
                        q = queue_for(name)
                        while not stop.is_set():
                            try:
                                q.put(chunk, timeout=0.1)
                                break
                            except queue.Full:
                                continue
                if stop.is_set():
                    break
        except BaseException:
            stop.set()
            raise
        finally:
            for name, q in queues.items():  # the end of input; a worker that stopped takes no more
                while True:
                    try:
                        q.put(None, timeout=0.1)
                        break
                    except queue.Full:
                        if stop.is_set() or not workers[name].is_alive():
                            break
            for thread in workers.values():
                thread.join()
        if errors:
            first = next((e for e in errors if isinstance(e, StoreChangedError)), errors[0])
            raise first
        for mine in found:
            redirected.extend(mine)
        return sum(counts)

    def _node(self, name: str) -> Any:
        """The cluster node `name` (host:port), refreshing the client's view of the cluster once if unknown."""
        node = self._redis.get_node(node_name=name)
        if node is None:
            self._redis.nodes_manager.initialize()
            node = self._redis.get_node(node_name=name)
        if node is None:
            raise OnlineStoreError(f"The cluster {self._url} redirected writes to {name}, which is not one of its "
                                   "nodes (a cluster announcing addresses this machine cannot reach?)")
        if node.redis_connection is None:
            self._redis.get_redis_connection(node)
        return node

    # ---- reads, deletes, small values ------------------------------------------------------------------------

    def mget(self, keys: Sequence[bytes | str]) -> list[bytes | None]:
        """The values of `keys` (None where absent), in one round trip (chunked only above 100k keys).

        On one server: `_mget_direct`. On a cluster: one MGET per hash slot (a cluster refuses MGET across
        slots), pipelined per node."""
        if not keys:
            return []
        direct = hiredis is not None and not self.cluster
        get = self._redis.mget_nonatomic if self.cluster else self._mget_direct if direct else self._redis.mget
        if len(keys) <= MGET_CHUNK_KEYS:
            failed = None
            if direct:  # the first attempt without `_call`'s frames: about 3 µs of a one-entity read
                started = time.monotonic()
                try:
                    return self._mget_direct(keys)
                except _RETRIED as exc:
                    failed = (exc, started)
            return self._call(f"MGET of {len(keys)} keys", lambda: get(keys), failed)
        out: list[bytes | None] = []
        for start in range(0, len(keys), MGET_CHUNK_KEYS):
            chunk = keys[start:start + MGET_CHUNK_KEYS]
            out.extend(self._call(f"MGET of {len(chunk)} keys", lambda: get(chunk)))
        return out

    def _mget_direct(self, keys: Sequence[bytes | str]) -> list[bytes | None]:
        """One MGET on this thread's own connection (`_ReadConnection`), the command hand-encoded (`_encode_mget`).
        redis-py's command path (pool checkout and release, argument checks, hooks) cost about 20 µs a call and
        0.15 µs a key more, which was most of what a one-entity read spent beyond a raw reader's (bench/README.md).
        An error reply is asked again through redis-py, which raises the exception it maps the reply to (LOADING,
        for one, is retried by `_call`). Any other error drops the connection; `_call` retries on a new one."""
        local = self._reads
        read = getattr(local, "read", None)
        if read is None or read.pid != os.getpid():  # first read on this thread, or in a forked child
            pool = self._redis.connection_pool  # RESP2: no push can arrive between replies (redis-py 8 speaks RESP3)
            conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
            read = local.read = _ReadConnection(conn)
            with self._reads_lock:
                self._read_conns.append(conn)
            # a thread that ends takes its connection with it (a thread-per-request server would pile them up)
            weakref.finalize(threading.current_thread(), _drop_connection, self._read_conns, self._reads_lock, conn)
        reply = read.request(_encode_mget(keys))
        if reply.__class__ is _REPLY_ERROR:
            return self._redis.mget(keys)
        return reply

    def delete(self, keys: Sequence[bytes | str]) -> int:
        """`UNLINK` `keys` in chunks (on a cluster, redis-py sends one UNLINK per slot); returns how many existed."""
        removed = 0
        for start in range(0, len(keys), DELETE_CHUNK_KEYS):
            chunk = list(keys[start:start + DELETE_CHUNK_KEYS])
            removed += self._call(f"UNLINK of {len(chunk)} keys", lambda: self._redis.unlink(*chunk))
        return removed

    def get_json(self, key: bytes | str) -> Any:
        """The JSON value at `key`, or None if absent."""
        raw = self._call(f"GET {key!r}", lambda: self._redis.get(key))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise OnlineStoreError(f"Key {key!r} on {self._url} does not hold JSON: {exc}") from None

    def set_json(self, key: bytes | str, obj: Any) -> None:
        """Store `obj` as compact JSON at `key`, without expiry."""
        data = json.dumps(obj, separators=(",", ":"), sort_keys=True, default=str)
        self._call(f"SET {key!r}", lambda: self._redis.set(key, data))

    def get_bytes(self, key: bytes | str) -> bytes | None:
        """The raw value at `key`, or None if absent."""
        return self._call(f"GET {key!r}", lambda: self._redis.get(key))

    def set_bytes(self, key: bytes | str, data: bytes) -> None:
        """Store raw bytes at `key`, without expiry."""
        self._call(f"SET {key!r}", lambda: self._redis.set(key, data))

    def memory_usage(self, keys: Sequence[bytes | str]) -> list[int | None]:
        """`MEMORY USAGE` of each key in bytes (None where absent), pipelined in one round trip."""
        def usage() -> list[int | None]:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.memory_usage(key, samples=0)
            return pipe.execute()
        return self._call(f"MEMORY USAGE of {len(keys)} keys", usage)

    def scan(self, match: bytes | str, *, count: int = 1000) -> Iterator[bytes]:
        """Every key matching the glob `match`, by cursor (`SCAN`: never blocks the server like `KEYS`).

        A key may be yielded twice (SCAN's guarantee); callers that count should dedupe. On a cluster, every
        master is scanned in turn (a key migrating during a resharding may be missed or seen twice).
        """
        clients = ([self._redis.get_redis_connection(n) for n in self._redis.get_primaries()] if self.cluster
                   else [self._redis])
        for client in clients:
            cursor = 0
            while True:
                cursor, batch = self._call(
                    f"SCAN {match!r}", lambda c=cursor, r=client: r.scan(c, match=match, count=count)
                )
                yield from batch
                if cursor == 0:
                    break

    def set_json_nx(self, key: bytes | str, obj: Any) -> bool:
        """Store `obj` at `key` only if the key does not exist; True if this call set it."""
        data = json.dumps(obj, separators=(",", ":"))
        return bool(self._call(f"SET {key!r} NX", lambda: self._redis.set(key, data, nx=True)))

    def publish_registry(self, key: str, snapshot: Any, *, fence: Fence | None = None) -> str:
        """Replace the registry snapshot at `key` and its id at `key:id` in one MULTI/EXEC; returns the new id.

        Readers fetch the id with every batch of values, so they switch to the new snapshot at once and never
        combine two snapshots (docs/redis-format.md). With a `fence`, only if nothing of it changed (`fenced`).
        """
        data = json.dumps(snapshot, separators=(",", ":"), sort_keys=True, default=str)
        new_id = uuid.uuid4().hex
        if fence is not None:
            self.fenced(fence, {key: data, f"{key}:id": new_id})
            return new_id

        def publish() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, data).set(f"{key}:id", new_id).execute()

        self._call(f"publish registry {key}", publish)
        return new_id

    def fenced(self, fence: Fence, values: dict[str, str] | None = None) -> None:
        """Set `values` (strings, stored as they are) only if nothing of `fence` changed, in one script (atomic
        on the server). With no values it only checks. Raises `StoreChangedError` naming what changed.

        On a cluster the script runs on the master holding the bookkeeping keys and checks its run_id; every
        other master's run_id is checked just before (against those `server_id()` recorded)."""
        values = values or {}
        if self.cluster and fence.server is not None:
            for node in self._redis.get_primaries():
                self._check_node(node, 0)
        keys = [fence.store_id_key, fence.lock_key, fence.generation_key, *values]
        args = [fence.store_id, fence.lock_value, fence.generation, fence.server or "", *values.values()]
        outcome = self._call("fenced publish", lambda: self._fenced_script(keys=keys, args=args))
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome != "ok":
            raise StoreChangedError(f"The online store {self._url} changed during the sync: "
                                    f"{_CHANGED.get(outcome, outcome)}.")

    def read_registry(self, key: str) -> tuple[Any, bytes | None]:
        """The registry snapshot at `key` and its id, read together (None, None when nothing is published)."""
        raw, registry_id = self._call(f"MGET {key}", lambda: self._redis.mget([key, f"{key}:id"]))
        if raw is None:
            return None, None
        return json.loads(raw), registry_id

    def push_record(self, key: str, record: str, keep: int) -> None:
        """Prepend a record to the list at `key`, keeping the newest `keep`."""

        def push() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, record).ltrim(key, 0, keep - 1).execute()

        self._call(f"LPUSH {key}", push)

    def records(self, key: str, count: int) -> list[bytes]:
        """The newest `count` records of the list at `key` (see push_record), newest first."""
        return self._call(f"LRANGE {key}", lambda: self._redis.lrange(key, 0, count - 1))

    # ---- lock ------------------------------------------------------------------------------------------------

    def lock(self, name: str, ttl_seconds: float) -> StoreLock:
        """A lock held by one process at a time, for "one sync at a time"; use it as a context manager.

        `SET key token NX PX`: a crashed holder releases it when `ttl_seconds` expire. Call `refresh()` between
        chunks of a long run to extend it; only the owner can refresh or release it. If another process holds
        it, entering raises `SyncLockedError` saying who, since when and until when.
        """
        return StoreLock(self, key_format.lock_key(self.prefix, name), ttl_seconds)


class StoreLock(AbstractContextManager["StoreLock"]):
    """One acquisition of `OnlineStore.lock`: `acquire`, `refresh`, `release` (or `with`)."""

    def __init__(self, store: OnlineStore, key: str, ttl_seconds: float):
        if ttl_seconds <= 0:
            raise ValueError(f"lock ttl_seconds must be positive, got {ttl_seconds}")
        self._store = store
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self._value: str | None = None

    def acquire(self) -> StoreLock:
        """Take the lock, or raise `SyncLockedError` naming the holder, since when and until when."""
        now = int(time.time() * 1000)
        value = json.dumps({"token": uuid.uuid4().hex, "owner": f"{socket.gethostname()}:{os.getpid()}",
                            "since_ms": now})
        r = self._store._redis
        ok = self._store._call(f"SET {self.key} NX", lambda: r.set(self.key, value, nx=True, px=self.ttl_ms))
        if ok:
            self._value = value
            return self
        holder, pttl = self._store._call(f"GET {self.key}", lambda: (r.get(self.key), r.pttl(self.key)))
        try:
            info = json.loads(holder) if holder else {}
        except ValueError:
            info = {}
        since = _ms_to_iso(info["since_ms"]) if "since_ms" in info else "an unknown time"
        expires = _ms_to_iso(now + pttl) if pttl and pttl > 0 else "soon"
        raise SyncLockedError(
            f"Another sync ({info.get('owner', 'unknown owner')}) holds the lock {self.key} on "
            f"{self._store.url} since {since}; it expires at {expires} unless renewed. Wait for it to finish, or "
            f"if its process is gone, wait for the expiry."
        )

    @property
    def held(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> str:
        """The value this acquisition stored (its token): what `Fence.lock_value` checks ('' when not held)."""
        return self._value or ""

    def refresh(self) -> None:
        """Extend the lock to a full ttl from now; raise `OnlineStoreError` if it was lost (expired, taken)."""
        if self._value is None:
            raise OnlineStoreError(f"Lock {self.key} is not held; acquire it first.")
        value = self._value
        ok = self._store._call(f"refresh of lock {self.key}",
                               lambda: self._store._refresh_script(keys=[self.key], args=[value, self.ttl_ms]))
        if not ok:
            self._value = None
            raise OnlineStoreError(
                f"Lock {self.key} expired and may be held by another sync: the ttl ({self.ttl_ms} ms) is shorter "
                "than the time between refresh() calls."
            )

    def release(self) -> bool:
        """Release the lock if this acquisition still owns it; returns whether it did."""
        if self._value is None:
            return False
        value, self._value = self._value, None
        return bool(self._store._call(f"release of lock {self.key}",
                                      lambda: self._store._unlock_script(keys=[self.key], args=[value])))

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.release()
        except OnlineStoreError:
            if exc_type is None:
                raise  # else the error that ended the block says more than a failed release (it expires anyway)


# ---- RESP encoding and reply reading ---------------------------------------------------------------------------

_SET_HEAD = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$%d\r\n%b\r\n"
_SET_HEAD_13 = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$13\r\n%d\r\n"
_SET_NO_EXPIRY = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"


def _encode_set_pxat(keys: list[bytes], values: list[bytes], expire_at_ms: Sequence[int | None]) -> bytes:
    """RESP for `SET key value PXAT ms` per row, as one buffer (RESP2 and RESP3 share the request format)."""
    try:
        # Every epoch-ms time from 2001 to 2286 has 13 digits: one format per row, no per-row length of the time.
        fixed = 10**12 <= min(expire_at_ms) and max(expire_at_ms) < 10**13
    except (TypeError, ValueError):  # a None among them, or no rows
        fixed = False
    if fixed:
        head = _SET_HEAD_13
        return b"".join([head % row for row in zip(map(len, keys), keys, map(len, values), values, expire_at_ms)])
    out = []
    append = out.append
    for k, v, e in zip(keys, values, expire_at_ms):
        if e is None:
            append(_SET_NO_EXPIRY % (len(k), k, len(v), v))
        else:
            t = b"%d" % e
            append(_SET_HEAD % (len(k), k, len(v), v, len(t), t))
    return b"".join(out)


def _split_commands(buffer: bytes | memoryview, step: int = 1 << 16) -> Iterator[list[bytes]]:
    """The commands in a buffer of RESP-encoded commands, each as its list of arguments (a cluster write regroups
    them by slot). Parsed by hiredis (a request is a RESP array of bulk strings), fed in slices: fed whole, its
    buffer is moved after every command."""
    if hiredis is None:  # pragma: no cover - hiredis is a dependency
        raise OnlineStoreError("writing to a Redis Cluster needs hiredis: pip install 'redis[hiredis]'")
    reader = hiredis.Reader()
    gets, view, pos, n = reader.gets, memoryview(buffer), 0, len(buffer)
    while True:
        command = gets()
        if command is False:
            if pos >= n:
                return
            reader.feed(view[pos:pos + step])
            pos += step
            continue
        yield command


def _encode_command(args: list[bytes]) -> bytes:
    """RESP for one command: `SET key value PXAT ms` with one format, anything else argument by argument."""
    if len(args) == 5:
        k, v, t = args[1], args[2], args[4]
        return _SET_HEAD_ARGS % (len(args[0]), args[0], len(k), k, len(v), v, len(args[3]), args[3], len(t), t)
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


_SET_HEAD_ARGS = b"*5\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"


_OK = b"+OK\r\n"
_OKS = _OK * 65_536  # what a run of up to 65,536 acknowledged writes reads as, compared in one C call


class _ReplyReader:
    """Reads the replies to our packed commands on one connection; `read(n)` returns (row, error) pairs.

    Every command of a bulk write answers `+OK` when it succeeds, so the replies are first compared with runs of
    `+OK` bytes as they arrive (one C comparison per run, no work per reply); at the first byte that differs,
    everything read so far goes to a hiredis reader, which parses reply by reply and names the errors. The
    connection came idle from the pool, so nothing of ours is buffered in redis-py's own parser; bytes of the
    next chunk's replies stay here (or in the hiredis reader) until read.
    """

    def __init__(self, conn: Any):
        self._conn = conn
        self._sock = getattr(conn, "_sock", None)
        self._reader = hiredis.Reader() if hiredis is not None and self._sock is not None else None
        self._pending = bytearray()  # bytes received beyond the replies read so far (fast path)

    def _recv(self) -> bytes:
        data = self._sock.recv(1 << 20)
        if not data:
            raise redis.ConnectionError("Connection closed by the server while reading write replies")
        return data

    def _all_ok(self, n: int) -> bool:
        """Whether the next `n` replies are all `+OK` (then consumed); False as soon as one is not (nothing
        consumed: the bytes read are handed to the hiredis reader)."""
        buf, need, checked = self._pending, len(_OK) * n, 0
        while True:
            upto = min(len(buf), need)
            while checked < upto:
                offset = checked % len(_OK)
                size = min(upto - checked, len(_OKS) - offset)
                if buf[checked:checked + size] != _OKS[offset:offset + size]:
                    self._reader.feed(bytes(buf))
                    self._pending = bytearray()
                    return False
                checked += size
            if checked >= need:
                del buf[:need]
                return True
            buf += self._recv()

    def read(self, n: int) -> list[tuple[int, Any]]:
        errors: list[tuple[int, Any]] = []
        if self._reader is None:  # pragma: no cover - fallback without hiredis
            for i in range(n):
                try:
                    self._conn.read_response(disable_decoding=True)
                except redis.ResponseError as exc:
                    errors.append((i, exc))
            return errors
        if not self._reader.has_data() and self._all_ok(n):
            return errors
        reader = self._reader
        gets = reader.gets
        reply_error = hiredis.ReplyError
        i = 0
        while i < n:
            reply = gets()
            if reply is False:
                reader.feed(self._recv())
                continue
            if reply.__class__ is reply_error or isinstance(reply, Exception):
                errors.append((i, reply))
            i += 1
        return errors

    @property
    def drained(self) -> bool:
        return self._reader is None or not (self._pending or self._reader.has_data())

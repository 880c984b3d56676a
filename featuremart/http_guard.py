"""What uvicorn leaves to the application: a deadline for request headers, a cap on open connections, and logs
that a hostile client cannot flood.

uvicorn (0.54) times out only a keep-alive connection that stays silent after a response; a socket that sends
nothing after connecting, or a header one byte at a time, is kept forever, and `limit_concurrency` is checked
only once a request's headers are complete. So a few hundred idle sockets (slowloris) exhaust the process's
file descriptors. `GuardedH11Protocol` is uvicorn's h11 protocol with two additions:

- every connection must complete a request's headers within `FEATUREMART_HEADER_TIMEOUT` seconds of opening
  (or of the previous response); bytes arriving do not extend the deadline, so trickling does not help;
- a connection beyond uvicorn's `limit_concurrency` is closed as soon as it is accepted.

Settings travel in environment variables so that `--workers` processes (spawned by uvicorn) read the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ENV = "FEATUREMART_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0

log = logging.getLogger("featuremart.server")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-header deadline and a connection cap (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: Any = None
        self._header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT)

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.config.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            log.warning("closed a new connection: %d are open, the limit is %d (--max-connections)",
                        len(self.connections) - 1, limit - 1)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_deadline is not None and self.conn.their_state is not h11.IDLE:
            self._disarm()  # the request's headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.warning("closed a connection that sent no complete request headers within %gs (--header-timeout)",
                        self._header_timeout)
            self.transport.close()


class Throttle(logging.Filter):
    """Lets one record per (logger, message template) through every `seconds`; the next one says how many were
    suppressed meanwhile. Attached to the loggers a client can make noisy (uvicorn.error, asyncio, ours)."""

    def __init__(self, seconds: float = 10.0):
        super().__init__()
        self.seconds = seconds
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            since, suppressed = self._last.get(key, (-self.seconds, 0))
            if now - since < self.seconds:
                self._last[key] = (since, suppressed + 1)
                return False
            self._last[key] = (now, 0)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} similar suppressed in the last {now - since:.0f}s)"
        return True


def throttle_logs(seconds: float = 10.0) -> None:
    """Attach one `Throttle` to each logger a client can make write (idempotent)."""
    for name in ("featuremart.server", "uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, Throttle) for f in logger.filters):
            logger.addFilter(Throttle(seconds))

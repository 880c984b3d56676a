"""The HTTP feature server: `featuremart serve`, a small Starlette (ASGI) app run by uvicorn.

Endpoints (docs/serving.md has examples and every error):

    POST /features   {"service": "fraud_model" | "features": ["view.feature", ...], "entities": [{...}, ...]}
    GET  /services   feature services and their features, with types
    GET  /features   feature views and their features, with types, ttl, join keys and version
    GET  /healthz    the process is up
    GET  /readyz     Redis answers and a registry is published (503 otherwise)
    GET  /metrics    Prometheus text format: request metrics, and per view online freshness (docs/monitoring.md)

Reads go through `OnlineReader` (one MGET per request, registry id included), so a sync that publishes a new
registry is picked up by the next request and a response never mixes two versions of a view. The reader is
blocking redis-py; it runs in Starlette's threadpool so one slow Redis call does not stall the event loop
(docs/serving.md has the measurement behind this choice).

Every client mistake (malformed or too deeply nested JSON, wrong shapes or key types, unknown names, oversize
body or batch, a body too slow to arrive or cut off, a missing or wrong bearer token) is a 4xx with a JSON body
`{"error": "..."}`; the token is never logged. 503 bodies never describe the store (its host, port, database or
user): the detail goes to the log, which a client cannot flood (http_guard.Throttle).

It needs only Redis: `create_app()` without a reader is an app factory for `uvicorn --factory` and for
`featuremart serve --workers N`, configured by environment variables (`ServerSettings`).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any, Awaitable, Callable

import anyio
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from featuremart.errors import ConfigError, FeaturemartError, NotPublishedError, UnknownNameError
from featuremart.monitoring import metrics as freshness_metrics
from featuremart.online.codec import json_bytes
from featuremart.online.reader import PREFIX_ENV, STATUSES, URL_ENV, OnlineReader, OnlineResult
from featuremart.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTITIES = 1000
DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_BODY_TIMEOUT = 30.0
#: Entity key values are echoed back; JSON integers beyond 64 bits are no key of ours (orjson writes 64 bits).
_INT_RANGE = range(-(1 << 63), 1 << 64)
#: What a 503 says: nothing about the store's address or credentials (those go to the log).
UNAVAILABLE = "online store unavailable"
NOT_PUBLISHED = "no feature registry published in the online store yet: run `featuremart sync` first"
#: Status for a client that disconnected before sending its whole body (nginx's convention): a client error.
CLIENT_CLOSED = 499
#: Latency histogram buckets, seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENDPOINTS = ("/features", "/services", "/healthz", "/readyz", "/metrics")
#: Paths answered without the bearer token: probes from the orchestrator.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REQUEST_KEYS = frozenset({"service", "features", "entities"})
#: `POST /features` takes the caller's request id from this header (else makes one) and returns it there: the
#: served-feature log records the read under it, so that labels carrying it join what was served.
REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID = 128


class ClientError(Exception):
    """A request the client must fix: answered with `status` and `{"error": message}`; `close` when the rest of
    its body was not read (the connection cannot carry another request)."""

    def __init__(self, status: int, message: str, *, close: bool = False):
        super().__init__(message)
        self.status = status
        self.close = close


@dataclass(frozen=True)
class ServerSettings:
    """Everything a server process needs, from `featuremart serve` options or, in each `--workers` process and
    under `uvicorn --factory featuremart.server:create_app`, from environment variables (`ENV`)."""

    redis_url: str | None = None
    prefix: str | None = None
    token_env: str | None = None
    max_entities: int = DEFAULT_MAX_ENTITIES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_connections: int = 512
    header_timeout: float = 10.0
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keep_alive: float = 5.0

    ENV = {"redis_url": URL_ENV, "prefix": PREFIX_ENV, "token_env": "FEATUREMART_TOKEN_ENV",
           "max_entities": "FEATUREMART_MAX_ENTITIES", "max_body_bytes": "FEATUREMART_MAX_BODY_BYTES",
           "max_connections": "FEATUREMART_MAX_CONNECTIONS", "header_timeout": "FEATUREMART_HEADER_TIMEOUT",
           "body_timeout": "FEATUREMART_BODY_TIMEOUT", "keep_alive": "FEATUREMART_KEEP_ALIVE"}

    @classmethod
    def from_env(cls) -> ServerSettings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = os.environ.get(cls.ENV[f.name])
            if not text:
                continue
            kind = type(getattr(cls, f.name)) if getattr(cls, f.name) is not None else str
            try:
                values[f.name] = kind(text)
            except ValueError:
                raise ConfigError(f"{cls.ENV[f.name]}={text!r} is not a {kind.__name__}") from None
        return cls(**values)

    def to_env(self) -> None:
        """Write the settings where worker processes (which inherit the environment) find them."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                os.environ[self.ENV[f.name]] = str(value)

    def token(self) -> str | None:
        if not self.token_env:
            return None
        token = os.environ.get(self.token_env)
        if not token:
            raise ConfigError(f"{self.token_env} (the bearer token's variable) is unset or empty")
        return token


class Metrics:
    """Counters and a latency histogram in Prometheus text format, written by hand (no dependency).

    Updated only from the event loop thread (the ASGI middleware and the handlers after their awaits), so it
    needs no lock.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {e: [0] * (len(BUCKETS) + 1) for e in (*ENDPOINTS, "other")}
        self.latency_sum: dict[str, float] = dict.fromkeys(self.buckets, 0.0)
        self.values: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self.entities = 0

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self.buckets[endpoint]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.latency_sum[endpoint] += seconds

    def served(self, result: OnlineResult) -> None:
        self.entities += len(result)
        for status, n in result.status_counts().items():
            self.values[status] += n

    def render(self) -> str:
        lines = ["# HELP featuremart_http_requests_total HTTP requests by endpoint and status code.",
                 "# TYPE featuremart_http_requests_total counter"]
        for (endpoint, status), n in sorted(self.requests.items()):
            lines.append(f'featuremart_http_requests_total{{endpoint="{endpoint}",code="{status}"}} {n}')
        lines += ["# HELP featuremart_http_request_duration_seconds Time to answer a request.",
                  "# TYPE featuremart_http_request_duration_seconds histogram"]
        for endpoint, counts in self.buckets.items():
            total = sum(counts)
            if not total:
                continue
            cumulative = 0
            for bound, n in zip((*BUCKETS, math.inf), counts):
                cumulative += n
                le = "+Inf" if bound == math.inf else repr(bound)
                lines.append(f'featuremart_http_request_duration_seconds_bucket{{endpoint="{endpoint}",'
                             f'le="{le}"}} {cumulative}')
            lines.append(f'featuremart_http_request_duration_seconds_sum{{endpoint="{endpoint}"}} '
                         f"{self.latency_sum[endpoint]:.6f}")
            lines.append(f'featuremart_http_request_duration_seconds_count{{endpoint="{endpoint}"}} {total}')
        lines += ["# HELP featuremart_feature_values_total Feature values served, by status.",
                  "# TYPE featuremart_feature_values_total counter"]
        lines += [f'featuremart_feature_values_total{{status="{s}"}} {n}' for s, n in self.values.items()]
        lines += ["# HELP featuremart_entities_total Entities read.", "# TYPE featuremart_entities_total counter",
                  f"featuremart_entities_total {self.entities}"]
        return "\n".join(lines) + "\n"


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response written by orjson: datetimes and dates as ISO 8601, NaN and infinities as null."""
    return Response(json_bytes(value), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, *, close: bool = False) -> Response:
    return _json({"error": message}, status, headers={"connection": "close"} if close else None)


def _shown(value: Any) -> str:
    """A short description of a JSON value for an error message (never the whole of a nested value)."""
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "an array"
    return json.dumps(value)[:80]


def parse_request(body: bytes, max_entities: int) -> tuple[str | None, list[str] | None, list[dict[str, Any]]]:
    """Validate a `POST /features` body; returns (service, features, entities) or raises ClientError.

    Parsed by orjson, which refuses nesting deeper than 1,024 levels with an error (the standard library's
    parser recurses and raises RecursionError at about 1,000, which escaped as a 500).
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ClientError(400, 'the body must be a JSON object: {"service": ... or "features": [...], '
                               '"entities": [{...}]}')
    unknown = sorted(set(payload) - REQUEST_KEYS)
    if unknown:
        raise ClientError(400, f"unknown field(s) {', '.join(unknown)}; fields: entities, features, service")
    service, features, entities = payload.get("service"), payload.get("features"), payload.get("entities")
    if (service is None) == (features is None):
        raise ClientError(400, 'name either "service" or "features" (a list of view.feature), not both or neither')
    if service is not None and not isinstance(service, str):
        raise ClientError(400, f'"service" must be a string; got {type(service).__name__}')
    if features is not None and (not isinstance(features, list) or not all(isinstance(f, str) for f in features)):
        raise ClientError(400, '"features" must be a list of strings like "customer_spend.spend_7d"')
    if not isinstance(entities, list):
        raise ClientError(400, '"entities" must be a list of objects of join keys, e.g. '
                               '[{"customer_id": "C0000001"}]')
    if len(entities) > max_entities:
        raise ClientError(413, f"{len(entities)} entities in one request; the limit is {max_entities} "
                               "(split the batch, or start the server with a larger --max-entities)")
    for i, entity in enumerate(entities):
        if not isinstance(entity, dict):
            raise ClientError(400, f"entities[{i}] must be an object of join keys; got {type(entity).__name__}")
        for key, value in entity.items():
            if value.__class__ not in (str, int):  # bool is not int here: True is no entity key
                raise ClientError(400, f"entities[{i}].{key} must be a string or an integer; got {_shown(value)}")
            if value.__class__ is int and value not in _INT_RANGE:
                raise ClientError(400, f"entities[{i}].{key}: {value} is outside the 64-bit integer range")
    return service, features, entities


def request_id(request: Request) -> str:
    """The caller's `X-Request-ID` (1 to 128 visible ASCII characters, no space), or a new uuid (hex)."""
    given = request.headers.getlist(REQUEST_ID_HEADER)
    if not given:
        return uuid.uuid4().hex
    if len(given) > 1:
        raise ClientError(400, f"X-Request-ID given {len(given)} times; send it once")
    value = given[0]
    if not 0 < len(value) <= MAX_REQUEST_ID or not all("!" <= c <= "~" for c in value):
        raise ClientError(400, f"X-Request-ID {_shown(value[:40])} ({len(value)} characters) must be 1 to "
                               f"{MAX_REQUEST_ID} visible ASCII characters, without spaces")
    return value


def render_result(service: str | None, result: OnlineResult) -> dict[str, Any]:
    """The `POST /features` response; its `results` (one item per entity) are JSON text already
    (`OnlineResult.to_json`), which orjson inserts as they are."""
    return {"service": service, "features": list(result.names), "versions": result.versions,
            "results": orjson.Fragment(result.to_json())}


def registry_views(registry: Registry) -> dict[str, Any]:
    return {"views": [
        {"name": v.name, "entities": list(v.entities), "join_keys": {k: t for k, t in v.join_keys},
         "ttl_seconds": int(v.ttl.total_seconds()), "version": v.version,
         "features": [{"name": f.ref, "type": f.dtype, "description": f.description} for f in v.features]}
        for v in registry.views.values()]}


def registry_services(registry: Registry) -> dict[str, Any]:
    return {"services": [
        {"name": s.name, "description": s.description, "owner": s.owner, "views": list(s.view_names),
         "features": [{"name": f.ref, "type": f.dtype} for f in s.features]}
        for s in registry.services.values()]}


def create_app(reader: OnlineReader | None = None, *, token: str | None = None,
               max_entities: int = DEFAULT_MAX_ENTITIES, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               body_timeout: float = DEFAULT_BODY_TIMEOUT, threadpool: bool = True) -> Starlette:
    """The ASGI app serving `reader`; without one, an app factory configured by environment variables
    (`ServerSettings.from_env()`: FEATUREMART_REDIS_URL, FEATUREMART_PREFIX, FEATUREMART_TOKEN_ENV, ...).

    Args:
        reader: the online reader (e.g. `OnlineReader.connect(url)` or `FeatureStore.from_url(url).reader`).
        token: if set, every endpoint but /healthz and /readyz needs `Authorization: Bearer <token>`.
        max_entities: the largest batch `POST /features` accepts (413 above).
        max_body_bytes: the largest request body accepted (413 above).
        body_timeout: seconds a request has to send its whole body (408 after).
        threadpool: run the blocking Redis reads in Starlette's threadpool (the default; False calls them on
            the event loop, kept only to measure the difference, see docs/serving.md).

    Example:
        uvicorn --factory featuremart.server:create_app --workers 4   # with FEATUREMART_REDIS_URL set
    """
    if reader is None:
        settings = ServerSettings.from_env()
        reader = OnlineReader.connect(settings.redis_url, prefix=settings.prefix)
        token, max_entities, max_body_bytes = settings.token(), settings.max_entities, settings.max_body_bytes
        body_timeout = settings.body_timeout
        _preload(reader)
        from featuremart.servedlog.writer import attach_from_env

        attach_from_env(reader)  # `featuremart serve --log-dir` with --workers: each process logs its reads
    from featuremart.http_guard import throttle_logs

    throttle_logs()
    metrics = Metrics()
    online: OnlineReader = reader

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if threadpool:
            return await run_in_threadpool(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def get_features(request: Request) -> Response:
        body = await _read_body(request, max_body_bytes, body_timeout)
        service, features, entities = parse_request(body, max_entities)
        rid = request_id(request)
        try:
            result = await call(online.read, entities, service=service, features=features, request_id=rid)
        except UnknownNameError as exc:
            raise ClientError(400, str(exc)) from None
        metrics.served(result)
        return _json(render_result(service, result), headers={REQUEST_ID_HEADER: rid})

    async def list_services(request: Request) -> Response:
        return _json(registry_services(await call(online.check_registry)))

    async def list_features(request: Request) -> Response:
        return _json(registry_views(await call(online.check_registry)))

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            registry = await call(online.check_registry)
        except FeaturemartError as exc:
            return _error(503, f"not ready: {_unavailable(exc)}")
        return _json({"status": "ready", "registry_id": online.registry_id, "views": len(registry.views),
                      "services": len(registry.services)})

    async def prometheus(request: Request) -> Response:
        try:  # freshness and drift gauges from the sync's records: a GET and an LRANGE per view, off the read path
            freshness = freshness_metrics.render(*await call(freshness_metrics.read_record, online.store))
        except FeaturemartError as exc:
            log.warning("/metrics: the publish record could not be read, freshness gauges left out: %s", exc)
            freshness = ""
        served_log = online.served_log  # the served-feature log's counters (featuremart.servedlog), when logging
        return PlainTextResponse(metrics.render() + freshness + (served_log.prometheus() if served_log else ""),
                                 media_type="text/plain; version=0.0.4")

    async def client_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ClientError)
        return _error(exc.status, str(exc), close=exc.close)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail)

    async def store_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FeaturemartError)
        return _error(503, _unavailable(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        return _error(500, "internal error (logged on the server)", close=True)

    app = Starlette(
        routes=[
            Route("/features", get_features, methods=["POST"]),
            Route("/features", list_features, methods=["GET"]),
            Route("/services", list_services, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        exception_handlers={ClientError: client_error, HTTPException: http_error, FeaturemartError: store_error,
                            Exception: server_error},
    )
    app.state.metrics = metrics
    return _Observed(app, metrics, token)  # type: ignore[return-value]


def _unavailable(exc: FeaturemartError) -> str:
    """What a 503 tells the client; the detail (which names the store's address and user) goes to the log."""
    log.warning("online store error: %s", exc)
    return NOT_PUBLISHED if isinstance(exc, NotPublishedError) else UNAVAILABLE


def _preload(reader: OnlineReader) -> None:
    try:
        reader.registry  # load it now, so the first request does not pay for it; /readyz reports failures
    except FeaturemartError as exc:
        log.warning("registry not loaded yet (/readyz will say 503): %s", exc)


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):  # '²'.isdigit() is True, and int('²') raises
            raise ClientError(400, f"Content-Length {length!r} is not a number", close=True)
        if int(length) > limit:
            raise ClientError(413, f"request body of {int(length)} bytes; the limit is {limit}", close=True)
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ClientError(413, f"request body over {limit} bytes", close=True)
                chunks.append(chunk)
    except TimeoutError:
        log.warning("a request body did not arrive within %gs (--body-timeout)", timeout)
        raise ClientError(408, f"the request body did not arrive within {timeout:g}s", close=True) from None
    except ClientDisconnect:
        log.warning("a client disconnected before sending its whole request body")
        raise ClientError(CLIENT_CLOSED, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


class _Observed:
    """ASGI middleware: the bearer token check, request metrics (count by status code, latency), and the last
    guard: an exception no handler expected is logged (rate-limited) and answered once, never re-raised into
    uvicorn (which would drop the keep-alive connection without a word)."""

    def __init__(self, app: Starlette, metrics: Metrics, token: str | None):
        self.app, self.metrics = app, metrics
        self.state = app.state
        self._expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        responded = False

        async def send_observed(message: dict) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        try:
            if self._expected is not None and path not in OPEN_PATHS and not self._authorized(scope):
                await _error(401, "missing or wrong bearer token: send `Authorization: Bearer <token>`")(
                    scope, receive, send_observed)
                return
            await self.app(scope, receive, send_observed)
        except Exception:  # noqa: BLE001 - Starlette re-raises after answering 500: log it here, once
            log.exception("error answering %s %s", scope.get("method"), path)
            if not responded:
                await _error(500, "internal error (logged on the server)", close=True)(scope, receive, send_observed)
        finally:
            self.metrics.observe(endpoint, status, time.perf_counter() - started)

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


#: Descriptors a server process needs besides its client connections (Redis pool, threadpool, logs, imports).
SPARE_DESCRIPTORS = 64


def _check_descriptors(max_connections: int) -> None:
    """Refuse a connection cap the process cannot honour: past `ulimit -n`, accept() fails instead."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections + SPARE_DESCRIPTORS > soft:
        raise ConfigError(f"--max-connections {max_connections} needs about {max_connections + SPARE_DESCRIPTORS} "
                          f"file descriptors but this process may open {soft} (ulimit -n): lower "
                          f"--max-connections or raise the limit")


def serve(reader: OnlineReader | None, settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, workers: int = 1) -> None:
    """Run the server until interrupted (uvicorn; access log off: see /metrics).

    With `reader`, one process serves it; without, `workers` processes each build their own from the
    environment (`create_app()` as a factory). Both get the timeouts and the connection cap of `settings`.
    """
    import uvicorn

    from featuremart.http_guard import GuardedH11Protocol, throttle_logs

    _check_descriptors(settings.max_connections)
    settings.to_env()  # read by the worker processes and by GuardedH11Protocol
    throttle_logs()
    limits: dict[str, Any] = dict(
        http=GuardedH11Protocol, timeout_keep_alive=settings.keep_alive,
        # uvicorn answers 503 once `limit_concurrency` connections are open; GuardedH11Protocol closes a
        # connection beyond max_connections before that, so the limit is one above it.
        limit_concurrency=settings.max_connections + 1, access_log=False, log_level="info")
    if reader is None:
        uvicorn.run("featuremart.server:create_app", factory=True, host=host, port=port, workers=workers, **limits)
        return
    _preload(reader)
    app = create_app(reader, token=token, max_entities=settings.max_entities,
                     max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout)
    uvicorn.run(app, host=host, port=port, **limits)

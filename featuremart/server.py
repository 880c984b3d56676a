"""The HTTP feature server: `featuremart serve`, a small Starlette (ASGI) app run by uvicorn.

Endpoints (docs/serving.md has examples and every error):

    POST /features   {"service": "fraud_model" | "features": ["view.feature", ...], "entities": [{...}, ...]}
    GET  /services   feature services and their features, with types
    GET  /features   feature views and their features, with types, ttl, join keys and version
    GET  /healthz    the process is up
    GET  /readyz     Redis answers and a registry is published (503 otherwise)
    GET  /metrics    Prometheus text format

Reads go through `OnlineReader` (one MGET per request, registry id included), so a sync that publishes a new
registry is picked up by the next request and a response never mixes two versions of a view. The reader is
blocking redis-py; it runs in Starlette's threadpool so one slow Redis call does not stall the event loop
(docs/serving.md has the measurement behind this choice).

Every client mistake (malformed JSON, wrong shapes or key types, unknown names, oversize body or batch, a
missing or wrong bearer token) is a 4xx with a JSON body `{"error": "..."}`; the token is never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from datetime import date, datetime
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from featuremart.errors import FeaturemartError, OnlineStoreError, UnknownNameError
from featuremart.online.reader import STATUSES, OnlineReader, OnlineResult
from featuremart.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTITIES = 1000
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: Latency histogram buckets, seconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ENDPOINTS = ("/features", "/services", "/healthz", "/readyz", "/metrics")
#: Paths answered without the bearer token: probes from the orchestrator.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REQUEST_KEYS = frozenset({"service", "features", "entities"})


class ClientError(Exception):
    """A request the client must fix: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def _json(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return Response(body, status_code=status, media_type="application/json")


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def parse_request(body: bytes, max_entities: int) -> tuple[str | None, list[str] | None, list[dict[str, Any]]]:
    """Validate a `POST /features` body; returns (service, features, entities) or raises ClientError."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
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
                raise ClientError(400, f"entities[{i}].{key} must be a string or an integer; got "
                                       f"{json.dumps(value)}")
    return service, features, entities


def render_result(service: str | None, entities: list[dict[str, Any]], result: OnlineResult) -> dict[str, Any]:
    records = result.to_records()
    return {
        "service": service,
        "features": list(result.names),
        "versions": result.versions,
        "results": [
            {"entity": entity,
             "values": {name: {"value": v.value, "status": v.status, "event_ts": v.event_ts}
                        for name, v in record.items()}}
            for entity, record in zip(entities, records)
        ],
    }


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


def create_app(reader: OnlineReader, *, token: str | None = None, max_entities: int = DEFAULT_MAX_ENTITIES,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, threadpool: bool = True) -> Starlette:
    """The ASGI app serving `reader`.

    Args:
        reader: the online reader (e.g. `FeatureStore.from_url(url).reader`).
        token: if set, every endpoint but /healthz and /readyz needs `Authorization: Bearer <token>`.
        max_entities: the largest batch `POST /features` accepts (413 above).
        max_body_bytes: the largest request body accepted (413 above).
        threadpool: run the blocking Redis reads in Starlette's threadpool (the default; False calls them on
            the event loop, kept only to measure the difference, see docs/serving.md).
    """
    metrics = Metrics()

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if threadpool:
            return await run_in_threadpool(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    async def get_features(request: Request) -> Response:
        body = await _read_body(request, max_body_bytes)
        service, features, entities = parse_request(body, max_entities)
        try:
            result = await call(reader.read, entities, service=service, features=features)
        except UnknownNameError as exc:
            raise ClientError(400, str(exc)) from None
        metrics.served(result)
        return _json(render_result(service, entities, result))

    async def list_services(request: Request) -> Response:
        return _json(registry_services(await call(reader.check_registry)))

    async def list_features(request: Request) -> Response:
        return _json(registry_views(await call(reader.check_registry)))

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            registry = await call(reader.check_registry)
        except FeaturemartError as exc:
            return _error(503, f"not ready: {exc}")
        return _json({"status": "ready", "registry_id": reader.registry_id, "views": len(registry.views),
                      "services": len(registry.services)})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def client_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ClientError)
        return _error(exc.status, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail)

    async def store_error(request: Request, exc: Exception) -> Response:
        log.warning("online store error: %s", exc)
        return _error(503, str(exc))

    app = Starlette(
        routes=[
            Route("/features", get_features, methods=["POST"]),
            Route("/features", list_features, methods=["GET"]),
            Route("/services", list_services, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        exception_handlers={ClientError: client_error, HTTPException: http_error, OnlineStoreError: store_error,
                            FeaturemartError: store_error},
    )
    app.state.metrics = metrics
    return _Observed(app, metrics, token)  # type: ignore[return-value]


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):  # '²'.isdigit() is True, and int('²') raises
            raise ClientError(400, f"Content-Length {length!r} is not a number")
        if int(length) > limit:
            raise ClientError(413, f"request body of {int(length)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Observed:
    """ASGI middleware: the bearer token check, and request metrics (count by status code, latency)."""

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

        async def send_observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self._expected is not None and path not in OPEN_PATHS and not self._authorized(scope):
                await _error(401, "missing or wrong bearer token: send `Authorization: Bearer <token>`")(
                    scope, receive, send_observed)
                return
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.observe(endpoint, status, time.perf_counter() - started)

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


def serve(reader: OnlineReader, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_entities: int = DEFAULT_MAX_ENTITIES, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
    """Run the server until interrupted (uvicorn, one process; access log off: see /metrics)."""
    import uvicorn

    try:
        reader.registry  # load it now, so the first request does not pay for it; /readyz reports failures
    except FeaturemartError as exc:
        log.warning("registry not loaded yet (/readyz will say 503): %s", exc)
    app = create_app(reader, token=token, max_entities=max_entities, max_body_bytes=max_body_bytes)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")

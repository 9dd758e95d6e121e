"""Pure ASGI middleware: request concurrency and the upload byte/time caps, and per-request
timing + request metrics.

Pure ASGI (not BaseHTTPMiddleware) so the body can be counted as it streams in, before anything
buffers or parses it, and so responses are not re-buffered.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swin_serve.server.errors import ApiError, ErrorCode, is_v2_path
from swin_serve.server.observability import tracing
from swin_serve.server.observability.logs import log_access
from swin_serve.server.observability.metrics import Metrics, endpoint_label, exemplar
from swin_serve.server.state import RequestSlots, RequestTimings

log = logging.getLogger(__name__)

# Requests that carry no body (probes, /metrics, docs): never limited, so liveness and metrics
# stay available under any load.
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _carries_body(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] not in _BODYLESS_METHODS


async def _answer(
    error: ApiError, metrics: Metrics, scope: Scope, receive: Receive, send: Send
) -> None:
    """Send ``error`` from outside the app's exception handlers, counted like theirs."""
    metrics.rejected(error.code)
    await error.response(v2=is_v2_path(scope["path"]))(scope, receive, send)


class ConcurrencyLimitMiddleware:
    """503 ``overloaded`` (JSON, Retry-After) once every request slot is taken by a request with
    a body (gRPC inferences take them too). The batcher's queue bounds images waiting for the
    model; this bounds everything before the queue (bodies being received or decoded), and so
    the memory they hold.

    Replaces uvicorn's ``limit_concurrency`` as the request limit: that one answers plain text.
    """

    def __init__(self, app: ASGIApp, *, slots: RequestSlots, metrics: Metrics) -> None:
        self.app = app
        self.slots = slots
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _carries_body(scope):
            await self.app(scope, receive, send)
            return
        if not self.slots.try_take():
            # Outside the app's exception handlers, so answer here. uvicorn discards the unread
            # body, and the connection stays usable.
            error = ApiError(
                ErrorCode.OVERLOADED, f"server overloaded: {self.slots.in_use} requests in progress"
            )
            await _answer(error, self.metrics, scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.slots.give_back()


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: from Content-Length before reading, else while streaming.
    408 when the whole body has not arrived ``timeout_s`` after the request started.

    Chunked uploads and a Content-Length that understates the body are caught by counting the
    bytes the app actually receives; the app never sees more than ``max_bytes`` of body. The time
    bound is for the whole body, not per read: a client trickling a byte a second must not hold
    a request slot for the hours ``max_bytes`` would take.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _carries_body(scope):
            await self.app(scope, receive, send)
            return
        refused = self._refuse_declared_length(Headers(scope=scope).get("content-length"))
        if refused is not None:
            await _answer(refused, self.metrics, scope, receive, send)
            return

        received = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # e.g. waiting for http.disconnect: no body timeout
            with anyio.move_on_after(deadline - time.monotonic()) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise ApiError(
                    ErrorCode.REQUEST_TIMEOUT,
                    f"request body not received within {self.timeout_s:g} s",
                    close_connection=True,
                )
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(
                        ErrorCode.PAYLOAD_TOO_LARGE,
                        f"body exceeds the limit of {self.max_bytes} bytes",
                        close_connection=True,
                    )
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, counting_receive, send)

    def _refuse_declared_length(self, declared: str | None) -> ApiError | None:
        """The error a Content-Length earns before a byte of the body is read, if any.
        Connection: close, because the unread body is still on the wire."""
        if declared is None:
            return None
        try:
            size = int(declared)
        except ValueError:
            size = -1
        if size < 0:
            return ApiError(ErrorCode.BAD_REQUEST, "invalid Content-Length", close_connection=True)
        if size > self.max_bytes:
            return ApiError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"body of {size} bytes exceeds the limit of {self.max_bytes} bytes",
                close_connection=True,
            )
        return None


class ObservabilityMiddleware:
    """Counts and times every HTTP request and adds its ``Server-Timing`` header.

    Also the last line of defence: an exception nothing else handled becomes a JSON 500 that is
    counted like any other response, instead of a bare text 500 from the server.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_label(scope["path"])
        with tracing.server_span(*_span_of(scope, endpoint)) as span:
            await self._observe(scope, receive, send, endpoint, span)

    async def _observe(
        self, scope: Scope, receive: Receive, send: Send, endpoint: str, span: Any
    ) -> None:
        timings = RequestTimings()
        scope.setdefault("state", {})["timings"] = timings
        started = time.perf_counter()
        response_started = False

        async def observed_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                elapsed = time.perf_counter() - started
                status = message["status"]
                MutableHeaders(scope=message).append("Server-Timing", timings.header(elapsed))
                self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
                self.metrics.request_latency.labels(endpoint=endpoint).observe(
                    elapsed, exemplar(tracing.trace_ids())
                )
                tracing.set_http_status(span, status)
                self._log(scope, endpoint, status, elapsed)
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except ClientDisconnect:
            # The client left mid-body: nobody to answer, and not a server error. Counted as 499.
            if response_started:
                raise
            self.metrics.rejected(ErrorCode.CLIENT_DISCONNECTED)
            self.metrics.requests.labels(endpoint=endpoint, status="499").inc()
            tracing.set_http_status(span, 499)
            self._log(scope, endpoint, 499, time.perf_counter() - started)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], endpoint)
            if response_started:
                raise
            error = ApiError(ErrorCode.INTERNAL_ERROR, "internal server error")
            await _answer(error, self.metrics, scope, receive, observed_send)

    @staticmethod
    def _log(scope: Scope, endpoint: str, status: int, elapsed: float) -> None:
        # While the request's span is current, so that the line carries its ids.
        model = scope["state"].get("model")
        log_access(
            protocol="http",
            method=known_method(scope["method"]),
            route=endpoint,
            status=status,
            duration_s=elapsed,
            model=model,
        )


_PROPAGATED = (b"traceparent", b"tracestate", b"baggage")
_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def known_method(method: str) -> str:
    """The method, or ``_OTHER`` for one HTTP does not define: h11 takes any token, and a
    client's made-up token must not become a span name, attribute or log field."""
    return method if method in _METHODS else "_OTHER"


def _span_of(scope: Scope, endpoint: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The server span's name, the caller's trace headers and the span's attributes: the route
    template, never a path the server does not know (a client's string)."""
    if tracing.tracer() is None:
        return "", {}, {}
    method = known_method(scope["method"])
    carrier = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _PROPAGATED
    }
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    if scope.get("server"):
        attributes["server.address"], attributes["server.port"] = scope["server"]
    if endpoint == "other" or method == "_OTHER":
        return "HTTP" if method == "_OTHER" else method, carrier, attributes
    attributes["http.route"] = endpoint
    if endpoint == scope["path"]:  # a templated path holds a client's string: the route says enough
        attributes["url.path"] = endpoint
    return f"{method} {endpoint}", carrier, attributes

"""Pure ASGI middleware: the upload byte cap, and per-request timing + request metrics.

Pure ASGI (not BaseHTTPMiddleware) so the body can be counted as it streams in, before anything
buffers or parses it, and so responses are not re-buffered.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ApiError, ErrorCode, error_body
from service.metrics import Metrics, endpoint_label
from service.state import RequestTimings

log = logging.getLogger(__name__)

# A client that sends no body bytes for this long is cut off (408), so slow uploaders cannot
# hold a worker slot forever; uvicorn's own timeouts only cover idle keep-alive connections.
BODY_READ_TIMEOUT_S = 30.0


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: from Content-Length before reading, else while streaming.

    Chunked uploads and a Content-Length that understates the body are caught by counting the
    bytes the app actually receives; the app never sees more than ``max_bytes`` of body.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await self._reject(
                    scope, receive, send, 400, ErrorCode.BAD_REQUEST, "invalid Content-Length"
                )
                return
            if size > self.max_bytes:
                await self._reject(
                    scope,
                    receive,
                    send,
                    413,
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"body of {size} bytes exceeds the limit of {self.max_bytes} bytes",
                )
                return

        received = 0
        body_done = False

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # e.g. waiting for http.disconnect: no body timeout
            try:
                message = await asyncio.wait_for(receive(), BODY_READ_TIMEOUT_S)
            except TimeoutError:
                raise ApiError(
                    408, ErrorCode.REQUEST_TIMEOUT, "request body not received in time"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise ApiError(
                        413,
                        ErrorCode.PAYLOAD_TOO_LARGE,
                        f"body exceeds the limit of {self.max_bytes} bytes",
                    )
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, status: int, code: ErrorCode, message: str
    ) -> None:
        self.metrics.rejections.labels(reason=code.value).inc()
        # Connection: close, because the unread body is still on the wire.
        response = JSONResponse(
            error_body(code, message), status_code=status, headers={"Connection": "close"}
        )
        await response(scope, receive, send)


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
        timings = RequestTimings()
        scope.setdefault("state", {})["timings"] = timings
        endpoint = endpoint_label(scope["path"])
        started = time.perf_counter()
        response_started = False

        async def observed_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                elapsed = time.perf_counter() - started
                MutableHeaders(scope=message).append("Server-Timing", timings.header(elapsed))
                self.metrics.requests.labels(endpoint=endpoint, status=str(message["status"])).inc()
                self.metrics.request_latency.labels(endpoint=endpoint).observe(elapsed)
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], endpoint)
            if response_started:
                raise
            self.metrics.rejections.labels(reason=ErrorCode.INTERNAL_ERROR.value).inc()
            response = JSONResponse(
                error_body(ErrorCode.INTERNAL_ERROR, "internal server error"), status_code=500
            )
            await response(scope, receive, observed_send)

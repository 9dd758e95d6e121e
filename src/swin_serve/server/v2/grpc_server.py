"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) on SWIN_GRPC_PORT.

It runs on the API's event loop, beside uvicorn, and shares its batcher, request slots,
deadlines and metrics. Each answer is a gRPC status mapped from the API's error table.

On a drain, new inference calls are answered UNAVAILABLE at once (clients keep one HTTP/2
connection for ever, so closing the listener alone would not turn them away), while the calls in
progress finish; once they have (or the drain budget is spent) the server stops, before the
batcher itself drains. Probes and metadata keep answering until then: ServerReady says false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from swin_serve.server.auth import grpc_interceptors
from swin_serve.server.dataplane import DataPlane, weights_warning
from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.lifecycle import DRAIN_ANSWER_MARGIN_S
from swin_serve.server.observability import tracing
from swin_serve.server.observability.metrics import exemplar
from swin_serve.server.state import RequestTimings, ServiceState
from swin_serve.server.v2 import messages
from swin_serve.server.v2.grpc_calls import record_call
from swin_serve.server.v2.grpc_codec import infer_response, metadata_response, parse_request
from swin_serve.server.v2.model import server_metadata
from swin_serve.server.v2.tensors import invalid

log = logging.getLogger(__name__)

_SEND_GRACE_S = 1.0
_CANCEL_GRACE_S = 0.05
TIMEOUT_METADATA = "x-request-timeout-ms"  # as the HTTP header: may only shorten the deadline

# A gRPC status for each HTTP status of the error table.
_STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
_DEADLINE_CODES = {ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED}


def status_code(code: ErrorCode) -> grpc.StatusCode:
    """The gRPC status an error of the API's table is answered with."""
    return _DEADLINE_CODES.get(code) or _STATUS_CODES.get(code.status, grpc.StatusCode.UNKNOWN)


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class InferenceService:
    """The six RPCs, named as the protocol names them, on parsed requests: each asks the data
    plane, as the HTTP routes do."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return {"live": True}

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return {"ready": self.plane.server_ready()}

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return server_metadata()

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return metadata_response(self.plane.model_metadata(request.name, request.version))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return {"ready": self.plane.why_not_ready(request.name, request.version) is None}

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.monotonic()
        plane = self.plane
        with plane.lease(request.model_name) as model:
            plane.admit(model, request.model_name, request.model_version)
            parsed = await plane.off_loop(parse_request, request)
            deadline = plane.deadline(started, *_client_timeouts_ms(context))
            timings = RequestTimings()
            try:
                outputs = await plane.infer_tensors(model, parsed, timings, deadline)
            finally:
                total = time.monotonic() - started
                context.set_trailing_metadata((("server-timing", timings.header(total)),))
            with tracing.step("response"):
                warning = weights_warning(model.engine.manifest)
                return await plane.off_loop(infer_response, parsed, outputs, warning)


# The codes that make a server span an error, per the semantic conventions for gRPC.
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
_PROPAGATED = ("traceparent", "tracestate", "baggage")


def _span_of(
    method: str, context: grpc.aio.ServicerContext, port: int | None
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The server span's name, the caller's trace metadata and the span's attributes."""
    if tracing.tracer() is None:
        return "", {}, {}
    carrier = {k: v for k, v in context.invocation_metadata() or () if k in _PROPAGATED}
    attributes: dict[str, Any] = {
        "rpc.system": "grpc",
        "rpc.service": messages.SERVICE,
        "rpc.method": method,
    }
    if port:
        attributes["server.port"] = port
    return f"{messages.SERVICE}/{method}", carrier, attributes


def _client_timeouts_ms(context: grpc.aio.ServicerContext) -> list[float]:
    """The call's gRPC deadline and its x-request-timeout-ms metadata, in milliseconds."""
    asked = []
    remaining = context.time_remaining()
    if remaining is not None:
        asked.append(max(0.0, remaining) * 1e3)
    for key, value in context.invocation_metadata() or ():
        if key == TIMEOUT_METADATA:
            ms = int(value) if re.fullmatch(r"[0-9]{1,7}", value) else 0
            if not 1 <= ms <= 600_000:
                raise ApiError(
                    ErrorCode.VALIDATION_ERROR,
                    f"{TIMEOUT_METADATA} must be an integer from 1 to 600000",
                )
            asked.append(ms)
    return asked


class GrpcServer:
    """The gRPC server's life: bound and started after the model loads, stopped on a drain."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.plane = DataPlane(state)
        self.port: int | None = None  # bound port, once started
        self._server: grpc.aio.Server | None = None
        self._draining = False
        self._inferring = 0  # ModelInfer calls in progress
        self._idle = asyncio.Event()  # set while none is
        self._idle.set()
        self._stopping: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Bind SWIN_GRPC_PORT on SWIN_HOST and serve; raises GrpcStartError when it cannot."""
        settings = self.state.settings
        server = grpc.aio.server(
            options=[
                # Fail when the port is taken, rather than share it with another process.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.max_upload_bytes),
                # Keep HTTP/2 flow-control windows at their defaults, rather than grown to the
                # link's bandwidth-delay product: a call not admitted yet then buffers kilobytes
                # of its message, not megabytes.
                ("grpc.http2.bdp_probe", 0),
            ],
            maximum_concurrent_rpcs=settings.max_connections,
            interceptors=grpc_interceptors(settings, self.state.metrics),
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        address = _address(settings.host, settings.grpc_port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise GrpcStartError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if not self.port:  # older grpcio reports a failed bind as port 0
            raise GrpcStartError(f"cannot listen for gRPC on {address}: is the port in use?")
        await server.start()
        self._server = server
        log.info("gRPC (Open Inference Protocol) listening on %s", address)

    def begin_drain(self) -> None:
        """Refuse new inference calls from now on; stop once those in progress have finished,
        within what is left of the drain budget."""
        self._draining = True
        if self._server is not None and self._stopping is None:
            grace_s = self.state.lifecycle.drain_time_left() - DRAIN_ANSWER_MARGIN_S
            self._stopping = asyncio.ensure_future(self._stop_when_idle(self._server, grace_s))

    async def stop(self) -> None:
        """Drain (if not begun yet) and wait until the server has stopped."""
        self.begin_drain()
        if self._stopping is not None:
            await self._stopping

    async def _stop_when_idle(self, server: grpc.aio.Server, grace_s: float) -> None:
        deadline = time.monotonic() + max(0.0, grace_s)
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, grace_s))
        except TimeoutError:
            log.error("gRPC: %d calls unfinished when the drain budget ran out", self._inferring)
        # Stopping sends GOAWAY: clients take their next calls to another replica. The handlers
        # have returned, but their answers may still be on their way out: a short grace lets
        # grpc send them before it cancels what is left.
        await server.stop(min(_SEND_GRACE_S, max(0.0, deadline - time.monotonic())))

    def _handlers(self) -> grpc.GenericRpcHandler:
        service = InferenceService(self.plane)
        # Every method is registered as a client stream, though the protocol's are unary (the same
        # on the wire): gRPC reads a unary call's first message and drops any after it, whereas
        # here the handler reads the message itself, and then the client's half-close. ModelInfer
        # also takes its request slot before the message is read, so that a flood of large calls
        # is refused without holding their bytes.
        handlers = {
            method: grpc.stream_unary_rpc_method_handler(
                self._observed(method, getattr(service, method)), response_serializer=_serialize
            )
            for method in messages.METHODS
        }
        return grpc.method_handlers_generic_handler(messages.SERVICE, handlers)

    def _observed(self, method: str, handler: Handler) -> Callable[[Any, Any], Awaitable[Any]]:
        """``handler`` with its request parsed, its answer built, its errors mapped to statuses,
        and the call counted and timed; inference also takes one of the shared request slots."""
        parse, build = messages.request_type(method).FromString, messages.response_type(method)
        plane, metrics = self.plane, self.state.metrics
        limit, read_s = plane.settings.max_upload_bytes, plane.settings.body_timeout_s
        infers = method == "ModelInfer"

        async def observed(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            # ``requests`` stays unread: the call's message comes from context.read().
            with tracing.server_span(*_span_of(method, context, self.port)) as span:
                return await call(context, span)

        async def call(context: grpc.aio.ServicerContext, span: Any) -> Any:
            started, code = time.perf_counter(), grpc.StatusCode.OK
            reading_from: str | None = None  # the call's peer, while its message is read
            try:
                if not infers:
                    reading_from = context.peer()
                    raw = await _request_message(context, reading_from, limit, read_s)
                    reading_from = None
                    result = await handler(_parse(parse, raw), context)
                else:  # admitted before its message is read, then parsed off the loop
                    with self._admitted():
                        reading_from = context.peer()
                        with tracing.step("read body"):
                            raw = await _request_message(context, reading_from, limit, read_s)
                        reading_from = None
                        message = await plane.off_loop(_parse, parse, raw)
                        result = await handler(message, context)
                return build(**result) if isinstance(result, dict) else result
            except ApiError as exc:
                metrics.rejected(exc.code)
                code = status_code(exc.code)
                await context.abort(code, exc.message[:1000])  # metadata has a size limit
            except asyncio.CancelledError:
                reason, code = _cancelled(context, reading_from)
                metrics.rejected(reason)
                raise
            except Exception:
                log.exception("unhandled error in gRPC %s", method)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, "internal server error")
            finally:
                metrics.grpc_latency.labels(method=method).observe(
                    time.perf_counter() - started, exemplar(tracing.trace_ids())
                )
                tracing.set_rpc_status(span, code.value[0], code in _SERVER_ERRORS)
                record_call(metrics, method, code, started)

        return observed

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
        """An inference call's admission: refused while draining or not ready, or when every
        request slot is taken; counted while in progress, so that the drain
        can wait for it."""
        self._inferring += 1
        self._idle.clear()
        try:
            # Before the message is read, so that refusing stays cheap. Which model's queue is
            # full can only be known from the message: ModelInfer asks once it is read.
            if self._draining or not self.plane.taking_requests():
                raise self.plane.unavailable()
            slots = self.state.slots
            if not slots.try_take():
                raise ApiError(
                    ErrorCode.OVERLOADED, f"server overloaded: {slots.in_use} requests in progress"
                )
            try:
                yield
            finally:
                slots.give_back()
        finally:
            self._inferring -= 1
            if not self._inferring:
                self._idle.set()


async def _request_message(
    context: grpc.aio.ServicerContext, peer: str, limit: int, timeout_s: float
) -> bytes:
    """The call's request message, read up to the client's half-close: the protocol's methods
    take exactly one. INVALID_ARGUMENT for none or for more than one, RESOURCE_EXHAUSTED
    (``payload_too_large``, as an HTTP body's 413) when gRPC refused it as over ``limit``, and
    DEADLINE_EXCEEDED (``request_timeout``, as HTTP's 408) when it has not all arrived within
    ``timeout_s``: a client that never half-closes must not hold its slot for ever."""
    try:
        async with asyncio.timeout(timeout_s):
            raw = await context.read()
            extra = await context.read() if isinstance(raw, bytes) else None
    except TimeoutError:
        raise ApiError(
            ErrorCode.REQUEST_TIMEOUT,
            "request message not received and half-closed within SWIN_BODY_TIMEOUT_S "
            f"({timeout_s:g} s)",
        ) from None
    if not isinstance(raw, bytes) and _deadline_passed(context):
        raise asyncio.CancelledError  # the call's end, not the client's message: see _cancelled
    if _refused_by_grpc(context, peer):
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"request message over {limit} bytes")
    if not isinstance(raw, bytes):
        # A client that cancels also reads as EOF here, and the cancellation reaches this task
        # a moment later: wait that moment (only on this error path) so that it is counted as a
        # client that left, not as a request without a message.
        await asyncio.sleep(_CANCEL_GRACE_S)
        raise invalid("the call carries no request message")
    if isinstance(extra, bytes):
        raise invalid("the call carries more than one request message: the method takes one")
    return raw


def _refused_by_grpc(context: grpc.aio.ServicerContext, peer: str) -> bool:
    """Whether gRPC itself ended the call while its message was read: it refuses a message over
    grpc.max_receive_message_length from its length prefix, answers RESOURCE_EXHAUSTED, and the
    handler sees only the end of the call (EOF, or its task cancelled), as when the client
    leaves. What tells the two apart is that gRPC then clears the call's peer, and does not when
    the client cancels or drops its connection (grpcio 1.85; tests/server/v2/test_grpc_limits.py
    holds it to that)."""
    return bool(peer) and not context.peer()


def _cancelled(
    context: grpc.aio.ServicerContext, reading_from: str | None
) -> tuple[ErrorCode, grpc.StatusCode]:
    """Why a call ended before its answer: its deadline passed, gRPC refused its message as too
    large (``reading_from``: the call's peer, while its message was being read), or its client
    went away."""
    if _deadline_passed(context):
        return ErrorCode.DEADLINE_EXCEEDED, grpc.StatusCode.DEADLINE_EXCEEDED
    if reading_from is not None and _refused_by_grpc(context, reading_from):
        return ErrorCode.PAYLOAD_TOO_LARGE, status_code(ErrorCode.PAYLOAD_TOO_LARGE)
    return ErrorCode.CLIENT_DISCONNECTED, grpc.StatusCode.CANCELLED


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class GrpcStartError(RuntimeError):
    """The gRPC port cannot be bound."""


def _parse(parse: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return parse(raw)
    except DecodeError as exc:
        raise invalid(f"malformed protobuf message: {exc}") from exc


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""Optional API keys: bearer tokens for the API, on HTTP and gRPC.

Off unless SWIN_API_KEYS or SWIN_API_KEYS_FILE names at least one key. Then every API call must
carry one: HTTP ``Authorization: Bearer <key>``, gRPC metadata ``authorization: Bearer <key>``.
What stays open, and why (docs/production.md#api-keys):

* the probes (``/healthz``, ``/readyz``, ``/v2/health/*``; gRPC ServerLive and ServerReady):
  the kubelet and load balancers probe without credentials;
* ``/metrics``: Prometheus scrapes without them, and it holds counts and timings, no secrets;
* the web page's files (``/``, ``/static/*``) and the API's description (``/docs``,
  ``/openapi.json``): code and docs, not data. The page asks for a key and sends it with its
  API calls, which are protected like any other client's.

Everything else is protected, routes added later included: a path is open only by being listed.

A presented key is hashed, then compared with the hash of every key, each comparison in
constant time and without stopping at a match: the time taken says neither which key matched,
nor how long a key is, nor how much of one a guess got right. Keys never reach a log line, a
span attribute or a metric label.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from swin_serve.server.errors import ApiError, ErrorCode, is_v2_path
from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.v2 import messages
from swin_serve.server.v2.grpc_calls import record_call

if TYPE_CHECKING:
    from swin_serve.server.settings import Settings

log = logging.getLogger(__name__)

# Long enough that guessing is hopeless; `openssl rand -base64 32` and
# `python -c 'import secrets; print(secrets.token_urlsafe(32))'` give 43 or 44 characters.
MIN_KEY_LENGTH = 16
# RFC 6750's b64token: what an Authorization header and gRPC metadata carry verbatim.
_KEY = re.compile(r"[A-Za-z0-9._~+/=-]+")

OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
_OPEN_PREFIXES = ("/static/",)  # the page's fixed assets (http/ui.py serves nothing else)
OPEN_GRPC_METHODS = frozenset(
    f"/{messages.SERVICE}/{method}" for method in ("ServerLive", "ServerReady")
)

REALM = "swin-serve"
_MISSING = "this API needs a key: send Authorization: Bearer <key>"
_INVALID = "the API key is not valid"


class ApiKeyError(ValueError):
    """A key list that cannot be used; the message names the setting, never a key."""


def parse_keys(text: str, source: str, *, separator: str | None = None) -> list[str]:
    """The keys in ``text``: split on ``separator`` (default: lines), blanks and ``#`` comment
    lines skipped, surrounding whitespace (a file's trailing newline) stripped."""
    parts = text.split(separator) if separator else text.splitlines()
    keys = []
    for number, part in enumerate(parts, start=1):
        key = part.strip()
        if not key or (separator is None and key.startswith("#")):
            continue
        where = f"{source}: key {number}" if separator else f"{source}: line {number}"
        if len(key) < MIN_KEY_LENGTH:
            raise ApiKeyError(f"{where} is shorter than {MIN_KEY_LENGTH} characters")
        if not _KEY.fullmatch(key):
            raise ApiKeyError(
                f"{where} has a character other than letters, digits and -._~+/= "
                "(what an Authorization header carries)"
            )
        keys.append(key)
    return keys


def configured_keys(settings: Settings) -> list[str]:
    """Every key of SWIN_API_KEYS and SWIN_API_KEYS_FILE (empty: keys are off). Raises
    ApiKeyError when one is set but unusable: a server told to check keys never runs open."""
    keys = []
    if settings.api_keys is not None:
        found = parse_keys(settings.api_keys.get_secret_value(), "SWIN_API_KEYS", separator=",")
        if not found:
            raise ApiKeyError("SWIN_API_KEYS is set but holds no key")
        keys += found
    if settings.api_keys_file is not None:
        keys += read_keys_file(settings.api_keys_file)
    return keys


def read_keys_file(path: Path) -> list[str]:
    source = f"SWIN_API_KEYS_FILE ({path})"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"cannot read {source}: {type(exc).__name__}") from exc
    found = parse_keys(text, source)
    if not found:
        raise ApiKeyError(f"{source} holds no key")
    return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>`` (the scheme in any case), else None."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    """The accepted keys, held as SHA-256 digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(dict.fromkeys(_digest(k) for k in keys))
        if not self._digests:
            raise ApiKeyError("no API key given")

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys | None:
        """The configured keys, or None when keys are off."""
        keys = configured_keys(settings)
        return cls(keys) if keys else None

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self)} keys)"

    def accepts(self, authorization: str | None) -> bool:
        """Whether ``authorization`` (a header's value) is ``Bearer`` and one of the keys."""
        token = bearer_token(authorization)
        # Hashed whatever its length: every comparison is of 32 bytes. Every key is compared,
        # with no early exit, so the time is the same whichever key (if any) matches.
        presented = _digest(token or "")
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched and token is not None


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(_OPEN_PREFIXES)


# ---- HTTP ---------------------------------------------------------------------------------------


def install_api_keys(app: FastAPI, settings: Settings, metrics: Metrics) -> None:
    """Say at start whether keys are on; when they are, add the check (as the next middleware
    out) and describe it in the OpenAPI spec, so that /docs can send a key."""
    keys = ApiKeys.from_settings(settings)
    if keys is None:
        log.info(
            "API keys: off (SWIN_API_KEYS and SWIN_API_KEYS_FILE unset): any client that "
            "reaches the ports may call the API"
        )
        return
    log.info(
        "API keys: on (%d keys): HTTP and gRPC API calls need Authorization: Bearer <key>; "
        "probes, /metrics, /docs and the web page's files stay open",
        len(keys),
    )
    app.add_middleware(ApiKeyMiddleware, keys=keys, metrics=metrics)
    _describe_in_openapi(app)


class ApiKeyMiddleware:
    """401 ``unauthenticated`` (``WWW-Authenticate: Bearer``) for a request to a protected path
    without one of the keys. It runs before the request takes a slot or has its body read."""

    def __init__(self, app: ASGIApp, *, keys: ApiKeys, metrics: Metrics) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        if self.keys.accepts(authorization):
            await self.app(scope, receive, send)
            return
        missing = bearer_token(authorization) is None
        error = ApiError(ErrorCode.UNAUTHENTICATED, _MISSING if missing else _INVALID)
        self.metrics.rejected(error.code)
        response = error.response(v2=is_v2_path(scope["path"]))
        response.headers["WWW-Authenticate"] = _challenge(missing)
        # uvicorn discards the unread body, as for the concurrency limit's 503.
        await response(scope, receive, send)


def _challenge(missing: bool) -> str:
    """RFC 6750: no error attribute when no credentials came, invalid_token when wrong ones."""
    challenge = f'Bearer realm="{REALM}"'
    return challenge if missing else f'{challenge}, error="invalid_token"'


def _describe_in_openapi(app: FastAPI) -> None:
    """A bearer security scheme on every protected operation, and its 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # sets app.openapi_schema: amended in place
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["apiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "One of SWIN_API_KEYS / SWIN_API_KEYS_FILE",
            }
            for path, operations in schema.get("paths", {}).items():
                if is_open_path(path):
                    continue
                for operation in operations.values():
                    operation["security"] = [{"apiKey": []}]
                    operation.setdefault("responses", {})["401"] = {
                        "description": "Missing or invalid API key",
                        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                    }
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---- gRPC ---------------------------------------------------------------------------------------


def grpc_interceptors(settings: Settings, metrics: Metrics) -> list[grpc.aio.ServerInterceptor]:
    """The gRPC server's interceptors: the key check when keys are on, else none."""
    keys = ApiKeys.from_settings(settings)
    return [] if keys is None else [ApiKeyInterceptor(keys, metrics)]


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for a call without one of the keys in its ``authorization`` metadata,
    before its message is read; ServerLive and ServerReady stay open."""

    def __init__(self, keys: ApiKeys, metrics: Metrics) -> None:
        self.keys = keys
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        full_method = handler_call_details.method
        # An unknown method (None) stays UNIMPLEMENTED, as it is without keys.
        if handler is None or full_method in OPEN_GRPC_METHODS:
            return handler
        authorization = _metadata(handler_call_details.invocation_metadata, "authorization")
        if self.keys.accepts(authorization):
            return handler
        missing = bearer_token(authorization) is None
        return self._refusal(full_method.rpartition("/")[2], _MISSING if missing else _INVALID)

    def _refusal(self, method: str, message: str) -> grpc.RpcMethodHandler:
        """A handler that answers UNAUTHENTICATED without reading the request: a client stream,
        which is the same on the wire as the unary calls of this service."""
        metrics = self.metrics

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            started = time.perf_counter()
            code = grpc.StatusCode.UNAUTHENTICATED
            metrics.rejected(ErrorCode.UNAUTHENTICATED)
            record_call(metrics, method, code, started)
            await context.abort(code, message)

        return grpc.stream_unary_rpc_method_handler(refuse)


def _metadata(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return value
    return None

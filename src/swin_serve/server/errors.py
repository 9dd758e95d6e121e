"""One JSON error shape for every failure: ``{"error": {"code": ..., "message": ...}}``, and on
the Open Inference Protocol's paths (``/v2...``) the protocol's own ``{"error": "message"}``.

``ErrorCode`` is the one table of errors: each stable code clients may switch on, with the HTTP
status it is answered with and, for the retryable 503s, the Retry-After seconds. Every error is
an ``ApiError(code, message)``; the table supplies the rest.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse


class ErrorCode(StrEnum):
    """code = "value", HTTP status[, Retry-After seconds]."""

    status: int
    retry_after_s: int | None

    def __new__(cls, code: str, status: int, retry_after_s: int | None = None) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.status = status
        member.retry_after_s = retry_after_s
        return member

    INVALID_IMAGE = "invalid_image", 400
    BAD_REQUEST = "bad_request", 400  # malformed multipart, no image
    INVALID_TENSOR = "invalid_tensor", 400  # v2: a tensor's name, datatype, shape or data
    UNAUTHENTICATED = "unauthenticated", 401  # API keys on, and no valid one came
    NOT_FOUND = "not_found", 404
    METHOD_NOT_ALLOWED = "method_not_allowed", 405
    NOT_ACCEPTABLE = "not_acceptable", 406
    REQUEST_TIMEOUT = "request_timeout", 408  # client too slow to send its body
    PAYLOAD_TOO_LARGE = "payload_too_large", 413  # body bytes
    IMAGE_TOO_LARGE = "image_too_large", 413  # pixels: decompression bomb
    TOO_MANY_IMAGES = "too_many_images", 413  # parts per request
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type", 415
    VALIDATION_ERROR = "validation_error", 422
    INFERENCE_FAILED = "inference_failed", 500
    INTERNAL_ERROR = "internal_error", 500
    OVERLOADED = "overloaded", 503, 1
    NOT_READY = "not_ready", 503, 5
    DRAINING = "draining", 503, 5
    DEADLINE_EXCEEDED = "deadline_exceeded", 503, 1
    # 499 (nginx's "client closed request"): only ever counted in metrics, never sent, because
    # the client is gone. Keeps a disconnect from being counted as a server error.
    CLIENT_DISCONNECTED = "client_disconnected", 499


# The code of a framework-raised HTTPException (routing's 404 and 405, say), by its status.
_FRAMEWORK_CODES: dict[int, ErrorCode] = {
    code.status: code
    for code in (
        ErrorCode.BAD_REQUEST,
        ErrorCode.NOT_FOUND,
        ErrorCode.METHOD_NOT_ALLOWED,
        ErrorCode.NOT_ACCEPTABLE,
        ErrorCode.REQUEST_TIMEOUT,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.NOT_READY,
    )
}


def code_for_status(status: int) -> ErrorCode:
    """Stable code for a framework-raised HTTPException of this status."""
    return _FRAMEWORK_CODES.get(
        status, ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.BAD_REQUEST
    )


class ApiError(Exception):
    """Raised anywhere below the routes; the app's handler turns it into the JSON error."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        details: Any | None = None,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        # For errors raised with part of the body still unread: the connection cannot be reused.
        self.close_connection = close_connection

    @property
    def status(self) -> int:
        return self.code.status

    @property
    def headers(self) -> dict[str, str]:
        headers = {}
        if self.code.retry_after_s is not None:
            headers["Retry-After"] = str(self.code.retry_after_s)
        if self.close_connection:
            headers["Connection"] = "close"
        return headers

    def body(self, *, v2: bool = False) -> dict[str, Any]:
        """The JSON body; ``v2``: in the Open Inference Protocol's shape."""
        if v2:
            return {"error": self.message}
        return error_body(self.code, self.message, self.details)

    def response(self, *, v2: bool = False) -> JSONResponse:
        return JSONResponse(self.body(v2=v2), status_code=self.status, headers=self.headers)


def is_v2_path(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol, whose errors have its shape."""
    return path == "/v2" or path.startswith("/v2/")


def error_body(code: ErrorCode, message: str, details: Any | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code.value, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    """Body of every non-2xx response."""

    error: ErrorDetail


def _example(code: ErrorCode, message: str) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "content": {"application/json": {"example": error_body(code, message)}},
    }


_RETRY_HEADER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}

# Declared on the inference routes so the OpenAPI spec (and schemathesis) knows every status.
INFERENCE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Not a decodable image, truncated or corrupt",
        **_example(ErrorCode.INVALID_IMAGE, "cannot decode image: truncated PNG"),
    },
    404: {
        "description": "No such model, or (without a name) several models and no default",
        **_example(ErrorCode.NOT_FOUND, "unknown model 'swin_b'; models: ['swin_t']"),
    },
    408: {
        "description": "Body not received within SWIN_BODY_TIMEOUT_S",
        **_example(ErrorCode.REQUEST_TIMEOUT, "request body not received in time"),
    },
    413: {
        "description": "Body over SWIN_MAX_UPLOAD_BYTES, image over SWIN_MAX_IMAGE_PIXELS, or too many images",
        **_example(ErrorCode.IMAGE_TOO_LARGE, "image is 66000x66000 pixels"),
    },
    415: {
        "description": "Content type or image format not supported",
        **_example(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "image format TIFF is not accepted"),
    },
    422: {
        "description": "Bad query parameter",
        **_example(ErrorCode.VALIDATION_ERROR, "top_k must be between 1 and 1000"),
    },
    500: {
        "description": "The model run failed (only this batch)",
        **_example(ErrorCode.INFERENCE_FAILED, "model run failed"),
    },
    503: {
        "description": "Overloaded, deadline passed while queued or decoding, not ready or draining; retry later",
        "headers": _RETRY_HEADER,
        **_example(ErrorCode.OVERLOADED, "queue full"),
    },
}

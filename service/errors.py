"""One JSON error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

Codes are stable strings clients may switch on; the HTTP status follows the README error table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class ErrorCode(StrEnum):
    INVALID_IMAGE = "invalid_image"  # 400
    BAD_REQUEST = "bad_request"  # 400 (malformed multipart, no image)
    NOT_FOUND = "not_found"  # 404
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    NOT_ACCEPTABLE = "not_acceptable"  # 406
    REQUEST_TIMEOUT = "request_timeout"  # 408 (client too slow to send its body)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413 (body bytes)
    IMAGE_TOO_LARGE = "image_too_large"  # 413 (pixels: decompression bomb)
    TOO_MANY_IMAGES = "too_many_images"  # 413 (parts per request)
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    VALIDATION_ERROR = "validation_error"  # 422
    INFERENCE_FAILED = "inference_failed"  # 500
    INTERNAL_ERROR = "internal_error"  # 500
    OVERLOADED = "overloaded"  # 503
    NOT_READY = "not_ready"  # 503
    DRAINING = "draining"  # 503
    DEADLINE_EXCEEDED = "deadline_exceeded"  # 503
    # 499 (nginx's "client closed request"): only ever counted in metrics, never sent, because
    # the client is gone. Keeps a disconnect from being counted as a server error.
    CLIENT_DISCONNECTED = "client_disconnected"


# Seconds a client should wait before retrying each 503 (Retry-After).
RETRY_AFTER_S: dict[ErrorCode, int] = {
    ErrorCode.OVERLOADED: 1,
    ErrorCode.DEADLINE_EXCEEDED: 1,
    ErrorCode.NOT_READY: 5,
    ErrorCode.DRAINING: 5,
}

_STATUS_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.BAD_REQUEST,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    406: ErrorCode.NOT_ACCEPTABLE,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_ERROR,
    503: ErrorCode.NOT_READY,
}


def code_for_status(status: int) -> ErrorCode:
    """Stable code for a framework-raised HTTPException of this status."""
    return _STATUS_CODES.get(
        status, ErrorCode.INTERNAL_ERROR if status >= 500 else ErrorCode.BAD_REQUEST
    )


class ApiError(Exception):
    """Raised anywhere below the routes; the app's handler turns it into the JSON error."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        details: Any | None = None,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        # For errors raised with part of the body still unread: the connection cannot be reused.
        self.close_connection = close_connection

    @property
    def headers(self) -> dict[str, str]:
        headers = {}
        retry = RETRY_AFTER_S.get(self.code)
        if retry is not None:
            headers["Retry-After"] = str(retry)
        if self.close_connection:
            headers["Connection"] = "close"
        return headers

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


def error_body(code: ErrorCode, message: str, details: Any | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code.value, "message": message}
    if details is not None:
        err["details"] = details
    return {"error": err}


def overloaded(message: str) -> ApiError:
    return ApiError(503, ErrorCode.OVERLOADED, message)


def invalid_image(message: str) -> ApiError:
    return ApiError(400, ErrorCode.INVALID_IMAGE, message)


def image_too_large(message: str) -> ApiError:
    return ApiError(413, ErrorCode.IMAGE_TOO_LARGE, message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, message)


def validation_error(message: str) -> ApiError:
    return ApiError(422, ErrorCode.VALIDATION_ERROR, message)


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
        "description": "Overloaded, deadline passed while queued, not ready or draining; retry later",
        "headers": _RETRY_HEADER,
        **_example(ErrorCode.OVERLOADED, "queue full"),
    },
}

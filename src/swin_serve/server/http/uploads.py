"""The raw bytes of each uploaded image: multipart ``file`` parts, or one ``image/*`` body."""

from __future__ import annotations

from contextlib import aclosing

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.observability import tracing


class TooManyParts(MultiPartException):
    """The body has more file parts than one request may carry."""


class _ImagePartsParser(MultiPartParser):
    """Starlette's multipart parser, whose file-count limit raises a type of its own: the 413
    must not hang on the wording of Starlette's message, which is the same exception type as
    every 400 of a malformed body."""

    def on_headers_finished(self) -> None:
        try:
            super().on_headers_finished()
        except MultiPartException as exc:
            # The counter Starlette just checked. It is private: should it go, the limit still
            # holds and answers 400, and the upload-limit tests (which expect 413) say so.
            if getattr(self, "_current_files", 0) > self.max_files:
                raise TooManyParts(exc.message) from exc
            raise


async def read_image_bodies(request: Request, max_images: int) -> list[bytes]:
    """The raw bytes of each uploaded image, at most ``max_images`` of them (413 past it)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        with tracing.step("read body"):
            return await _read_file_parts(request, max_images)
    if media.startswith("image/"):
        with tracing.step("read body"):
            return [await request.body()]
    raise ApiError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        f"content type {media or '(none)'!r} not accepted: send multipart/form-data with `file` "
        "fields, or the image itself with an image/* content type",
    )


async def _read_file_parts(request: Request, max_images: int) -> list[bytes]:
    try:
        async with aclosing(request.stream()) as stream:
            parser = _ImagePartsParser(
                request.headers, stream, max_files=max_images, max_fields=max_images + 16
            )
            form = await parser.parse()
    except TooManyParts as exc:
        raise ApiError(
            ErrorCode.TOO_MANY_IMAGES, f"at most {max_images} images per request"
        ) from exc
    except MultiPartException as exc:
        raise ApiError(ErrorCode.BAD_REQUEST, f"malformed multipart body: {exc.message}") from exc
    try:
        files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
        if not files:
            raise ApiError(ErrorCode.BAD_REQUEST, "multipart body has no `file` part")
        return [await f.read() for f in files]
    finally:
        await form.close()

"""Tensors as the Open Inference Protocol carries them, independent of HTTP or gRPC.

FP32 elements travel as JSON numbers or as little-endian float32 bytes; BYTES elements as JSON
strings (base64 here: image files are not text) or, in binary form, each as a 4-byte
little-endian length followed by its bytes (Triton's binary tensor extension).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swin_serve.server.errors import ApiError, ErrorCode

FP32 = "FP32"
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")
MAX_ELEMENTS = 2**63 - 1  # the protocol's shapes are int64: no tensor holds more elements
# A BYTES element is one image, and no request may carry more than SWIN_MAX_IMAGES_PER_REQUEST
# allows at most: a larger count is refused before a single element is read.
MAX_BYTES_ELEMENTS = 1000


def invalid(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_TENSOR, message[:500])


@dataclass(frozen=True)
class InputTensor:
    """One input: FP32 elements as a flat float32 array, BYTES elements as a list of bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False  # HTTP only: in the binary section rather than as JSON data
    classification: int = 0  # Triton's classification extension: the top k, as BYTES


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]  # float32 array of ``shape``, or the BYTES elements in order
    binary: bool = False

    def to_bytes(self) -> bytes:
        """The flattened elements in binary form."""
        if self.datatype == BYTES:
            return serialize_bytes(self.data)  # type: ignore[arg-type]
        return np.ascontiguousarray(self.data, dtype="<f4").tobytes()

    def to_json_data(self) -> list[Any]:
        if self.datatype == BYTES:
            return [b.decode("utf-8", "replace") for b in self.data]  # type: ignore[union-attr]
        return np.asarray(self.data).reshape(-1).tolist()


@dataclass
class InferenceRequest:
    """An inference request, whichever protocol brought it."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[InputTensor] = field(default_factory=list)
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty: every output
    binary_outputs: bool = False  # HTTP: outputs not named come back in binary form


def element_count(shape: tuple[int, ...]) -> int:
    """The product of ``shape``: exact up to MAX_ELEMENTS, MAX_ELEMENTS + 1 above it. Capped as it
    goes, so that a hostile shape can neither overflow into a small count nor cost big-integer
    arithmetic (nor make a number too long to print in the error message)."""
    count = 1
    for d in shape:
        count = min(count * d, MAX_ELEMENTS + 1)
    return count


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A shape as the protocol allows it: a list of non-negative integers, of at most
    MAX_ELEMENTS elements."""
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise invalid(f"input {name!r}: shape must be a list of non-negative integers")
    if element_count(shape) > MAX_ELEMENTS:
        raise invalid(f"input {name!r}: shape holds more than {MAX_ELEMENTS} elements")
    return tuple(shape)


def serialize_bytes(elements: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def check_bytes_count(name: str, count: int) -> None:
    if count > MAX_BYTES_ELEMENTS:
        raise invalid(
            f"input {name!r}: {count} BYTES elements; a request carries at most "
            f"{MAX_BYTES_ELEMENTS} images"
        )


def deserialize_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """``count`` length-prefixed elements filling ``raw`` exactly."""
    check_bytes_count(name, count)
    elements, offset, view = [], 0, memoryview(raw)
    while offset < len(raw):
        if len(elements) == count:  # more data than the shape holds: stop reading it
            raise invalid(f"input {name!r}: the data holds more than the shape's {count} elements")
        if offset + _LENGTH.size > len(raw):
            raise invalid(f"input {name!r}: binary BYTES data ends inside an element's length")
        (size,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + size > len(raw):
            raise invalid(
                f"input {name!r}: a BYTES element declares {size} bytes, {len(raw) - offset} remain"
            )
        elements.append(bytes(view[offset : offset + size]))
        offset += size
    if len(elements) != count:
        raise invalid(f"input {name!r}: shape holds {count} elements, the data {len(elements)}")
    return elements


def fp32_from_bytes(name: str, raw: bytes, count: int) -> np.ndarray:
    if len(raw) != 4 * count:
        raise invalid(
            f"input {name!r}: {count} FP32 elements take {4 * count} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def fp32_from_json(name: str, data: Any, count: int) -> np.ndarray:
    """JSON numbers, flat or nested row-major, as a flat float32 array of ``count``."""
    try:
        values = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged, or nested too deeply
        raise invalid(f"input {name!r}: FP32 data must be numbers (flat or nested lists)") from exc
    # Not a cast to float: that would take strings ("1.5"), null (NaN) and true as numbers, and
    # raise OverflowError on an integer too large for a float. Those come out as other kinds.
    if values.dtype.kind not in "iuf":
        raise invalid(f"input {name!r}: FP32 data must be numbers (flat or nested lists)")
    values = values.reshape(-1)
    if values.size != count:
        raise invalid(f"input {name!r}: shape holds {count} elements, the data {values.size}")
    with np.errstate(over="ignore"):  # past float32's range is inf, which infer refuses
        return values.astype(np.float32)


def bytes_from_json(name: str, data: Any, count: int) -> list[bytes]:
    """JSON strings, each one base64-encoded file, flat or nested."""
    check_bytes_count(name, count)
    flat = list(_flatten(data))
    if len(flat) != count:
        raise invalid(f"input {name!r}: shape holds {count} elements, the data {len(flat)}")
    try:
        return [base64.b64decode(_string(name, s), validate=True) for s in flat]
    except (binascii.Error, ValueError) as exc:
        raise invalid(
            f"input {name!r}: BYTES data in JSON must be base64 strings (an image file each), "
            "or send it binary (binary_data_size)"
        ) from exc


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid(f"input {name!r}: BYTES data in JSON must be strings")
    return value


def _flatten(data: Any, depth: int = 0):
    if depth > 8:
        raise invalid("tensor data is nested too deeply")
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item, depth + 1)
    else:
        yield data

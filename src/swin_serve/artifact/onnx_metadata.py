"""An ONNX file's metadata (``metadata_props``), read from its bytes without loading the model.

The precision a model is served at depends on what its manifest says it was exported as, which
must be known before an engine is chosen; and OpenVINO reads ONNX without exposing the
metadata as plain strings. This walks the protobuf wire format of ``ModelProto`` directly:
field 14 is ``repeated StringStringEntryProto metadata_props`` (key = 1, value = 2), and every
other field is skipped by its length, the graph's hundreds of megabytes included. A file with
no graph (field 7), or a field numbered 0 (a file of zeros), is not a model.
"""

from __future__ import annotations

_GRAPH = 7
_MAX_FIELD = (1 << 29) - 1  # protobuf's largest field number
_METADATA_PROPS = 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class MetadataError(ValueError):
    """The bytes are not a well-formed ONNX protobuf (a ModelProto), a truncated file say."""


def read_metadata(data: bytes | memoryview) -> dict[str, str]:
    """``metadata_props`` of the serialised ModelProto ``data``, as a dict (the last key wins)."""
    view = memoryview(data)
    found: dict[str, str] = {}
    graph = False
    for number, value in _fields(view):
        graph = graph or number == _GRAPH
        if number == _METADATA_PROPS and isinstance(value, memoryview):
            entry = {n: v for n, v in _fields(value) if isinstance(v, memoryview)}
            try:
                key, text = (bytes(entry.get(n, b"")).decode("utf-8") for n in (1, 2))
            except UnicodeDecodeError as exc:
                raise MetadataError(f"metadata entry is not UTF-8: {exc}") from exc
            found[key] = text
    if not graph:
        raise MetadataError("not an ONNX model: it has no graph")
    return found


def _fields(view: memoryview):
    """(field number, value) for each field: an int, or a memoryview of length-delimited bytes."""
    pos, end = 0, len(view)
    while pos < end:
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:  # no protobuf field is numbered 0: zeros, or not a protobuf at all
            raise MetadataError("not an ONNX protobuf: a field numbered 0")
        if number > _MAX_FIELD:  # protobuf's own parser would read such a tag differently
            raise MetadataError(f"not an ONNX protobuf: field number {number} is out of range")
        if wire == _VARINT:
            value, pos = _varint(view, pos)
        elif wire == _LENGTH:
            size, pos = _varint(view, pos)
            if pos + size > end:
                raise MetadataError(
                    "not a complete ONNX protobuf: a field runs past the end (truncated?)"
                )
            value, pos = view[pos : pos + size], pos + size
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
            value = 0
        else:
            raise MetadataError(f"not an ONNX protobuf: unknown wire type {wire}")
        if pos > end:
            raise MetadataError("not a complete ONNX protobuf: it ends inside a field (truncated?)")
        yield number, value


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise MetadataError("not an ONNX protobuf: a malformed varint (truncated?)")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7

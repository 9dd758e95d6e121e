"""One v2 inference, whichever protocol brought it: check the tensors against the model, turn
them into model inputs (decoding images as ``/classify`` does), run them through the shared
batcher, and build the requested outputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from swin_serve.artifact.contract import Manifest
from swin_serve.server.inference import decode_all, off_loop, submit
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.runtime.batcher import ImageResult
from swin_serve.server.state import RequestTimings, ServiceState
from swin_serve.server.v2.model import CLASSIFIABLE_OUTPUT, IMAGE_INPUT, PIXELS_INPUT
from swin_serve.server.v2.tensors import (
    BYTES,
    FP32,
    InferenceRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    invalid,
)


def image_count(
    request: InferenceRequest, manifest: Manifest, max_images: int, *, name: str | None = None
) -> int:
    """How many images the request carries, once its one input checks out (400 otherwise)."""
    if len(request.inputs) != 1:
        raise invalid(
            f"expected exactly one input ({IMAGE_INPUT!r} or {PIXELS_INPUT!r}), "
            f"got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.name == IMAGE_INPUT:
        n = _image_batch(tensor)
    elif tensor.name == PIXELS_INPUT:
        n = _pixels_batch(tensor, manifest.image_size)
    else:
        raise invalid(
            f"unknown input {tensor.name!r}; model {name or manifest.name!r} takes {IMAGE_INPUT!r} "
            f"(BYTES, encoded image files) or {PIXELS_INPUT!r} (FP32, preprocessed)"
        )
    if not 1 <= n <= max_images:
        raise invalid(f"input {tensor.name!r}: batch of {n}; send 1 to {max_images} images")
    return n


def _image_batch(tensor: InputTensor) -> int:
    _expect_datatype(tensor, BYTES)
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise invalid(
            f"input {IMAGE_INPUT!r}: shape must be [N] or [N, 1] (one image file each), "
            f"got {list(tensor.shape)}"
        )
    return tensor.shape[0]


def _pixels_batch(tensor: InputTensor, size: int) -> int:
    _expect_datatype(tensor, FP32)
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != (3, size, size):
        raise invalid(
            f"input {PIXELS_INPUT!r}: shape must be [N, 3, {size}, {size}], "
            f"got {list(tensor.shape)}"
        )
    return tensor.shape[0]


def _expect_datatype(tensor: InputTensor, datatype: str) -> None:
    if tensor.datatype != datatype:
        raise invalid(f"input {tensor.name!r} is {datatype}, got {tensor.datatype!r}")


def check_outputs(request: InferenceRequest, manifest: Manifest) -> list[RequestedOutput]:
    """The outputs to return (every one when none is named), each checked against the model."""
    if not request.outputs:
        return [RequestedOutput(name, request.binary_outputs) for name in manifest.outputs]
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in manifest.outputs]
    if unknown:
        raise invalid(f"unknown output {unknown[0]!r}; outputs: {', '.join(manifest.outputs)}")
    if len(set(names)) != len(names):
        raise invalid("an output is requested twice")
    for output in request.outputs:
        _check_classification(output, manifest.num_classes)
    return request.outputs


def _check_classification(output: RequestedOutput, num_classes: int) -> None:
    k = output.classification
    if k and output.name != CLASSIFIABLE_OUTPUT:
        raise invalid(f"classification applies to {CLASSIFIABLE_OUTPUT!r}, not {output.name!r}")
    if not 0 <= k <= num_classes:
        raise invalid(f"classification must be between 1 and {num_classes}, got {k}")


async def run(
    state: ServiceState,
    model: LoadedModel,
    request: InferenceRequest,
    timings: RequestTimings,
    deadline: float,
) -> list[OutputTensor]:
    """Check, decode, batch-run and answer ``request`` on ``model`` (the one it names)."""
    manifest = model.engine.manifest
    n = image_count(request, manifest, state.settings.max_images_per_request, name=model.name)
    outputs = check_outputs(request, manifest)
    tensor = request.inputs[0]
    if tensor.name == IMAGE_INPUT:
        inputs = await decode_all(state, model, timings, tensor.data, deadline)  # type: ignore[arg-type]
    else:
        inputs = await off_loop(state, _pixel_rows, tensor, n, manifest.image_size)
    results = await submit(model.batcher, inputs, deadline, timings)
    return [_output(o, results, manifest.labels) for o in outputs]


def _pixel_rows(tensor: InputTensor, n: int, size: int) -> list[np.ndarray]:
    pixels = np.asarray(tensor.data, dtype=np.float32).reshape(n, 3, size, size)
    if not np.isfinite(pixels).all():
        raise invalid(f"input {PIXELS_INPUT!r} holds NaN or infinite values")
    return list(pixels)


def _output(
    wanted: RequestedOutput, results: Sequence[ImageResult], labels: Sequence[str]
) -> OutputTensor:
    stacked = np.stack([r.outputs[wanted.name] for r in results])  # N, ...
    if wanted.classification:
        return _classification(wanted, stacked, labels)
    return OutputTensor(wanted.name, FP32, stacked.shape, stacked, wanted.binary)


def _classification(
    wanted: RequestedOutput, logits: np.ndarray, labels: Sequence[str]
) -> OutputTensor:
    """Triton's classification extension: per image, the top k as "value:index:label", the value
    being the output's own (here a logit), highest first; ties keep the lower index."""
    k = wanted.classification
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    elements = [
        f"{row[i]:f}:{i}:{labels[i]}".encode()
        for row, top in zip(logits, order, strict=True)
        for i in top
    ]
    return OutputTensor(wanted.name, BYTES, (logits.shape[0], k), elements, wanted.binary)

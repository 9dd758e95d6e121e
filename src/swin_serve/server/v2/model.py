"""What the Open Inference Protocol says about this server and its models: names, versions and
metadata."""

from __future__ import annotations

from typing import Any

from swin_serve import __version__
from swin_serve.artifact.contract import Manifest
from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.runtime.engine import Engine
from swin_serve.server.v2.tensors import BYTES, FP32

SERVER_NAME = "swin-serve"
# The extensions of Triton's protocol this server implements (named as Triton names them).
EXTENSIONS = ("binary_tensor_data", "classification")
VERSION = "1"  # one version per model: the file being served
PLATFORM = "onnxruntime_onnx"
# Triton's platform names per runtime: what a client sees the model running on.
_PLATFORMS = {"openvino": "openvino"}

IMAGE_INPUT = "image"  # BYTES: each element one encoded image file
PIXELS_INPUT = "pixel_values"  # FP32 [N, 3, S, S], preprocessed as the manifest says
CLASSIFIABLE_OUTPUT = "logits"


def server_version() -> str:
    return __version__


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}


def check_version(name: str, version: str = "") -> None:
    """404 unless ``version`` (when given) is the one version a model has."""
    if version not in ("", VERSION):
        raise ApiError(
            ErrorCode.NOT_FOUND,
            f"model {name!r} has no version {version[:200]!r}; its versions: [{VERSION!r}]",
        )


def input_metadata(manifest: Manifest) -> list[dict[str, Any]]:
    size = manifest.image_size
    return [
        {"name": IMAGE_INPUT, "datatype": BYTES, "shape": [-1]},
        {"name": PIXELS_INPUT, "datatype": FP32, "shape": [-1, 3, size, size]},
    ]


def output_metadata(manifest: Manifest) -> list[dict[str, Any]]:
    """Every output with its real shape, the batch axis as -1."""
    return [
        {"name": name, "datatype": FP32, "shape": [-1, *dims[1:]]}
        for name, dims in manifest.outputs.items()
    ]


def model_metadata(name: str, engine: Engine) -> dict[str, Any]:
    manifest = engine.manifest
    return {
        "name": name,
        "versions": [VERSION],
        "platform": _PLATFORMS.get(engine.engine_name, PLATFORM),
        "inputs": input_metadata(manifest),
        "outputs": output_metadata(manifest),
        "parameters": metadata_parameters(engine),
    }


def metadata_parameters(engine: Engine) -> dict[str, str]:
    """What a client that sends FP32 pixel_values must do to its images, and where that came
    from; the precision the model runs at, and why: strings, so that they fit the gRPC
    InferParameter too."""
    manifest = engine.manifest
    pre = manifest.preprocess
    layout = engine.layout
    return {
        "preprocessing": pre.describe(),
        "preprocessing_source": manifest.preprocessing_source or "not recorded (crop_pct 0.875)",
        "preprocess": pre.model_dump_json(),
        "precision": engine.precision,
        "precision_reason": engine.precision_reason,
        "engine": engine.engine_name,
        "cpu_layout": layout.name if layout else "not set",
    }

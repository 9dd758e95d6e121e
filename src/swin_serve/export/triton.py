"""A Triton Inference Server model repository for the same artefact."""

from __future__ import annotations

from pathlib import Path

import onnx

from swin_serve.artifact.contract import INPUT_NAME, OUTPUT_NAMES, Manifest

from .graph import save_atomically

TRITON_MAX_BATCH = 64
PREFERRED_BATCHES = (8, 16, 32)
MAX_QUEUE_DELAY_US = 2000


def config_pbtxt(name: str, manifest: Manifest, max_batch_size: int = TRITON_MAX_BATCH) -> str:
    """`config.pbtxt` text: dims exclude the batch axis, which `max_batch_size` makes implicit."""

    def tensor(tensor_name: str, dims: list) -> str:
        shape = ", ".join(str(d) for d in dims[1:])  # drop "batch"
        return f'  {{\n    name: "{tensor_name}"\n    data_type: TYPE_FP32\n    dims: [ {shape} ]\n  }}'

    inputs = tensor(INPUT_NAME, list(manifest.input.shape))
    outputs = ",\n".join(tensor(out, list(manifest.outputs[out])) for out in OUTPUT_NAMES)
    preferred = ", ".join(str(b) for b in PREFERRED_BATCHES if b <= max_batch_size)
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n"
        "}\n"
    )


def write_triton_repo(repo: Path, name: str, proto: onnx.ModelProto, manifest: Manifest) -> Path:
    """Write `repo/<name>/1/model.onnx` and `repo/<name>/config.pbtxt`; returns the model dir."""
    model_dir = repo / name
    save_atomically(proto, model_dir / "1" / "model.onnx")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(name, manifest), encoding="utf-8")
    return model_dir

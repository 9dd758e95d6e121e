"""The golden answers an artefact carries for the server's start-up self-check.

The inputs and the codec live in artifact/golden.py, which the server reads with; this side
computes the answers with the PyTorch model and checks them against the file being written, so
an export that its own server would refuse never leaves the exporter.
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort
import torch
from PIL import Image

from swin_serve.artifact.contract import GOLDEN_KEY, PreprocessSpec
from swin_serve.artifact.cpu import cpu_features
from swin_serve.artifact.golden import (
    Golden,
    encode_golden,
    golden_digest,
    golden_inputs,
    run_self_check,
)
from swin_serve.artifact.preprocess_check import golden_image, transform
from swin_serve.model import SwinTransformer

from .checks import CheckFailed, run_session
from .graph import reference_outputs


def record(model: SwinTransformer, spec: PreprocessSpec) -> str:
    """The golden inputs and the PyTorch fp32 outputs for them, and the golden image with the
    tensor ``spec`` makes of it, encoded for the metadata."""
    x = golden_inputs(model.config.img_size)
    outputs = reference_outputs(model, torch.from_numpy(x))
    image = golden_image(spec)
    answers = {k: v.numpy() for k, v in outputs.items()}
    return encode_golden(Golden(x, answers, image, transform(image, spec), Image.__version__))


def summary(golden_text: str) -> dict[str, Any]:
    """What the manifest says of the golden answers (the answers themselves are not JSON)."""
    return {
        "metadata_key": GOLDEN_KEY,
        "reference": f"PyTorch {torch.__version__} fp32, eager, on the exporting machine",
        "sha256": golden_digest(golden_text),
        "encoded_bytes": len(golden_text),
    }


def check(
    session: ort.InferenceSession, golden_text: str, precision: str, spec: PreprocessSpec
) -> dict[str, Any]:
    """The self-check the server will run, run here on the CPU; raises CheckFailed on failure."""
    report = run_self_check(
        lambda x: run_session(session, x),
        golden_text,
        precision=precision,
        provider="CPUExecutionProvider",
        cpu=cpu_features(),
        spec=spec,
    )
    if report.status != "passed":
        raise CheckFailed(report.failure_message(f"the {precision} model"))
    return report.as_dict()

"""Tracing the model to ONNX with a symbolic batch axis.

The exporter is `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), opset 18,
rather than the TorchScript tracer: it keeps every channel and spatial dimension static (the
tracer turned them into symbols), leaves `batch` as the only symbol, folds the relative-position
bias gather into constants, and so gives a far smaller graph. docs/benchmarks.md has
the measurements.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from swin_serve.artifact.contract import INPUT_NAME, OUTPUT_NAMES
from swin_serve.model import SwinTransformer

from .files import write_atomically

DEFAULT_OPSET = 18
TRACE_BATCH = 2  # the parity check also runs at 1, 3, 8 and 17, which differ from it


class ExportWrapper(nn.Module):
    """Returns every served output from one forward, in OUTPUT_NAMES order."""

    def __init__(self, model: SwinTransformer):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features = self.model.forward_features(x)
        logits = self.model.head(features["embedding"])
        return (logits, *(features[name].contiguous() for name in OUTPUT_NAMES[1:]))


def reference_outputs(model: SwinTransformer, x: Tensor) -> dict[str, Tensor]:
    """PyTorch outputs under the ONNX names, for parity checks."""
    with torch.inference_mode():
        return dict(zip(OUTPUT_NAMES, ExportWrapper(model).eval()(x), strict=True))


def trace_to_onnx(
    model: SwinTransformer, *, opset: int = DEFAULT_OPSET, trace_batch: int = TRACE_BATCH
) -> onnx.ModelProto:
    """The model as an in-memory ONNX graph: input (batch, 3, S, S), outputs OUTPUT_NAMES."""
    S = model.config.img_size
    example = torch.randn(trace_batch, model.config.in_chans, S, S)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter narrates every step and warns about absent torchvision ops; our own progress
    # output says what is happening, and real failures still raise.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                ExportWrapper(model).eval(),
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"x": {0: batch}},
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    return program.model_proto


def save_atomically(proto: onnx.ModelProto, path: Path) -> None:
    """Write `path` through a temporary file, so a failure never leaves half a model behind."""
    write_atomically(path, lambda tmp: onnx.save(proto, tmp))

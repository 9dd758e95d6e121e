"""Offline graph optimisation, so the server does not redo it at every start."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from swin_serve.artifact.sessions import cpu_session, session_options

# EXTENDED fuses LayerNorm, GELU, MatMul+Add and attention pieces into ONNX Runtime ops that run
# on both the CPU and CUDA providers. ALL would add NCHWc layouts tied to this CPU's
# instruction set, which ONNX Runtime says must not be saved for another machine.
OFFLINE_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED

# EXTENDED's own GELU fusion does not match the dynamo exporter's erf GELU, so the GELU fusions
# of onnxruntime.transformers (Python only, opt_level=0: no session, nothing provider specific)
# run first, on the portable graph where its shape inference works. They give BiasGelu (exact
# erf; CPU and CUDA kernels). Attention fusion does not match Swin's windows.
# SkipLayerNormalization is left out because it made the CPU model slower, not faster.
GELU_FUSIONS = FusionOptions("swin")
GELU_FUSIONS.enable_skip_layer_norm = GELU_FUSIONS.enable_bias_skip_layer_norm = False


def optimize_offline(src: Path, dst: Path) -> None:
    """Write the GELU-fused, then ONNX Runtime-optimised, form of `src` to `dst` (metadata is kept)."""
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".fused-") as tmp:
        fused = Path(tmp) / "fused.onnx"
        fusions = optimize_model(str(src), "swin", optimization_options=GELU_FUSIONS, opt_level=0)
        fusions.save_model_to_file(str(fused))
        options = session_options(level=OFFLINE_LEVEL)
        options.optimized_model_filepath = str(dst)
        cpu_session(fused, options)


def startup_seconds(path: Path, repeats: int = 3) -> float:
    """Median wall time to create a CPU session for `path`, as the server creates it."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        cpu_session(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)

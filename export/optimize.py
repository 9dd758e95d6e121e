"""Offline graph optimisation, so the server does not redo it at every start."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import onnxruntime as ort

# EXTENDED fuses LayerNorm, GELU, MatMul+Add and attention pieces into ONNX Runtime ops that run
# on both the CPU and CUDA providers. ALL would add NCHWc layouts tied to this CPU's
# instruction set, which ONNX Runtime says must not be saved for another machine.
OFFLINE_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def optimize_offline(src: Path, dst: Path) -> None:
    """Write ONNX Runtime's optimised form of `src` to `dst` (metadata is kept)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = OFFLINE_LEVEL
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def startup_seconds(path: Path, level: ort.GraphOptimizationLevel, repeats: int = 3) -> float:
    """Median wall time to create a CPU session for `path` at graph optimisation `level`."""
    times = []
    for _ in range(repeats):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        start = time.perf_counter()
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        times.append(time.perf_counter() - start)
    return statistics.median(times)

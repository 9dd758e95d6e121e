"""ONNX Runtime session options: one recipe for the server, the exporter's checks and the benchmarks.

Everything that times or checks a model must run it the way the server does, or its figures
describe some other program.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# HEURISTIC: no exhaustive cuDNN benchmark on every new batch shape (which would stall the first
# requests of each size for seconds); the arena grows only as needed.
CUDA_PROVIDER_OPTIONS = {
    "cudnn_conv_algo_search": "HEURISTIC",
    "arena_extend_strategy": "kSameAsRequested",
    "do_copy_in_default_stream": True,
}


def session_options(
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    level: Any = None,
    profile_prefix: str | None = None,
) -> Any:
    """Sequential execution, every graph optimisation (unless ``level``), errors-only logging.

    A thread count of 0 leaves ONNX Runtime's own default. ORT's warnings (unused initialisers,
    for one) are noise to an operator, hence errors only.
    """
    import onnxruntime as ort  # imported here so that importing the service stays light

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None else level
    )
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def cpu_session(path: Path | str, options: Any = None) -> Any:
    """An InferenceSession of ``path`` on the CPU provider, with ``session_options()`` by default."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), options or session_options(), providers=["CPUExecutionProvider"]
    )

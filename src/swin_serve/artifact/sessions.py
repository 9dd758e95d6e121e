"""ONNX Runtime session options: one recipe for the server, the exporter's checks and the benchmarks.

Everything that checks a model must run it the way the server does, or its answers describe
some other program. The engine benchmarks keep ORT's own spinning and memory pattern, which the
server turns off on the CPU: their figures are the engine at its best, which the server is
measured against.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

# HEURISTIC: no exhaustive cuDNN benchmark on every new batch shape (which would stall the first
# requests of each size for seconds); the arena grows only as needed.
CUDA_PROVIDER_OPTIONS = {
    "cudnn_conv_algo_search": "HEURISTIC",
    "arena_extend_strategy": "kSameAsRequested",
    "do_copy_in_default_stream": True,
}


@functools.cache
def register_shared_cpu_arena() -> None:
    """One CPU memory arena for the whole process, which sessions opened with
    ``shared_arena=True`` use instead of one arena each. An arena keeps the most a session ever
    needed at once (activations of its largest batch); with several models in a repository,
    separate arenas would each keep that much for good, where a shared one keeps it once."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults


def session_options(
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    spinning: bool = True,
    memory_pattern: bool = True,
    shared_arena: bool = False,
    level: Any = None,
    profile_prefix: str | None = None,
) -> Any:
    """Sequential execution, every graph optimisation (unless ``level``), errors-only logging.

    A thread count of 0 leaves ONNX Runtime's own default. ``spinning=False`` makes idle intra-op
    threads sleep rather than spin-wait for work: a spinning thread holds a core that another
    model run, or image decoding, needs (see Settings.intra_op_spinning). ORT's warnings
    (unused initialisers, for one) are noise to an operator, hence errors only.

    ``memory_pattern`` (ORT's default) plans one block per input shape for each run. The
    server turns it off on the CPU, where every run that overlaps another would hold a block of
    its own (the trade, measured, is in docs/benchmarks.md).

    ``shared_arena`` takes CPU memory from the process's one arena (``register_shared_cpu_arena``,
    which it registers first) rather than from an arena of the session's own.
    """
    import onnxruntime as ort  # imported here so that importing the service stays light

    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None else level
    )
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = memory_pattern
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if shared_arena:
        register_shared_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
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

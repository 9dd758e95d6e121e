"""Engine benchmark: images/s of each runtime at each batch size, interleaved.

Every repetition visits every (batch size, runtime) pair once, round-robin, so a burst of load
from a neighbour on a shared machine hits all runtimes alike; the figure kept is the median over
repetitions, after warm-up. One measurement is ``iters`` back-to-back calls (at least
``min_images`` images), timed with ``time.perf_counter``.

Runtimes (same weights everywhere):

- ``torch_eager``: our PyTorch model, fp32, ``torch.inference_mode``, ``torch.set_num_threads(T)``;
- ``ort_fp32``: our exported, offline-optimised model, ONNX Runtime CPU, T intra-op threads,
  the service's session recipe (ORT_ENABLE_ALL, sequential) with ORT's own spinning and memory
  pattern, the engine at its best;
- ``ort_int8``: the ``--int8`` variant, same session options;
- ``cuda_fp32`` / ``cuda_fp16``: ONNX Runtime CUDA with IO binding (input and outputs on the
  device, so host copies are not timed), only where a CUDAExecutionProvider exists.

The ORT runners fetch every model output, as the service does; PyTorch returns only the logits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median, progress
from swin_serve.artifact.contract import INPUT_NAME, OUTPUT_NAMES
from swin_serve.artifact.sessions import CUDA_PROVIDER_OPTIONS, cpu_session, session_options

CPU_BATCHES = (1, 2, 4, 8, 16, 32)
GPU_BATCHES = (1, 8, 32, 64, 128, 256)
OUTPUTS = list(OUTPUT_NAMES)


@dataclass
class Runner:
    name: str
    label: str
    run: Callable[[np.ndarray], Any]  # one forward of a (N, 3, S, S) float32 batch
    batches: tuple[int, ...]
    prepare: Callable[[np.ndarray], Any] = field(default=lambda x: x)  # host -> runner input
    info: dict[str, Any] = field(default_factory=dict)
    copies: int = 1  # batches one call runs, side by side


def ort_session(path: Path, threads: int, *, profile_prefix: str | None = None):
    """A CPU session with the service's options (src/swin_serve/artifact/sessions.py), ``threads`` intra-op."""
    options = session_options(
        intra_op_threads=threads, inter_op_threads=1, profile_prefix=profile_prefix
    )
    return cpu_session(path, options)


def run_all(session, x: np.ndarray) -> list[np.ndarray]:
    """Every output of one forward of ``x``, as the service fetches them."""
    return session.run(OUTPUTS, {INPUT_NAME: x})


def ort_cpu_runner(name: str, label: str, path: Path, threads: int) -> Runner:
    session = ort_session(path, threads)
    return Runner(
        name,
        label,
        lambda x: run_all(session, x),
        CPU_BATCHES,
        info={"intra_op_threads": threads, "model": path.name},
    )


def ort_side_by_side_runner(name: str, label: str, path: Path, copies: int) -> Runner:
    """``copies`` single-threaded sessions, each running the whole batch at the same time on
    a thread of its own: the engine when every core runs a batch of its own."""
    sessions = [ort_session(path, 1) for _ in range(copies)]
    pool = ThreadPoolExecutor(copies, thread_name_prefix="bench-side-by-side")

    def run(x: np.ndarray) -> None:
        list(pool.map(lambda session: run_all(session, x), sessions))

    return Runner(
        name,
        label,
        run,
        CPU_BATCHES,
        info={"intra_op_threads": 1, "sessions": copies, "model": path.name},
        copies=copies,
    )


def torch_runner(model, threads: int, name: str = "torch_eager", label: str = "") -> Runner:
    """Eager PyTorch; the thread count is set before every call (it is process-wide)."""
    import torch

    def run(x: np.ndarray):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return Runner(
        name,
        label or "PyTorch eager fp32",
        run,
        CPU_BATCHES,
        info={"torch_threads": threads, "torch": torch.__version__},
    )


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA runners are skipped, or None when they can run."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return (
            f"no CUDAExecutionProvider in this onnxruntime {ort.__version__} "
            f"(providers: {', '.join(available)}); install the `gpu` extra on a GPU host"
        )
    return None


def cuda_runner(name: str, label: str, path: Path) -> Runner:
    """IO binding: input copied to the device in ``prepare`` (untimed), outputs stay there."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(path),
        session_options(intra_op_threads=1, inter_op_threads=1),
        providers=[
            ("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS),
            "CPUExecutionProvider",
        ],
    )

    def prepare(x: np.ndarray):
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
        for out in OUTPUTS:
            binding.bind_output(out, "cuda")
        return binding

    def run(binding) -> None:
        session.run_with_iobinding(binding)  # synchronises the stream before returning

    return Runner(name, label, run, GPU_BATCHES, prepare=prepare, info={"model": path.name})


def probe_throughput(session, batch: int, *, min_images: int = 8, image_size: int = 224):
    """Raw engine figure taken between load runs: (img/s, seconds per call) at ``batch``."""
    x = np.random.default_rng(1).standard_normal((batch, 3, image_size, image_size))
    x = x.astype(np.float32)
    run_all(session, x)  # this shape may be new to the session
    iters = max(2, iters_for(batch, min_images))
    start = time.perf_counter()
    for _ in range(iters):
        run_all(session, x)
    per_call = (time.perf_counter() - start) / iters
    return batch / per_call, per_call


def iters_for(batch: int, min_images: int) -> int:
    return max(1, math.ceil(min_images / batch))


def measure(runner: Runner, x_prepared, iters: int) -> float:
    """Seconds per call, averaged over ``iters`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(iters):
        runner.run(x_prepared)
    return (time.perf_counter() - start) / iters


def run_engine_benchmark(
    runners: list[Runner], *, reps: int, warmup: int, min_images: int, image_size: int = 224
) -> dict[str, Any]:
    """Interleaved benchmark; returns {runner: {batch: {img_per_s, latency_ms, samples_ms}}}."""
    rng = np.random.default_rng(0)
    all_batches = sorted({b for r in runners for b in r.batches})
    inputs = {
        b: rng.standard_normal((b, 3, image_size, image_size)).astype(np.float32)
        for b in all_batches
    }
    prepared = {(r.name, b): r.prepare(inputs[b]) for r in runners for b in r.batches}
    samples: dict[tuple[str, int], list[float]] = {k: [] for k in prepared}
    for w in range(warmup):
        progress(f"engine warm-up {w + 1}/{warmup}")
        for b in all_batches:
            for r in runners:
                if b in r.batches:
                    r.run(prepared[(r.name, b)])
    for rep in range(reps):
        t0 = time.perf_counter()
        for b in all_batches:
            for r in runners:  # round-robin: neighbours' noise hits every runtime alike
                if b in r.batches:
                    samples[(r.name, b)].append(
                        measure(r, prepared[(r.name, b)], iters_for(b, min_images))
                    )
        line = ", ".join(
            f"{r.name}@8={8 * r.copies / samples[(r.name, 8)][-1]:.1f}/s"
            for r in runners
            if (r.name, 8) in samples
        )
        progress(f"engine rep {rep + 1}/{reps} ({time.perf_counter() - t0:.0f} s): {line}")
    results: dict[str, Any] = {}
    for r in runners:
        per_batch = {}
        for b in r.batches:
            s = samples[(r.name, b)]
            per_batch[str(b)] = {
                "img_per_s": round(b * r.copies / median(s), 2),
                "latency_ms": round(median(s) * 1e3, 2),
                "samples_ms": [round(v * 1e3, 2) for v in s],
            }
        results[r.name] = {"label": r.label, "info": r.info, "batches": per_batch}
    return results

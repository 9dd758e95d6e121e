"""Which ONNX Runtime execution provider serves the model, and why, said out loud.

`SWIN_PROVIDERS=auto` takes CUDA when this onnxruntime offers it. A GPU host running the CPU
build of onnxruntime would otherwise serve on the CPU without a word, so that case, and a CUDA
provider that ONNX Runtime could not start, are reported in the log and in /v1/models.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
from dataclasses import dataclass
from types import ModuleType

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_HINT = "install the `gpu` extra (onnxruntime-gpu): `make serve GPU=1`, or the GPU image"


class ProviderError(RuntimeError):
    """SWIN_PROVIDERS asks for a provider this process cannot use."""


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    cuda: bool
    reason: str  # why this provider, for the start-up log
    warning: str | None = None  # a surprise an operator must hear of, also shown in /v1/models


def visible_gpus() -> list[str]:
    """NVIDIA device nodes this process can see (empty in a container without a GPU)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return []
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def choose(requested: str, available: list[str], gpus: list[str]) -> Choice:
    """The provider for SWIN_PROVIDERS=`requested`, given what onnxruntime offers and the GPUs
    visible; raises ProviderError when cuda is asked for and missing."""
    has_cuda = CUDA in available
    if requested == "cuda":
        if not has_cuda:
            raise ProviderError(
                f"SWIN_PROVIDERS=cuda but this onnxruntime offers only {available}: {GPU_HINT}"
            )
        return Choice(True, "SWIN_PROVIDERS=cuda")
    if requested == "cpu":
        return Choice(False, "SWIN_PROVIDERS=cpu")
    if has_cuda:
        return Choice(True, "SWIN_PROVIDERS=auto and this onnxruntime offers CUDA")
    if gpus:
        return Choice(
            False,
            "SWIN_PROVIDERS=auto and this onnxruntime is the CPU build",
            f"a GPU is visible ({', '.join(gpus)}) but this onnxruntime has no CUDA provider, "
            f"so the model runs on the CPU: {GPU_HINT}",
        )
    return Choice(False, "SWIN_PROVIDERS=auto and no CUDA provider (a CPU-only host)")


def load_cuda_libraries(choice: Choice, ort: ModuleType) -> None:
    """Before a session on `choice`: for CUDA, load CUDA's and cuDNN's libraries from the nvidia-*
    wheels of the `gpu` extra. The CUDA provider links cuBLAS and the CUDA runtime by name, and
    the loader never looks in site-packages: without this they would have to be on
    LD_LIBRARY_PATH or installed system-wide. preload_dlls still falls back to that search for
    what no wheel holds; onnxruntime before 1.21 lacks it and relies on that search alone. A CPU
    session needs none of them, and where they are missing preload_dlls prints a failure each."""
    preload = getattr(ort, "preload_dlls", None)
    if choice.cuda and preload is not None and ort not in _PRELOADED:
        _PRELOADED.append(ort)  # a library stays loaded: once per process is enough
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # it prints, and stdout is not the log
            preload()
        if printed.getvalue().strip():
            log.warning("loading CUDA's libraries: %s", printed.getvalue().strip())


_PRELOADED: list[ModuleType] = []


def check_started(choice: Choice, active: str, requested: str) -> Choice:
    """The choice as the session really started: ONNX Runtime falls back to the CPU when the
    CUDA provider cannot load (missing CUDA or cuDNN libraries, no driver)."""
    if not choice.cuda or active == CUDA:
        return choice
    message = (
        f"the CUDA provider did not start (the session runs on {active}); check the NVIDIA "
        "driver and the CUDA and cuDNN libraries onnxruntime-gpu needs"
    )
    if requested == "cuda":
        raise ProviderError(f"SWIN_PROVIDERS=cuda: {message}")
    return Choice(False, f"{choice.reason}, but its CUDA provider did not start", message)

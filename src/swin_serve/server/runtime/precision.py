"""Which precision, and which engine, serve a model on this machine, and why, said out loud.

``SWIN_PRECISION`` applies to float32 files; a file exported at another precision (``--int8``,
``--fp16``) is served as it is, and says so. For a float32 file:

- ``fp32``: ONNX Runtime (or OpenVINO, with ``SWIN_ENGINE=openvino``).
- ``bf16``: OpenVINO's CPU plugin with its bfloat16 inference hint, on the same file. Refused on
  a CPU without native bfloat16 (AVX-512 BF16 or AMX): OpenVINO would quietly run float32.
- ``int8``: ONNX Runtime on the dynamically quantised file the exporter wrote beside it
  (``NAME.int8.onnx``, from ``--int8``).
- ``auto``: bf16 where the CPU runs it natively and OpenVINO is installed; else int8 where the CPU
  has VNNI (or AMX) and the int8 file is there; else fp32. bf16 comes first because it needs no
  calibration and no second file, and keeps fp32's range (its fidelity on a trained model is in
  docs/benchmarks.md). On CUDA, auto is fp32.

Whatever is chosen passes the golden self-check at that precision's bound before it serves
(artifact/golden.py). A named precision that cannot be had, or fails its check, stops the
model; under auto a failure falls back to ONNX Runtime fp32 with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
OPENVINO_HINT = (
    "install the `openvino` extra (pip install 'swin-serve[openvino]'; make serve has it)"
)


class PrecisionError(RuntimeError):
    """SWIN_PRECISION (or SWIN_ENGINE) asks for something this model or machine cannot do."""


@dataclass(frozen=True)
class Plan:
    precision: str  # fp32 | bf16 | int8 | fp16
    engine: str  # onnxruntime | openvino
    path: Path  # the file that runs: the model's own, or its int8 sibling
    reason: str
    fallback: bool  # under auto: a failed self-check falls back to ONNX Runtime fp32


@dataclass(frozen=True)
class Machine:
    """What the choice depends on, read once by the caller."""

    cuda: bool  # the model runs on CUDA
    native_bf16: bool  # OpenVINO's CPU plugin reports BF16 among its capabilities
    int8_fast: bool  # VNNI or AMX: int8 kernels that beat float32
    openvino: bool  # the openvino package imports


def int8_sibling(path: Path) -> Path:
    """Where ``swin-export --int8`` put the int8 variant of ``path``."""
    return path.with_name(f"{path.stem}.int8{path.suffix}")


def plan(requested: str, engine: str, path: Path, file_precision: str, machine: Machine) -> Plan:
    """The plan for SWIN_PRECISION=``requested`` and SWIN_ENGINE=``engine`` on the file at
    ``path`` (exported at ``file_precision``); raises PrecisionError with what to do instead."""
    if file_precision != "fp32":
        # A repository may hold a float32 model and its int8 file side by side: each is served.
        _need_onnxruntime(engine, file_precision)
        reason = f"the file is {file_precision}"
        if requested not in ("auto", file_precision):
            reason += f" (SWIN_PRECISION={requested} applies to float32 files)"
        return Plan(file_precision, ONNXRUNTIME, path, reason, False)
    if requested == "auto":
        return _auto(engine, path, machine)
    if requested == "fp32":
        chosen = OPENVINO if engine == OPENVINO else ONNXRUNTIME
        if chosen == OPENVINO:
            _need_openvino(machine, "SWIN_ENGINE=openvino")
        return Plan("fp32", chosen, path, "SWIN_PRECISION=fp32", False)
    if requested == "bf16":
        return _bf16(engine, path, machine, "SWIN_PRECISION=bf16", fallback=False)
    return _int8(engine, path, machine, "SWIN_PRECISION=int8", fallback=False)


def _auto(engine: str, path: Path, machine: Machine) -> Plan:
    if machine.cuda:
        return Plan("fp32", ONNXRUNTIME, path, "SWIN_PRECISION=auto on CUDA: fp32", False)
    sibling = int8_sibling(path)
    if engine != ONNXRUNTIME and machine.openvino and machine.native_bf16:
        return _bf16(
            engine, path, machine, "SWIN_PRECISION=auto: this CPU runs bf16 natively", True
        )
    if engine != OPENVINO and machine.int8_fast and sibling.is_file():
        return _int8(engine, path, machine, f"SWIN_PRECISION=auto: VNNI and {sibling.name}", True)
    chosen = OPENVINO if engine == OPENVINO else ONNXRUNTIME
    if chosen == OPENVINO:
        _need_openvino(machine, "SWIN_ENGINE=openvino")
    why = _why_fp32(engine, machine, sibling)
    return Plan("fp32", chosen, path, f"SWIN_PRECISION=auto: {why}", False)


def _why_fp32(engine: str, machine: Machine, sibling: Path) -> str:
    if engine == ONNXRUNTIME:
        bf16 = "SWIN_ENGINE=onnxruntime rules out bf16 (OpenVINO)"
    elif not machine.native_bf16:
        bf16 = "no native bf16 on this CPU"
    else:
        bf16 = f"OpenVINO is not installed for bf16 ({OPENVINO_HINT})"
    if engine == OPENVINO:
        int8 = "SWIN_ENGINE=openvino rules out int8 (ONNX Runtime)"
    elif not machine.int8_fast:
        int8 = "no VNNI or AMX for int8"
    else:
        int8 = f"no {sibling.name} for int8 (swin-export --int8)"
    return f"{bf16}; {int8}"


def _bf16(engine: str, path: Path, machine: Machine, reason: str, fallback: bool) -> Plan:
    if machine.cuda:
        raise PrecisionError("SWIN_PRECISION=bf16 is for the CPU; on CUDA serve fp32 or fp16")
    if engine == ONNXRUNTIME:
        raise PrecisionError("bf16 runs on OpenVINO: leave SWIN_ENGINE at auto or openvino")
    _need_openvino(machine, "SWIN_PRECISION=bf16")
    if not machine.native_bf16:
        raise PrecisionError(
            "SWIN_PRECISION=bf16, but this CPU has no native bfloat16 (AVX-512 BF16 or AMX), "
            "so OpenVINO would run float32 under that name: use fp32, int8 or auto"
        )
    return Plan("bf16", OPENVINO, path, reason, fallback)


def _int8(engine: str, path: Path, machine: Machine, reason: str, fallback: bool) -> Plan:
    if machine.cuda:
        raise PrecisionError("SWIN_PRECISION=int8 is for the CPU; on CUDA serve fp32 or fp16")
    _need_onnxruntime(engine, "int8")
    sibling = int8_sibling(path)
    if not sibling.is_file():
        raise PrecisionError(
            f"SWIN_PRECISION=int8 needs {sibling} beside {path.name}: export it with "
            "swin-export --int8 (or serve the int8 file itself)"
        )
    if not machine.int8_fast:
        reason += " (no VNNI or AMX on this CPU: int8 may be no faster than fp32)"
    return Plan("int8", ONNXRUNTIME, sibling, reason, fallback)


def _need_openvino(machine: Machine, what: str) -> None:
    if not machine.openvino:
        raise PrecisionError(f"{what} needs OpenVINO, which is not installed: {OPENVINO_HINT}")


def _need_onnxruntime(engine: str, precision: str) -> None:
    if engine == OPENVINO:
        raise PrecisionError(
            f"{precision} files run on ONNX Runtime: leave SWIN_ENGINE at auto or onnxruntime"
        )

"""The golden self-check: the exporter's own answers, replayed by the server before it is ready.

The exporter stores a few deterministic inputs and what its PyTorch fp32 model gave for them in
the artefact's ``swin.golden`` metadata (a base64 ``.npz``). Every time the server loads the
model it runs those inputs on its own provider and precision and compares every output. That
catches an int8 file whose kernels saturate on this CPU, an fp16 overflow on a GPU, or a file
changed after export, none of which a manifest can see.

Each output gets three scores against the fp32 answer (``compare``); each precision bounds some:

- fp32 on CPU: max|served - torch| / max|torch| <= 1e-4, the export's parity bound. CPUs differ
  only in the last bits (FMA, AVX2 and AVX-512 kernels sum in other orders).
- fp16, and fp32 on CUDA (whose matmuls may run in TF32, with fp16's 10-bit mantissa): cosine
  >= 0.999 and scale within 1%. Rounding every value changes them all a little by design, so a
  bound on the worst difference would measure only the rounding; the cosine measures whether
  the answer still points the same way, and the scale (the ratio of the norms) what a cosine
  cannot see, such as weights multiplied after export.
- bf16 (OpenVINO): cosine >= 0.9995 and scale within 1%, the same reasoning: bfloat16 keeps
  fp32's range but only 8 bits of mantissa, and OpenVINO accumulates in fp32, so a sound run
  stays well inside fp16's own bound; the bound leaves room for other CPUs' kernels (AMX) and
  is far above what a broken kernel gives.
- int8: cosine >= 0.99 and scale within 2%, the same reasoning with dynamic int8's coarser
  rounding. A kernel that saturates falls well below the cosine bound.

An engine with several lanes (server/runtime/layout.py: one run on every core, runs side by side) is
checked on each, since each is its own compiled program.

The same metadata carries one golden image and the tensor its transform gave at export; the
server's preprocessing is checked on it too (artifact/preprocess_check.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from swin_serve.artifact.contract import GOLDEN_KEY, PreprocessSpec
from swin_serve.artifact.preprocess_check import PreprocessCheck, check_preprocessing

GOLDEN_COUNT = 2  # a batch of two: the batch axis is exercised too
_COARSE = 8  # the golden images are smooth blobs over an 8x8 grid, plus fine noise


class SelfCheckFailed(RuntimeError):
    """The served model does not reproduce the exporter's answers within tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the per-output scores of ``compare``; a bound of None is not checked."""

    max_rel_diff: float | None = None
    min_cosine: float | None = None
    max_scale_error: float | None = None

    def violations(self, scores: dict[str, float]) -> list[str]:
        """What breaks a bound, in words; written so that NaN breaks every bound it meets."""
        found = []
        for metric, bound, holds in (
            ("max_rel_diff", self.max_rel_diff, lambda v, b: v <= b),
            ("min_cosine", self.min_cosine, lambda v, b: v >= b),
            ("scale_error", self.max_scale_error, lambda v, b: v <= b),
        ):
            value = scores[metric]
            if bound is not None and not holds(value, bound):
                found.append(f"{metric} {value:.6g} (bound {bound:g})")
        return found


_FP32_CPU = Tolerance(max_rel_diff=1e-4)
_HALF_MANTISSA = Tolerance(min_cosine=0.999, max_scale_error=0.01)
_BF16 = Tolerance(min_cosine=0.9995, max_scale_error=0.01)
_INT8 = Tolerance(min_cosine=0.99, max_scale_error=0.02)


def tolerance_for(precision: str, provider: str) -> Tolerance:
    if precision == "fp32":
        return _HALF_MANTISSA if provider == "CUDAExecutionProvider" else _FP32_CPU
    if precision == "fp16":
        return _HALF_MANTISSA
    if precision == "bf16":
        return _BF16
    if precision == "int8":
        return _INT8
    raise SelfCheckFailed(f"no self-check tolerance for precision {precision!r}")


@dataclass(frozen=True)
class Golden:
    inputs: np.ndarray  # float32 (G, 3, S, S)
    outputs: dict[str, np.ndarray]  # name -> float32 (G, ...)
    image: bytes | None = None  # an encoded image (artifact/preprocess_check.py)
    pixels: np.ndarray | None = None  # float32 (3, S, S): what the transform made of it
    pillow: str | None = None  # the Pillow that made ``pixels``


def golden_inputs(size: int, count: int = GOLDEN_COUNT, seed: int = 0) -> np.ndarray:
    """Image-like float32 (count, 3, size, size), exact in float16 so they store at half size.

    RandomState's stream is frozen by NumPy, so the same seed gives the same inputs everywhere.
    """
    rng = np.random.RandomState(seed)
    coarse = rng.standard_normal((count, 3, _COARSE, _COARSE))  # G, 3, 8, 8
    cell = -(-size // _COARSE)
    smooth = coarse.repeat(cell, axis=2).repeat(cell, axis=3)[:, :, :size, :size]  # G, 3, S, S
    noisy = smooth + 0.25 * rng.standard_normal(smooth.shape)
    return noisy.astype(np.float16).astype(np.float32)


def encode_golden(golden: Golden) -> str:
    buffer = io.BytesIO()
    extra: dict[str, np.ndarray] = {}
    if golden.image is not None and golden.pixels is not None:
        extra["pre_image"] = np.frombuffer(golden.image, dtype=np.uint8)
        extra["pre_pixels"] = golden.pixels.astype(np.float32)
        extra["pre_pillow"] = np.array(golden.pillow or "unknown")
    np.savez_compressed(
        buffer,
        inputs=golden.inputs.astype(np.float16),
        **{f"out_{k}": v.astype(np.float32) for k, v in golden.outputs.items()},
        **extra,
    )
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_golden(text: str) -> Golden:
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as npz:
        outputs = {k.removeprefix("out_"): npz[k] for k in npz.files if k.startswith("out_")}
        if "pre_image" not in npz.files:
            return Golden(npz["inputs"].astype(np.float32), outputs)
        return Golden(
            npz["inputs"].astype(np.float32),
            outputs,
            npz["pre_image"].tobytes(),
            npz["pre_pixels"],
            str(npz["pre_pillow"]),
        )


def golden_digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def compare(expected: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per output, against the expected answer (the worst over the golden inputs):
    ``max_rel_diff`` max|got - expected| / max|expected|, ``min_cosine`` the cosine of the two,
    ``scale_error`` | ||got|| / ||expected|| - 1 |."""
    scores = {}
    for name, ref in expected.items():
        if name not in got or np.shape(got[name]) != ref.shape:
            raise SelfCheckFailed(
                f"output {name!r}: the model gives {np.shape(got.get(name))}, the golden answer "
                f"is {ref.shape}: the file does not match its golden answers"
            )
        a = ref.reshape(len(ref), -1).astype(np.float64)
        b = np.asarray(got[name]).reshape(len(ref), -1).astype(np.float64)
        norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        scores[name] = {
            "max_rel_diff": float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6)),
            "min_cosine": float(((a * b).sum(1) / np.maximum(norm_a * norm_b, 1e-30)).min()),
            "scale_error": float(np.abs(norm_b / np.maximum(norm_a, 1e-30) - 1.0).max()),
        }
    return scores


@dataclass(frozen=True)
class SelfCheckReport:
    status: Literal["passed", "failed", "skipped"]
    precision: str
    provider: str
    cpu: dict[str, bool | None]
    tolerance: Tolerance | None = None
    outputs: dict[str, dict[str, float]] | None = None
    failures: dict[str, list[str]] | None = None  # output -> the bounds it broke
    inputs: int = 0
    took_ms: float = 0.0
    reason: str | None = None
    preprocess: PreprocessCheck | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failure_message(self, source: str) -> str:
        if self.preprocess is not None and self.preprocess.status == "failed":
            return f"{source}: the golden self-check failed: {self.preprocess.failure()}"
        broken = "; ".join(
            f"output {name!r}: {', '.join(found)}" for name, found in (self.failures or {}).items()
        )
        return (
            f"{source}: the golden self-check failed ({self.precision} on {self.provider}): "
            f"{broken}. The model no longer gives the answers its exporter recorded: the file was "
            "changed after export, or this runtime or CPU computes it differently. Re-export it "
            "(swin-export) and serve the new file."
        )


def run_self_check(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    golden_text: str | None,
    *,
    precision: str,
    provider: str,
    cpu: dict[str, bool | None],
    spec: PreprocessSpec | None = None,
) -> SelfCheckReport:
    """Run the golden inputs through ``run`` and compare, and, given the model's transform
    ``spec``, the golden image through it; the report says pass or fail.

    Raises SelfCheckFailed when the golden answers cannot be read or do not fit the model.
    """
    if golden_text is None:
        reason = f"the artefact has no {GOLDEN_KEY!r} metadata: re-export it to enable the check"
        return SelfCheckReport("skipped", precision, provider, cpu, reason=reason)
    golden = _decode_or_refuse(golden_text)
    tolerance = tolerance_for(precision, provider)
    start = time.perf_counter()
    got = run(golden.inputs)
    took_ms = (time.perf_counter() - start) * 1e3
    scores = compare(golden.outputs, got)
    failures = {n: found for n, v in scores.items() if (found := tolerance.violations(v))}
    pre = None
    if spec is not None:
        pre = check_preprocessing(golden.image, golden.pixels, spec, golden.pillow)
        if pre.status == "failed":
            failures["preprocessing"] = [pre.failure()]
    return SelfCheckReport(
        "failed" if failures else "passed",
        precision,
        provider,
        cpu,
        tolerance=tolerance,
        outputs=scores,
        failures=failures,
        inputs=len(golden.inputs),
        took_ms=round(took_ms, 1),
        preprocess=pre,
    )


def _decode_or_refuse(golden_text: str) -> Golden:
    try:
        golden = decode_golden(golden_text)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SelfCheckFailed(f"the {GOLDEN_KEY!r} metadata cannot be read: {exc}") from exc
    if not golden.outputs or golden.inputs.ndim != 4:
        raise SelfCheckFailed(f"the {GOLDEN_KEY!r} metadata holds no usable inputs and outputs")
    return golden

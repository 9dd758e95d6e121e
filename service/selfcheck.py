"""The golden self-check: the exporter's own answers, replayed by the server before it is ready.

The exporter stores a few deterministic inputs and what its PyTorch fp32 model gave for them in
the artefact's ``swin.golden`` metadata (a base64 ``.npz``). Every time the server loads the
model it runs those inputs on its own provider and precision and compares every output. That
catches an int8 file whose kernels saturate on this CPU, an fp16 overflow on a GPU, or a file
changed after export, none of which a manifest can see.

Tolerances, per precision:

- fp32: max|served - torch| / max|torch| per output <= 1e-4 on CPU, the export's parity bound.
  fp32 differs only in the last bits between CPUs (FMA, AVX-512 and AVX2 sum in other orders),
  around 1e-6. On CUDA it is 2e-3: ONNX Runtime's CUDA kernels may use TF32 (10-bit mantissa).
- fp16 and int8: the minimum cosine over the golden inputs, per output, against the fp32 answer.
  Both change every value a little by design, so a bound on the worst difference would only
  measure the rounding; a cosine measures whether the answer still points the same way. fp16 keeps
  0.999 (its rounding is 2^-11); dynamic int8 keeps 0.99 on every stage and output, which its
  honest error clears with room while a saturating kernel or changed weights fall far below.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

GOLDEN_KEY = "swin.golden"
GOLDEN_COUNT = 2  # a batch of two: the batch axis is exercised too
_COARSE = 8  # the golden images are smooth blobs over an 8x8 grid, plus fine noise


class SelfCheckFailed(RuntimeError):
    """The served model does not reproduce the exporter's answers within tolerance."""


@dataclass(frozen=True)
class Tolerance:
    metric: Literal["max_rel_diff", "min_cosine"]
    limit: float

    def holds(self, value: float) -> bool:
        # Written so that NaN fails both ways.
        return value <= self.limit if self.metric == "max_rel_diff" else value >= self.limit


def tolerance_for(precision: str, provider: str) -> Tolerance:
    if precision == "fp32":
        return Tolerance("max_rel_diff", 2e-3 if provider == "CUDAExecutionProvider" else 1e-4)
    if precision == "fp16":
        return Tolerance("min_cosine", 0.999)
    if precision == "int8":
        return Tolerance("min_cosine", 0.99)
    raise SelfCheckFailed(f"no self-check tolerance for precision {precision!r}")


@dataclass(frozen=True)
class Golden:
    inputs: np.ndarray  # float32 (G, 3, S, S)
    outputs: dict[str, np.ndarray]  # name -> float32 (G, ...)


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
    np.savez_compressed(
        buffer,
        inputs=golden.inputs.astype(np.float16),
        **{f"out_{k}": v.astype(np.float32) for k, v in golden.outputs.items()},
    )
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_golden(text: str) -> Golden:
    with np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False) as npz:
        outputs = {k.removeprefix("out_"): npz[k] for k in npz.files if k.startswith("out_")}
        return Golden(npz["inputs"].astype(np.float32), outputs)


def golden_digest(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def compare(
    expected: dict[str, np.ndarray], got: dict[str, np.ndarray], metric: str
) -> dict[str, float]:
    """Per output: max|got - expected| / max|expected|, or the minimum per-input cosine."""
    scores = {}
    for name, ref in expected.items():
        a = ref.reshape(len(ref), -1).astype(np.float64)
        b = np.asarray(got[name]).reshape(len(ref), -1).astype(np.float64)
        if metric == "max_rel_diff":
            scale = np.abs(a).max()
            scores[name] = float(np.abs(a - b).max() / max(scale, 1e-6))
        else:
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            scores[name] = float(((a * b).sum(1) / np.maximum(norms, 1e-30)).min())
    return scores


@dataclass(frozen=True)
class SelfCheckReport:
    status: Literal["passed", "failed", "skipped"]
    precision: str
    provider: str
    cpu: dict[str, bool | None]
    tolerance: Tolerance | None = None
    outputs: dict[str, float] | None = None
    inputs: int = 0
    took_ms: float = 0.0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failure_message(self, source: str) -> str:
        tol = self.tolerance
        assert self.outputs is not None and tol is not None
        bad = [(n, v) for n, v in self.outputs.items() if not tol.holds(v)]
        named = "; ".join(f"output {n!r}: {tol.metric} {v:.6g}" for n, v in bad)
        bound = "<=" if tol.metric == "max_rel_diff" else ">="
        return (
            f"{source}: the golden self-check failed ({self.precision} on {self.provider}): {named}; "
            f"tolerance {tol.metric} {bound} {tol.limit:g}. The model no longer gives the "
            "answers its exporter recorded: the file was changed after export, or this runtime "
            "or CPU computes it differently. Re-export it (python -m export) and serve the new file."
        )


def run_self_check(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    golden_text: str | None,
    *,
    precision: str,
    provider: str,
    cpu: dict[str, bool | None],
) -> SelfCheckReport:
    """Run the golden inputs through ``run`` and compare; the report says pass or fail."""
    if golden_text is None:
        reason = f"the artefact has no {GOLDEN_KEY!r} metadata: re-export it to enable the check"
        return SelfCheckReport("skipped", precision, provider, cpu, reason=reason)
    golden = decode_golden(golden_text)
    tolerance = tolerance_for(precision, provider)
    start = time.perf_counter()
    got = run(golden.inputs)
    took_ms = (time.perf_counter() - start) * 1e3
    scores = compare(golden.outputs, got, tolerance.metric)
    passed = all(tolerance.holds(v) for v in scores.values())
    return SelfCheckReport(
        "passed" if passed else "failed",
        precision,
        provider,
        cpu,
        tolerance=tolerance,
        outputs=scores,
        inputs=len(golden.inputs),
        took_ms=round(took_ms, 1),
    )

"""Checks on an exported graph: ONNX validity, symbolic batch, and numerical parity.

Parity runs ONNX Runtime (CPU) against the PyTorch model on fresh random inputs at several
batch sizes, at least one of them different from the batch size used for tracing, and compares
every output: max |diff| / max |reference| must stay within the tolerance.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from swin_serve.artifact.contract import INPUT_NAME, OUTPUT_NAMES
from swin_serve.artifact.golden import compare
from swin_serve.model import SwinTransformer

from .graph import TRACE_BATCH, reference_outputs

PARITY_BATCH_SIZES = (1, 2, 3, 8, 17)
FP32_TOLERANCE = 1e-4
FP16_MIN_COSINE = 0.999
# Dynamic int8 is lossy by design, but with variants.Int8Settings far less than this floor
# allows; a saturating kernel loses whole percents, which it catches. The report carries the
# exact figures.
INT8_MIN_LOGITS_COSINE = 0.995


class CheckFailed(RuntimeError):
    """An exported graph is wrong; the message says which check and by how much."""


def check_onnx_model(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckFailed(f"onnx.checker rejected the graph: {exc}") from exc


def _dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]


def check_symbolic_batch(
    proto: onnx.ModelProto, expected: Mapping[str, Sequence[int | str]]
) -> dict[str, Any]:
    """The batch is the only symbol on the graph's input and outputs, and no intermediate
    tensor computed from the input has an all-static shape (a baked-in trace batch).

    `expected` maps each output name to its manifest shape, e.g. ["batch", 96, 56, 56].
    """
    inputs = [i for i in proto.graph.input if i.name == INPUT_NAME]
    if not inputs:
        raise CheckFailed(f"the graph has no input named {INPUT_NAME!r}")
    (inp,) = inputs
    problems = []
    missing = sorted(set(expected) - {o.name for o in proto.graph.output})
    if missing:
        problems.append(f"outputs missing from the graph: {missing}")
    if (_dims(inp) or [None])[0] != "batch":
        problems.append(
            f"input {INPUT_NAME} has shape {_dims(inp)}, expected a symbolic 'batch' first"
        )
    for out in proto.graph.output:
        want = expected.get(out.name)
        if _dims(out) != (list(want) if want is not None else None):
            problems.append(f"output {out.name} has shape {_dims(out)}, expected {want}")

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    shapes = {v.name: _dims(v) for v in [*inferred.graph.value_info, *inferred.graph.output]}
    dependent = _tensors_computed_from(inferred.graph, INPUT_NAME)
    unknown = [name for name in dependent if shapes.get(name) is None]
    frozen = [
        name
        for name in dependent
        if shapes.get(name) is not None
        and shapes[name]
        and all(isinstance(d, int) and d > 0 for d in shapes[name])
    ]
    if unknown:  # a tensor ONNX cannot shape is one whose batch we cannot vouch for
        problems.append(
            f"{len(unknown)} tensors computed from the input have no inferred shape: {unknown[:5]}"
        )
    if frozen:
        problems.append(
            f"{len(frozen)} intermediate tensors have a fixed batch: {frozen[:5]} ({[shapes[n] for n in frozen[:5]]})"
        )
    if problems:
        raise CheckFailed("; ".join(problems))
    return {
        "batch_dependent_tensors": len(dependent),
        "shapes_inferred": len(dependent) - len(unknown),
        "frozen": 0,
    }


def _tensors_computed_from(graph: onnx.GraphProto, source: str) -> list[str]:
    reached = {source}
    order = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if reached.intersection(node.input):
            for name in node.output:
                if name and name not in reached:
                    reached.add(name)
                    order.append(name)
    return order


def random_inputs(batch_sizes: Iterable[int], img_size: int, seed: int) -> dict[int, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {b: torch.randn(b, 3, img_size, img_size, generator=generator) for b in batch_sizes}


def check_parity(
    session: ort.InferenceSession,
    model: SwinTransformer,
    *,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    tolerance: float = FP32_TOLERANCE,
    trace_batch: int = TRACE_BATCH,
    seed: int | None = None,
) -> dict[str, Any]:
    """Compare every output at every batch size; the report says pass or fail, with figures."""
    if all(b == trace_batch for b in batch_sizes):
        raise ValueError("parity must run at a batch size other than the trace batch size")
    seed = secrets.randbits(31) if seed is None else seed
    worst: dict[str, dict[str, float]] = {}
    per_batch: dict[str, dict[str, float]] = {}
    for batch, x in random_inputs(batch_sizes, model.config.img_size, seed).items():
        expected = reference_outputs(model, x)
        got = dict(
            zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()}), strict=True)
        )
        per_batch[str(batch)] = {}
        for name in OUTPUT_NAMES:
            ref = expected[name].numpy()
            if got[name].shape != ref.shape:
                raise CheckFailed(
                    f"{name} at batch {batch}: ONNX shape {got[name].shape}, PyTorch {ref.shape}"
                )
            diff = float(np.abs(got[name].astype(np.float64) - ref).max())
            scale = float(np.abs(ref).max())
            # NaN or inf on either side makes the ratio NaN, and a NaN must fail, never compare
            # its way past the tolerance.
            rel = diff / max(scale, 1e-6) if np.isfinite(scale) else float("nan")
            per_batch[str(batch)][name] = rel
            entry = worst.setdefault(name, {"max_abs_diff": 0.0, "rel_diff": 0.0, "scale": scale})
            if not rel <= entry["rel_diff"]:  # larger, or NaN
                entry.update(max_abs_diff=diff, rel_diff=rel, scale=scale)
    failed = {n: e["rel_diff"] for n, e in worst.items() if not e["rel_diff"] <= tolerance}
    return {
        "passed": not failed,
        "metric": "max|onnx - torch| / max|torch|, worst over batch sizes",
        "tolerance": tolerance,
        "batch_sizes": list(batch_sizes),
        "trace_batch_size": trace_batch,
        "seed": seed,
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "outputs": worst,
        "per_batch": per_batch,
        "failed": failed,
    }


def agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, Any]:
    """How closely a reduced-precision variant follows fp32: cosine per output, top-1/top-5."""
    scores = compare({n: reference[n] for n in OUTPUT_NAMES}, candidate)
    cosine = {name: s["min_cosine"] for name, s in scores.items()}
    ref_top5 = np.argsort(-reference["logits"], axis=1)[:, :5]
    cand_top5 = np.argsort(-candidate["logits"], axis=1)[:, :5]
    top1 = float((ref_top5[:, 0] == cand_top5[:, 0]).mean())
    top5 = float(
        np.mean([len(set(r) & set(c)) / 5 for r, c in zip(ref_top5, cand_top5, strict=True)])
    )
    return {
        "cosine_min": cosine,
        "top1_agreement": top1,
        "top5_overlap": top5,
        "images": len(reference["logits"]),
    }


def variant_agreement(
    precision: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> dict[str, Any]:
    """`agreement` of a variant with the fp32 model; raises CheckFailed below its floor."""
    report = agreement(expected, got)
    report["reference"] = "fp32 ONNX model, same inputs"
    report["checked_on"] = "CPUExecutionProvider"
    if precision == "fp16":
        report["min_cosine_required"] = FP16_MIN_COSINE
        low = {k: v for k, v in report["cosine_min"].items() if not v >= FP16_MIN_COSINE}
        report["passed"] = not low
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        report["cuda"] = (
            "available"
            if has_cuda
            else "not checked: no CUDAExecutionProvider on this machine; fp16 speed needs a GPU"
        )
        if low:
            raise CheckFailed(f"fp16 variant below cosine {FP16_MIN_COSINE}: {low}")
        return report
    logits_cosine = report["cosine_min"]["logits"]
    report["min_logits_cosine_required"] = INT8_MIN_LOGITS_COSINE
    report["passed"] = logits_cosine >= INT8_MIN_LOGITS_COSINE
    if not report["passed"]:
        raise CheckFailed(
            f"int8 variant logits cosine {logits_cosine:.4f} < {INT8_MIN_LOGITS_COSINE}: "
            "the quantisation is broken"
        )
    return report


def run_session(session: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: x}), strict=True))

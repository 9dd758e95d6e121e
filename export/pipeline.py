"""The export pipeline: weights -> trace -> check -> optimise -> verify -> write.

Every file is written through a temporary name and only after its checks pass, so a failure
leaves no half-written or unverified model behind.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model import SwinTransformer, get_config
from service.selfcheck import GOLDEN_KEY

from . import checks, golden, manifest, optimize, triton, variants
from .graph import DEFAULT_OPSET, TRACE_BATCH, save_atomically, trace_to_onnx
from .weights import resolve_weights

VARIANT_CHECK_BATCH = 16
FP16_MIN_COSINE = 0.999
# Dynamic int8 is lossy by design, but with variants.Int8Settings far less than this floor
# allows; a saturating kernel loses whole percents, which it catches. The report carries the
# exact figures.
INT8_MIN_LOGITS_COSINE = 0.995


@dataclass(frozen=True)
class ExportOptions:
    variant: str
    checkpoint: str = "random"
    trust_checkpoint: bool = False
    img_size: int | None = None
    num_classes: int = 1000
    out_dir: Path = Path("models")
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    int8: bool = False
    triton_repo: Path | None = None
    parity_batch_sizes: tuple[int, ...] = checks.PARITY_BATCH_SIZES
    seed: int = 0


@dataclass
class ExportResult:
    model_path: Path
    report_path: Path
    manifest: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


class Progress:
    """Numbered step lines on stderr, each closed with its duration."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream

    def step(self, title: str) -> _Step:
        self.done += 1
        return _Step(self, f"[{self.done}/{self.total}] {title}")

    def warn(self, message: str) -> None:
        bar = "!" * 78
        print(f"\n{bar}\n{message}\n{bar}\n", file=self.stream, flush=True)


class _Step:
    def __init__(self, progress: Progress, title: str):
        self.progress, self.title = progress, title

    def __enter__(self) -> _Step:
        print(f"{self.title} ...", file=self.progress.stream, flush=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, *_) -> None:
        took = time.perf_counter() - self.start
        status = "done" if exc_type is None else "FAILED"
        print(f"    {status} in {took:.1f} s", file=self.progress.stream, flush=True)


def run_export(options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    steps = 7 + options.fp16 + options.int8 + (options.triton_repo is not None)
    progress = progress or Progress(steps)
    started = time.perf_counter()
    config = get_config(options.variant, num_classes=options.num_classes, img_size=options.img_size)
    name = (
        options.variant
        if options.img_size in (None, get_config(options.variant).img_size)
        else f"{options.variant}_{config.img_size}"
    )
    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    with progress.step(
        f"Loading weights ({options.checkpoint}) into {options.variant} @ {config.img_size}px"
    ):
        torch.manual_seed(options.seed)
        model = SwinTransformer(config).eval()
        weights = resolve_weights(
            model,
            options.checkpoint,
            variant=options.variant,
            seed=options.seed,
            warn=progress.warn,
            trusted=options.trust_checkpoint,
        )

    with progress.step(
        f"Tracing to ONNX (torch.onnx dynamo exporter, opset {options.opset}, batch {TRACE_BATCH})"
    ):
        portable = trace_to_onnx(model, opset=options.opset)
        info = manifest.build_manifest(
            name=name,
            variant=options.variant,
            config=config,
            weights=weights,
            exporter=_exporter_info(options.opset),
        )
        manifest.embed(portable, info)

    with progress.step("Checking the graph (onnx.checker, symbolic batch on every tensor)"):
        checks.check_onnx_model(portable)
        graph_report = checks.check_symbolic_batch(portable, info["outputs"])

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as work_dir:
        work = Path(work_dir)
        portable_path, optimized_path = work / "portable.onnx", work / "optimized.onnx"
        onnx.save(portable, portable_path)

        with progress.step(
            "Optimising the graph offline (GELU fusion, then ONNX Runtime extended level)"
        ):
            optimize.optimize_offline(portable_path, optimized_path)
            startup = {
                "raw_graph_s": optimize.startup_seconds(
                    portable_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                ),
                "preoptimized_s": optimize.startup_seconds(
                    optimized_path, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                ),
            }

        sizes = ", ".join(str(b) for b in options.parity_batch_sizes)
        with progress.step(f"Verifying ONNX Runtime against PyTorch at batch {sizes}"):
            session = checks.cpu_session(optimized_path)
            parity = checks.check_parity(session, model, batch_sizes=options.parity_batch_sizes)
            parity["graph"] = graph_report
            if not parity["passed"]:
                raise checks.CheckFailed(
                    f"parity check failed (tolerance {parity['tolerance']:g}): "
                    + ", ".join(f"{k} rel diff {v:.3g}" for k, v in parity["failed"].items())
                )
        info["parity"] = parity
        with progress.step("Recording golden answers for the server's start-up self-check"):
            golden_text = golden.record(model)
            info["golden"] = golden.summary(golden_text)
            info["golden"]["export_check"] = golden.check(session, golden_text, "fp32")
        info["optimization"] = {
            "offline_level": "gelu fusion + extended",
            "optimized_on": "CPUExecutionProvider",
            "startup": startup,
        }

        files: dict[str, Path] = {}
        with progress.step("Writing the model and its report"):
            served = onnx.load(optimized_path)
            manifest.embed(served, info)
            manifest.set_metadata(served, GOLDEN_KEY, golden_text)
            model_path, report_path = out_dir / f"{name}.onnx", out_dir / f"{name}.json"
            # Variants of an earlier export were made from other weights: never leave them
            # beside the new model.
            for stale in ("fp16", "int8"):
                for suffix in ("onnx", "json"):
                    (out_dir / f"{name}.{stale}.{suffix}").unlink(missing_ok=True)
            save_atomically(served, model_path)
            manifest.write_report(info, report_path)
            files.update(model=model_path, report=report_path)

        reference = _variant_reference(session, config.img_size)
        reports: dict[str, dict[str, Any]] = {}
        for precision, wanted, convert in (
            ("fp16", options.fp16, variants.to_fp16),
            ("int8", options.int8, variants.to_int8),
        ):
            if wanted:
                with progress.step(f"Building and checking the {precision} variant"):
                    written, reports[precision] = _write_variant(
                        precision, convert(portable), info, reference, out_dir, name, golden_text
                    )
                    files.update(written)
        if options.triton_repo is not None:
            with progress.step(f"Writing the Triton model repository {options.triton_repo}"):
                triton_dir = triton.write_triton_repo(options.triton_repo, name, portable, info)
                files["triton"] = triton_dir

    return ExportResult(
        model_path, report_path, info, files, reports, time.perf_counter() - started
    )


def _variant_reference(
    session: ort.InferenceSession, img_size: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    x = (
        np.random.default_rng(0)
        .standard_normal((VARIANT_CHECK_BATCH, 3, img_size, img_size))
        .astype(np.float32)
    )
    return x, checks.run_session(session, x)


def _write_variant(
    precision: str,
    proto: onnx.ModelProto,
    info: dict[str, Any],
    reference,
    out_dir: Path,
    name: str,
    golden_text: str,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Check a variant against the fp32 model's outputs, then write it with its own manifest."""
    x, expected = reference
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".variant-") as tmp:
        path = Path(tmp) / "variant.onnx"
        onnx.save(proto, path)
        session = checks.cpu_session(path)
        got = checks.run_session(session, x)
        self_check = golden.check(session, golden_text, precision)
    agreement = checks.agreement(expected, got)
    agreement["reference"] = "fp32 ONNX model, same inputs"
    agreement["checked_on"] = "CPUExecutionProvider"
    if precision == "fp16":
        agreement["min_cosine_required"] = FP16_MIN_COSINE
        low = {k: v for k, v in agreement["cosine_min"].items() if not v >= FP16_MIN_COSINE}
        agreement["passed"] = not low
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        agreement["cuda"] = (
            "available"
            if has_cuda
            else "not checked: no CUDAExecutionProvider on this machine; fp16 speed needs a GPU"
        )
        if low:
            raise checks.CheckFailed(f"fp16 variant below cosine {FP16_MIN_COSINE}: {low}")
    else:
        logits_cosine = agreement["cosine_min"]["logits"]
        agreement["min_logits_cosine_required"] = INT8_MIN_LOGITS_COSINE
        agreement["passed"] = logits_cosine >= INT8_MIN_LOGITS_COSINE
        if not agreement["passed"]:
            raise checks.CheckFailed(
                f"int8 variant logits cosine {logits_cosine:.4f} < {INT8_MIN_LOGITS_COSINE}: "
                "the quantisation is broken"
            )
    variant_info = {
        **info,
        "name": f"{name}.{precision}",
        "precision": precision,
        "agreement": agreement,
        "golden": {**info["golden"], "export_check": self_check},
    }
    if precision == "int8":
        variant_info["quantization"] = variants.Int8Settings().as_dict()
    manifest.embed(proto, variant_info)
    manifest.set_metadata(proto, GOLDEN_KEY, golden_text)
    model_path, report_path = (
        out_dir / f"{name}.{precision}.onnx",
        out_dir / f"{name}.{precision}.json",
    )
    save_atomically(proto, model_path)
    manifest.write_report(variant_info, report_path)
    return {precision: model_path, f"{precision}_report": report_path}, agreement


def _exporter_info(opset: int) -> dict[str, Any]:
    return {
        "name": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": version("onnxscript"),
        "onnxruntime": ort.__version__,
        "opset": opset,
    }

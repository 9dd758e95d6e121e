"""The export pipeline: weights -> trace -> check -> optimise -> verify -> write.

`run_export` plans the steps from the options, then runs them in order; each step is a function
of the work so far. Every file is written through a temporary name and only after its checks
pass, so a failure leaves no half-written or unverified model behind.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from swin_serve.artifact.contract import GOLDEN_KEY, Manifest, WeightsRecord, random_weights_warning
from swin_serve.artifact.sessions import cpu_session
from swin_serve.model import SwinConfig, SwinTransformer, get_config
from swin_serve.model.download import has_official_weights
from swin_serve.model.weights import checkpoint_head_size, is_local, load_weights

from . import checks, golden, manifest, optimize, triton, variants
from .graph import DEFAULT_OPSET, TRACE_BATCH, save_atomically, trace_to_onnx
from .labels import Head, decide_head, huggingface_labels
from .preprocessing import Transform, TransformFlags, decide_transform
from .progress import Progress

VARIANT_CHECK_BATCH = 16


@dataclass(frozen=True)
class ExportOptions:
    variant: str
    checkpoint: str = "random"
    trust_checkpoint: bool = False
    img_size: int | None = None
    num_classes: int | None = None  # None: the checkpoint's, else the labels', else 1000
    labels: Path | None = None
    out_dir: Path = Path("artefacts")
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    int8: bool = False
    triton_repo: Path | None = None
    parity_batch_sizes: tuple[int, ...] = checks.PARITY_BATCH_SIZES
    seed: int = 0
    transform: TransformFlags = field(default_factory=TransformFlags)


@dataclass
class ExportResult:
    model_path: Path
    report_path: Path
    manifest: Manifest
    files: dict[str, Path] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class _Work:
    """What the steps hand on to each other; `tmp` is a scratch folder inside the output one."""

    options: ExportOptions
    config: SwinConfig
    name: str
    tmp: Path
    progress: Progress
    model: SwinTransformer | None = None
    manifest: Manifest | None = None
    portable: onnx.ModelProto | None = None
    graph_report: dict[str, Any] | None = None
    session: ort.InferenceSession | None = None
    golden_text: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, **reports: Any) -> None:
        assert self.manifest is not None
        self.manifest = self.manifest.model_copy(update=reports)


Step = Callable[[_Work], None]


def run_export(options: ExportOptions, progress: Progress | None = None) -> ExportResult:
    started = time.perf_counter()
    # The head's size is read from the checkpoint in the first step; nothing before needs it.
    config = get_config(options.variant, img_size=options.img_size)
    steps = plan(options, config)
    progress = progress or Progress()
    progress.begin(len(steps))
    options.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=options.out_dir, prefix=".export-") as tmp:
        work = _Work(options, config, artefact_name(options, config), Path(tmp), progress)
        for title, step in steps:
            with progress.step(title):
                step(work)
    assert work.manifest is not None
    return ExportResult(
        work.files["model"],
        work.files["report"],
        work.manifest,
        work.files,
        work.variants,
        time.perf_counter() - started,
    )


def plan(options: ExportOptions, config: SwinConfig) -> list[tuple[str, Step]]:
    """The steps `options` ask for, in order, each with the line progress prints for it."""
    sizes = ", ".join(str(b) for b in options.parity_batch_sizes)
    steps: list[tuple[str, Step]] = [
        (
            f"Loading weights ({options.checkpoint}) into {options.variant} @ {config.img_size}px",
            _load_weights,
        ),
        (
            f"Tracing to ONNX (torch.onnx dynamo exporter, opset {options.opset}, "
            f"batch {TRACE_BATCH})",
            _trace,
        ),
        ("Checking the graph (onnx.checker, symbolic batch on every tensor)", _check_graph),
        ("Optimising the graph offline (GELU fusion, then ONNX Runtime extended level)", _optimize),
        (f"Verifying ONNX Runtime against PyTorch at batch {sizes}", _verify),
        ("Recording golden answers for the server's start-up self-check", _record_golden),
        ("Writing the model and its report", _write_model),
    ]
    for precision in ("fp16", "int8"):
        if getattr(options, precision):
            title = f"Building and checking the {precision} variant"
            steps.append((title, functools.partial(_write_variant, precision)))
    if options.triton_repo is not None:
        steps.append((f"Writing the Triton model repository {options.triton_repo}", _write_triton))
    return steps


def artefact_name(options: ExportOptions, config: SwinConfig) -> str:
    """The preset's name, suffixed with the input size when it is not the preset's own."""
    if options.img_size in (None, get_config(options.variant).img_size):
        return options.variant
    return f"{options.variant}_{config.img_size}"


def _load_weights(work: _Work) -> None:
    options = work.options
    head = _decide_head(options)
    transform = _decide_transform(options, work.config.img_size)
    work.config = get_config(
        options.variant, num_classes=head.num_classes, img_size=options.img_size
    )
    torch.manual_seed(options.seed)
    work.model = SwinTransformer(work.config).eval()
    warning_text = random_weights_warning(
        options.variant,
        official=has_official_weights(options.variant, num_classes=work.config.num_classes),
    )
    source = load_weights(
        work.model,
        options.checkpoint,
        variant=options.variant,
        seed=options.seed,
        trusted=options.trust_checkpoint,
        on_fallback=lambda message: work.progress.warn(f"{message}\n{warning_text}"),
    )
    warning = {"warning": warning_text} if source.random else {}
    work.manifest = manifest.build_manifest(
        name=work.name,
        variant=options.variant,
        config=work.config,
        weights=WeightsRecord(**dataclasses.asdict(source), **warning),
        exporter=_exporter_info(options.opset),
        labels=head.labels,
        labels_source=head.labels_source,
        preprocess=transform.spec,
        preprocessing_source=transform.source,
    )


def _decide_head(options: ExportOptions) -> Head:
    local = is_local(options.checkpoint)
    return decide_head(
        num_classes=options.num_classes,
        labels_file=options.labels,
        checkpoint_classes=checkpoint_head_size(
            options.checkpoint, trusted=options.trust_checkpoint
        ),
        # --labels wins: a config.json is not read at all when names are given.
        checkpoint_labels=(
            huggingface_labels(options.checkpoint) if local and options.labels is None else None
        ),
    )


def _decide_transform(options: ExportOptions, size: int) -> Transform:
    # Read before any weight is loaded, so a transform that cannot be served fails at once.
    return decide_transform(options.checkpoint, size, options.transform)


def _trace(work: _Work) -> None:
    assert work.model is not None and work.manifest is not None
    work.portable = trace_to_onnx(work.model, opset=work.options.opset)
    manifest.embed(work.portable, work.manifest)
    onnx.save(work.portable, work.tmp / "portable.onnx")


def _check_graph(work: _Work) -> None:
    assert work.portable is not None and work.manifest is not None
    checks.check_onnx_model(work.portable)
    work.graph_report = checks.check_symbolic_batch(work.portable, dict(work.manifest.outputs))


def _optimize(work: _Work) -> None:
    portable, optimized = work.tmp / "portable.onnx", work.tmp / "optimized.onnx"
    optimize.optimize_offline(portable, optimized)
    startup = {
        "raw_graph_s": optimize.startup_seconds(portable),
        "preoptimized_s": optimize.startup_seconds(optimized),
    }
    work.record(
        optimization={
            "offline_level": "gelu fusion + extended",
            "optimized_on": "CPUExecutionProvider",
            "startup": startup,
        }
    )


def _verify(work: _Work) -> None:
    assert work.model is not None and work.manifest is not None
    work.session = cpu_session(work.tmp / "optimized.onnx")
    parity = checks.check_parity(
        work.session, work.model, batch_sizes=work.options.parity_batch_sizes
    )
    parity["graph"] = work.graph_report
    if not parity["passed"]:
        raise checks.CheckFailed(
            f"parity check failed (tolerance {parity['tolerance']:g}): "
            + ", ".join(f"{k} rel diff {v:.3g}" for k, v in parity["failed"].items())
        )
    work.record(parity=parity)


def _record_golden(work: _Work) -> None:
    assert work.model is not None and work.session is not None and work.manifest is not None
    spec = work.manifest.preprocess
    work.golden_text = golden.record(work.model, spec)
    summary = golden.summary(work.golden_text)
    summary["export_check"] = golden.check(work.session, work.golden_text, "fp32", spec)
    work.record(golden=summary)


def _write_model(work: _Work) -> None:
    assert work.manifest is not None
    out_dir, name = work.options.out_dir, work.name
    # Variants of an earlier export were made from other weights: never leave them beside the
    # new model.
    for stale in ("fp16", "int8"):
        for suffix in ("onnx", "json"):
            (out_dir / f"{name}.{stale}.{suffix}").unlink(missing_ok=True)
    served = onnx.load(work.tmp / "optimized.onnx")
    work.files.update(_save(served, work.manifest, work.golden_text, out_dir / name))


def _write_variant(precision: str, work: _Work) -> None:
    """Check a variant against the fp32 model's outputs, then write it with its own manifest."""
    assert work.portable is not None and work.manifest is not None and work.session is not None
    convert = variants.to_fp16 if precision == "fp16" else variants.to_int8
    proto = convert(work.portable)
    path = work.tmp / f"{precision}.onnx"
    onnx.save(proto, path)
    session = cpu_session(path)
    size = work.config.img_size
    x = (
        np.random.default_rng(0)
        .standard_normal((VARIANT_CHECK_BATCH, 3, size, size))
        .astype(np.float32)
    )
    agreement = checks.variant_agreement(
        precision, checks.run_session(work.session, x), checks.run_session(session, x)
    )
    reports: dict[str, Any] = {
        "name": f"{work.name}.{precision}",
        "precision": precision,
        "agreement": agreement,
        "golden": {
            **(work.manifest.golden or {}),
            "export_check": golden.check(
                session, work.golden_text, precision, work.manifest.preprocess
            ),
        },
    }
    if precision == "int8":
        reports["quantization"] = variants.Int8Settings().as_dict()
    info = work.manifest.model_copy(update=reports)
    written = _save(proto, info, work.golden_text, work.options.out_dir / reports["name"])
    work.files.update({precision: written["model"], f"{precision}_report": written["report"]})
    work.variants[precision] = agreement


def _write_triton(work: _Work) -> None:
    assert work.options.triton_repo is not None and work.portable is not None
    assert work.manifest is not None
    repo = triton.write_triton_repo(
        work.options.triton_repo, work.name, work.portable, work.manifest
    )
    work.files["triton"] = repo


def _save(proto: onnx.ModelProto, info: Manifest, golden_text: str, stem: Path) -> dict[str, Path]:
    """Write `stem`.onnx with its manifest and golden answers, and `stem`.json beside it."""
    manifest.embed(proto, info)
    manifest.set_metadata(proto, GOLDEN_KEY, golden_text)
    model_path, report_path = (
        stem.with_name(stem.name + ".onnx"),
        stem.with_name(stem.name + ".json"),
    )
    save_atomically(proto, model_path)
    manifest.write_report(info, report_path)
    return {"model": model_path, "report": report_path}


def _exporter_info(opset: int) -> dict[str, Any]:
    return {
        "name": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": version("onnxscript"),
        "onnxruntime": ort.__version__,
        "opset": opset,
    }

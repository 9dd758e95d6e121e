"""`swin-export`: export a Swin preset to a verified, self-describing ONNX artefact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from swin_serve.artifact.contract import IMAGENET_MEAN, IMAGENET_STD
from swin_serve.model import PRESETS
from swin_serve.model.weights import CHOICES

from .checks import PARITY_BATCH_SIZES
from .graph import DEFAULT_OPSET
from .pipeline import ExportOptions, ExportResult, run_export
from .preprocessing import TransformFlags, parse_triple


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swin-export", description=__doc__)
    _add_model_arguments(parser)
    _add_transform_arguments(parser.add_argument_group(TRANSFORM_HELP))
    _add_output_arguments(parser)
    return parser


TRANSFORM_HELP = (
    "input transform (default: the checkpoint's own preprocessor_config.json or timm "
    "pretrained_cfg, else the official evaluation at the input size; each flag overrides "
    "that field; docs/export.md#preprocessing)"
)


def _add_transform_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--resize",
        choices=("crop", "squash"),
        default=None,
        help="crop: shorter side to S / crop_pct, then a centre crop; squash: both sides to "
        "S / crop_pct (aspect not kept), then a centre crop",
    )
    group.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        help="the fraction of the resized image the crop keeps (default 0.875 with crop, "
        "1 with squash)",
    )
    group.add_argument(
        "--interpolation",
        choices=("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"),
        default=None,
        help="the resize filter (PIL's)",
    )
    group.add_argument("--mean", default=None, help="R,G,B after /255, or imagenet")
    group.add_argument("--std", default=None, help="R,G,B after /255, or imagenet")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant",
        required=True,
        choices=sorted(PRESETS),
        metavar="NAME",
        help="one of: " + ", ".join(sorted(PRESETS)),
    )
    parser.add_argument(
        "--checkpoint",
        default="auto",
        help=f"weights: {CHOICES} (default: auto, the official weights where they can be had, "
        "else random ones, said loudly)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow pickled checkpoints that hold Python objects besides tensors (runs their code)",
    )
    parser.add_argument(
        "--img-size", type=int, default=None, help="input side in pixels (default: the preset's)"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="head size (default: the checkpoint's own, else the number of --labels, else 1000); "
        "official weights exist for 1000 (ImageNet-1k) and 21841 (ImageNet-22k)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="class names: one per line, or JSON (a list, {index: name}, or a HuggingFace "
        "config.json); default: the checkpoint's config.json id2label, else ImageNet names",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights (default: 0)")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("artefacts"), help="output folder (default: artefacts/)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})"
    )
    parser.add_argument("--fp16", action="store_true", help="also write a float16 variant for GPUs")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write a dynamically quantised int8 variant for CPUs",
    )
    parser.add_argument(
        "--triton-repo",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write a Triton model repository here",
    )
    parser.add_argument(
        "--parity-batch-sizes",
        default=",".join(map(str, PARITY_BATCH_SIZES)),
        help="batch sizes of the parity check (default: %(default)s)",
    )


def parse_transform(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TransformFlags:
    if args.crop_pct is not None and not 0.0 < args.crop_pct <= 1.0:
        parser.error(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    try:
        mean = None if args.mean is None else parse_triple(args.mean, IMAGENET_MEAN)
        std = None if args.std is None else parse_triple(args.std, IMAGENET_STD)
    except ValueError as exc:
        parser.error(f"--mean/--std: {exc}")
    if std is not None and min(std) <= 0:
        parser.error(f"--std must be positive, got {args.std}")
    return TransformFlags(args.resize, args.crop_pct, args.interpolation, mean, std)


def parse_args(argv: list[str] | None) -> ExportOptions:
    parser = build_parser()
    args = parser.parse_args(argv)
    transform = parse_transform(parser, args)
    try:
        batch_sizes = tuple(int(b) for b in args.parity_batch_sizes.split(","))
    except ValueError:
        parser.error(
            f"--parity-batch-sizes must be comma-separated integers, got {args.parity_batch_sizes!r}"
        )
    return ExportOptions(
        variant=args.variant,
        checkpoint=args.checkpoint,
        trust_checkpoint=args.trust_checkpoint,
        img_size=args.img_size,
        num_classes=args.num_classes,
        labels=args.labels,
        out_dir=args.out,
        opset=args.opset,
        fp16=args.fp16,
        int8=args.int8,
        triton_repo=args.triton_repo,
        parity_batch_sizes=batch_sizes,
        seed=args.seed,
        transform=transform,
    )


def summary(result: ExportResult) -> str:
    info = result.manifest
    assert info.parity is not None and info.optimization is not None
    parity, startup = info.parity, info.optimization["startup"]
    worst_name, worst = max(parity["outputs"].items(), key=lambda kv: kv[1]["rel_diff"])
    weights = info.weights
    lines = [
        "",
        f"Exported {info.name} in {result.seconds:.1f} s"
        + (
            f"\n  ** {weights.warning} **"
            if weights.random
            else f"   weights: {weights.source} sha256 {str(weights.sha256)[:16]}..."
        ),
        "  outputs:  " + "  ".join(f"{k} {list(v)}" for k, v in info.outputs.items()),
        f"  labels:   {len(info.labels)} ({', '.join(info.labels[:3])}"
        f"{', ...' if len(info.labels) > 3 else ''}) from {info.labels_source}",
        f"  input:    {info.preprocess.describe()}\n            from {info.preprocessing_source}",
        f"  parity:   PASS, worst {worst['rel_diff']:.2e} ({worst_name}) <= {parity['tolerance']:g}, batch {parity['batch_sizes']} (traced at {parity['trace_batch_size']})",
        f"  startup:  {startup['preoptimized_s']:.2f} s pre-optimised vs {startup['raw_graph_s']:.2f} s raw graph",
    ]
    lines += _variant_lines(result.variants)
    lines.append("  files:")
    for kind, path in result.files.items():
        size = f"{path.stat().st_size / 1e6:8.1f} MB" if path.is_file() else "      dir"
        lines.append(f"    {kind:<12} {size}  {path}")
    return "\n".join(lines)


def _variant_lines(reports: dict[str, dict]) -> list[str]:
    lines = []
    for key, report in reports.items():
        cosine = report["cosine_min"]
        lines.append(
            f"  {key}:     top-1 agreement {report['top1_agreement']:.1%}, top-5 overlap {report['top5_overlap']:.1%}, "
            f"min cosine logits {cosine['logits']:.5f} / stages {min(cosine.values()):.5f} ({report['images']} images, {report['checked_on']})"
        )
        if key == "fp16":
            lines.append(f"            CUDA: {report['cuda']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        result = run_export(options)
    except KeyboardInterrupt:
        print("\nexport: interrupted; no model was written", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure ends in one clear line and a non-zero exit
        print(
            f"\nexport: FAILED: {type(exc).__name__}: {exc}\nNo unverified model file was written.",
            file=sys.stderr,
        )
        return 1
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

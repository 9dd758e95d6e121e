"""`python -m swin_serve.export.verify MODEL`: re-run the checks on an exported artefact.

It rebuilds the PyTorch model from the manifest, loads the same weights (re-created from the
recorded seed for random weights; otherwise from `--checkpoint` or the recorded source, checked
against the recorded SHA-256), and re-runs the parity check on fresh random inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx
import torch

from swin_serve.artifact.contract import Manifest
from swin_serve.artifact.sessions import cpu_session
from swin_serve.model import SwinConfig, SwinTransformer
from swin_serve.model.weights import load_weights

from . import checks, manifest


def rebuild_reference(info: Manifest, checkpoint: str | None) -> SwinTransformer:
    config = SwinConfig(**info.config.model_dump())
    weights = info.weights
    seed = weights.seed or 0
    torch.manual_seed(seed)
    model = SwinTransformer(config).eval()
    source = "random" if weights.random else checkpoint or weights.path or weights.url
    if not source:
        raise checks.CheckFailed(
            "the manifest does not say where its weights came from; pass --checkpoint"
        )
    loaded = load_weights(model, source, variant=info.variant, seed=seed)
    if weights.sha256 and loaded.sha256 != weights.sha256:
        raise checks.CheckFailed(
            f"checkpoint {source} has SHA-256 {loaded.sha256}, the artefact was exported from {weights.sha256}"
        )
    return model


def verify(
    path: Path, checkpoint: str | None = None, batch_sizes=checks.PARITY_BATCH_SIZES
) -> dict:
    proto = onnx.load(str(path))
    info = manifest.read(proto)
    if info.precision != "fp32":
        raise checks.CheckFailed(
            f"{path} is the {info.precision} variant; verify its fp32 model (its agreement figures are in its report)"
        )
    graph_report = None
    if not any(node.domain == "com.microsoft" for node in proto.graph.node):
        checks.check_onnx_model(proto)
        graph_report = checks.check_symbolic_batch(proto, dict(info.outputs))
    model = rebuild_reference(info, checkpoint)
    report = checks.check_parity(cpu_session(path), model, batch_sizes=batch_sizes)
    report["graph"] = (
        graph_report
        or "skipped: ONNX Runtime-optimised graph (checked on the portable graph at export)"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swin_serve.export.verify", description=__doc__)
    parser.add_argument("model", type=Path, help="an .onnx file written by `swin-export`")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="the weights it was exported from, if not where the manifest says",
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"swin_serve.export.verify: {args.model} does not exist", file=sys.stderr)
        return 2
    try:
        report = verify(args.model, args.checkpoint)
    except Exception as exc:
        print(f"swin_serve.export.verify: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    for name, entry in report["outputs"].items():
        print(
            f"  {name:<10} max|diff| {entry['max_abs_diff']:.3e}  relative {entry['rel_diff']:.3e}"
        )
    verdict = "PASS" if report["passed"] else "FAIL"
    print(
        f"{verdict}: batch sizes {report['batch_sizes']}, tolerance {report['tolerance']:g} (seed {report['seed']})"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

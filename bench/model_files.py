"""The models every runtime is benchmarked with: one random-weight export, the same weights everywhere.

``ensure_models`` exports Swin-T (fp32 + int8) into ``artefacts/bench/`` once; the PyTorch model is
rebuilt from the fp32 manifest (``swin_serve.export.verify.rebuild_reference``), so eager PyTorch, ORT fp32,
ORT int8 and the naive peer all compute with identical weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import MODELS_DIR, ROOT, VARIANT, progress
from swin_serve.artifact.contract import Manifest, parse_manifest


@dataclass(frozen=True)
class BenchModels:
    fp32: Path  # ORT-offline-optimised fp32 model (the served artefact)
    int8: Path  # dynamic-int8 variant
    fp32_report: Path
    int8_report: Path

    def manifest(self) -> Manifest:
        return parse_manifest(self.fp32_report.read_text(), source=str(self.fp32_report))

    def int8_agreement(self) -> dict[str, Any]:
        return json.loads(self.int8_report.read_text()).get("agreement", {})


def model_paths(out_dir: Path = MODELS_DIR, variant: str = VARIANT) -> BenchModels:
    return BenchModels(
        fp32=out_dir / f"{variant}.onnx",
        int8=out_dir / f"{variant}.int8.onnx",
        fp32_report=out_dir / f"{variant}.json",
        int8_report=out_dir / f"{variant}.int8.json",
    )


def ensure_models(out_dir: Path = MODELS_DIR, variant: str = VARIANT) -> BenchModels:
    """Export the fp32 and int8 models with random weights unless they are already there."""
    paths = model_paths(out_dir, variant)
    if all(p.is_file() for p in (paths.fp32, paths.int8, paths.fp32_report, paths.int8_report)):
        if _int8_is_current(paths):
            return paths
        progress("the int8 model was quantised with other settings than the exporter's now")
    progress(f"exporting {variant} (random weights, fp32 + int8) to {out_dir} (about a minute)")
    _export(variant, out_dir, "--int8")
    return paths


def _export(variant: str, out_dir: Path, *flags: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "swin_serve.export",
        "--variant",
        variant,
        "--checkpoint",
        "random",
    ]
    subprocess.run([*cmd, "--out", str(out_dir), *flags], check=True, cwd=ROOT)


def _int8_is_current(paths: BenchModels) -> bool:
    from swin_serve.export.variants import Int8Settings

    recorded = json.loads(paths.int8_report.read_text()).get("quantization")
    return recorded == Int8Settings().as_dict()


def load_torch_reference(models: BenchModels):
    """The exact PyTorch model behind the export (same random weights), in eval mode."""
    from swin_serve.export.verify import rebuild_reference

    return rebuild_reference(models.manifest(), None).eval()


def ensure_fp16(models: BenchModels, variant: str = VARIANT) -> Path:
    """The fp16 variant (GPU runs only): re-exports with ``--fp16`` when it is missing."""
    path = models.fp32.with_name(f"{variant}.fp16.onnx")
    if not path.is_file():
        progress(f"exporting the fp16 variant to {path.parent}")
        _export(variant, path.parent, "--int8", "--fp16")
    return path

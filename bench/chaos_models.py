"""The two models of the chaos soak: their exports, labels, digests and golden outputs.

Models A (seed 1, labels ``A0``..``A9``) and B (seed 2, ``B0``..``B9``) are Swin micro exports with
random weights that take turns under one name, ``chaos``; an answer's labels say which model gave
it, and its top-1 against that model's golden logits (ONNX Runtime, same file) that it really is
that model's answer.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.chaos_verdict import UNKNOWN_MODEL
from bench.common import MODELS_DIR, ROOT, progress

NAME = "chaos"  # the one model name of the repository
VARIANT = "swin_micro_patch4_window4_64"
MODEL_SEEDS = {"A": 1, "B": 2}
NUM_CLASSES = 10
CHAOS_MODELS_DIR = MODELS_DIR / "chaos"  # git-ignored, like the bench's other exports
GOLDEN_TOL = 1e-3  # top-1 may be any class within this of the golden maximum (score or logit)


@dataclass
class Model:
    """One export under test: its file, digest, labels and golden outputs per good image."""

    id: str
    path: Path
    digest: str = ""
    labels: frozenset[str] = frozenset()
    golden_logits: dict[str, np.ndarray] = field(default_factory=dict)

    def golden_ok(self, image: str, index: int, value: float, *, softmax: bool) -> bool:
        """Is ``index`` (with ``value``, a softmax score or a raw logit) this model's top-1?"""
        logits = self.golden_logits[image]
        ref = (
            np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            if softmax
            else logits
        )
        return bool(
            0 <= index < len(ref)
            and ref[index] >= ref.max() - GOLDEN_TOL
            and abs(float(ref[index]) - value) <= GOLDEN_TOL * max(1.0, abs(value))
        )


def identify(labels: Sequence[str], models: dict[str, Model]) -> str:
    """The one model whose label set holds every label (UNKNOWN_MODEL if none or several)."""
    ids = [m.id for m in models.values() if labels and all(lb in m.labels for lb in labels)]
    return ids[0] if len(ids) == 1 else UNKNOWN_MODEL


def ensure_chaos_models(out_dir: Path = CHAOS_MODELS_DIR) -> dict[str, Model]:
    """Export models A and B (random weights, different seeds and labels) unless already there."""
    from swin_serve.server.runtime.model_file import content_digest

    models = {}
    for model_id, seed in MODEL_SEEDS.items():
        folder = out_dir / model_id
        path = folder / f"{VARIANT}.onnx"
        labels = [f"{model_id}{i}" for i in range(NUM_CLASSES)]
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "labels.txt").write_text("\n".join(labels) + "\n")
            progress(f"exporting model {model_id} ({VARIANT}, seed {seed}) to {folder}")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "export",
                    "--variant",
                    VARIANT,
                    "--checkpoint",
                    "random",
                    "--seed",
                    str(seed),
                    "--labels",
                    str(folder / "labels.txt"),
                    "--parity-batch-sizes",
                    "1,2",
                    "--out",
                    str(folder),
                ],
                check=True,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
        models[model_id] = Model(model_id, path, content_digest(path), frozenset(labels))
    return models


def compute_goldens(models: dict[str, Model], images: dict[str, bytes]) -> None:
    """Each model's logits for each good image, batch of one, decoded as the server decodes."""
    import onnxruntime as ort

    from swin_serve.artifact.contract import parse_manifest
    from swin_serve.artifact.preprocess import decode_image

    for m in models.values():
        report = m.path.with_suffix(".json")
        spec = parse_manifest(report.read_text(), source=str(report)).preprocess
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(m.path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        for name, data in images.items():
            x = decode_image(data, spec, max_pixels=40_000_000)[None]
            (logits,) = session.run(["logits"], {input_name: x})
            m.golden_logits[name] = logits[0].astype(np.float64)

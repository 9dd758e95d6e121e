"""Where the exported weights come from: official release, a file or URL, or random."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from model import SwinTransformer
from model.checkpoint import load_checkpoint
from model.weights import download_weights, pretrained_url, sha256_file

RANDOM_WARNING = (
    "RANDOM WEIGHTS: this model was exported without trained weights. Its predictions are "
    "meaningless; use it only to try the plumbing."
)
CHOICES = "official, auto, random, a checkpoint path, or an http(s)/file URL"


class WeightsError(RuntimeError):
    pass


def randomize(model: SwinTransformer, seed: int) -> None:
    """Deterministic random weights, with non-trivial biases and norm parameters.

    A fresh init has all-zero biases and all-one norm scales, which would let a conversion bug
    in those tensors go unnoticed, and lets the exporter merge identical constants.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator) * 0.02
            if param.ndim > 1:
                param.copy_(noise.clamp_(-0.04, 0.04))  # truncated normal, as in training init
            elif "norm" in name and name.endswith(".weight"):
                param.copy_(1.0 + noise)  # LayerNorm scales near 1
            else:
                param.copy_(noise)


def resolve_weights(
    model: SwinTransformer,
    checkpoint: str,
    *,
    variant: str,
    seed: int,
    warn: Callable[[str], None],
    trusted: bool = False,
) -> dict[str, Any]:
    """Load `checkpoint` into `model`; returns the manifest's `weights` entry.

    `trusted` allows pickled checkpoints holding Python objects besides tensors (unpickling
    can run code, so only for files you trust).
    """
    if checkpoint == "random":
        randomize(model, seed)
        return {
            "source": "random",
            "random": True,
            "sha256": None,
            "url": None,
            "seed": seed,
            "warning": RANDOM_WARNING,
        }
    if checkpoint in ("official", "auto"):
        try:
            url = pretrained_url(variant, num_classes=model.config.num_classes)
            path = download_weights(url)
        except Exception as exc:
            if checkpoint == "official":
                raise WeightsError(
                    f"could not get the official weights for {variant}: {exc}"
                ) from exc
            warn(
                f"official weights unavailable ({exc}); falling back to random weights.\n{RANDOM_WARNING}"
            )
            return resolve_weights(model, "random", variant=variant, seed=seed, warn=warn)
        return _loaded(model, path, trusted, source="official", url=url)
    if checkpoint.startswith(("http://", "https://", "file://")):
        return _loaded(model, download_weights(checkpoint), trusted, source="url", url=checkpoint)
    path = Path(checkpoint)
    if not path.exists():
        raise WeightsError(f"checkpoint {checkpoint!r} not found; pass {CHOICES}")
    return {**_loaded(model, path, trusted, source="file", url=None), "path": str(path.resolve())}


def _loaded(
    model: SwinTransformer, path: Path, trusted: bool, *, source: str, url: str | None
) -> dict[str, Any]:
    """Load `path` into `model`; the manifest's `weights` entry for trained weights."""
    _load(model, path, trusted)
    return {"source": source, "random": False, "sha256": _sha256_of(path), "url": url, "seed": None}


def _load(model: SwinTransformer, path: Path, trusted: bool) -> None:
    try:
        load_checkpoint(model, path, trusted=trusted)
    except ValueError as exc:
        hint = " (on the command line: --trust-checkpoint)" if "trusted=True" in str(exc) else ""
        raise WeightsError(f"{exc}{hint}") from exc


def _sha256_of(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return sha256_file(path / name)
    raise WeightsError(f"{path} holds neither model.safetensors nor pytorch_model.bin")

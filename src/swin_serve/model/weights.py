"""Turn a weights spec into loaded weights: official release, a file or URL, or random.

`load_weights(model, spec)` is the one place a spec is resolved: it downloads when it must
(model/download.py), loads strictly (model/checkpoint.py), and returns where the weights came
from, for the export's manifest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (
    CONVERTERS,
    DIRECTORY_FILES,
    CheckpointError,
    UntrustedCheckpointError,
    detect_format,
    load_checkpoint,
    read_state_dict,
)
from .download import (
    DownloadError,
    NoReleasedWeights,
    download_weights,
    pretrained_url,
    sha256_file,
)
from .swin import SwinTransformer

CHOICES = "official, auto, random, a checkpoint path, or an http(s)/file URL"
CHOSEN = ("random", "official", "auto")  # specs that name weights to make or fetch, not a file
URL_SCHEMES = ("http://", "https://", "file://")


def is_local(spec: str) -> bool:
    """A path on this machine, not a URL nor one of CHOSEN."""
    return spec not in CHOSEN and not spec.startswith(URL_SCHEMES)


class WeightsError(RuntimeError):
    """The spec names weights that cannot be had or do not fit; the message says which."""


@dataclass(frozen=True)
class WeightsSource:
    """Where loaded weights came from. `seed` rebuilds random ones; `sha256` checks others."""

    source: str  # "official", "url", "file" or "random"
    random: bool
    sha256: str | None = None
    url: str | None = None
    path: str | None = None  # a local file, resolved
    seed: int | None = None


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


def load_weights(
    model: SwinTransformer,
    spec: str,
    *,
    variant: str,
    seed: int = 0,
    trusted: bool = False,
    on_fallback: Callable[[str], None] | None = None,
) -> WeightsSource:
    """Load the weights `spec` names into `model`; raises WeightsError with a way out.

    `spec` is one of CHOICES. "auto" is "official" when the release can be downloaded, else
    random weights, announced through `on_fallback`. `trusted` allows pickled checkpoints that
    hold Python objects besides tensors (unpickling can run code, so only for files you trust).
    """
    if spec == "random":
        randomize(model, seed)
        return WeightsSource(source="random", random=True, seed=seed)
    if spec in ("official", "auto"):
        return _official(
            model, spec, variant=variant, seed=seed, trusted=trusted, on_fallback=on_fallback
        )
    if spec.startswith(URL_SCHEMES):
        path = _download(spec)
        return _from_file(model, path, trusted, source="url", url=spec)
    path = Path(spec)
    if not path.exists():
        raise WeightsError(_not_found(spec))
    return _from_file(model, path, trusted, source="file", local=str(path.resolve()))


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".tar", ".ckpt")


def _not_found(spec: str) -> str:
    message = f"checkpoint {spec!r} not found; pass {CHOICES}"
    hub_like = re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.endswith(CHECKPOINT_SUFFIXES)
    if hub_like:  # "org/name", not a path to a checkpoint file
        folder = spec.rsplit("/", 1)[1]
        message += (
            f". If it is a Hugging Face Hub id, download the folder first (`hf download {spec} "
            f"--local-dir ./{folder}`), then pass --checkpoint ./{folder}/"
        )
    return message


def checkpoint_head_size(spec: str, *, trusted: bool = False) -> int | None:
    """Classes of the checkpoint's own classifier when `spec` is a file, folder or URL (None for
    official, auto and random weights, whose head size is chosen, not read)."""
    if spec in CHOSEN:
        return None
    path = Path(spec) if is_local(spec) else _download(spec)
    if not path.exists():
        raise WeightsError(_not_found(spec))
    try:
        state = read_state_dict(path, trusted=trusted)
        head = CONVERTERS[detect_format(state)](state).get("head.weight")
    except UntrustedCheckpointError as exc:
        raise WeightsError(f"{exc} (on the command line: --trust-checkpoint)") from exc
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from exc
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def _official(model, spec, *, variant, seed, trusted, on_fallback) -> WeightsSource:
    try:
        url = pretrained_url(variant, num_classes=model.config.num_classes)
        path = download_weights(url)
    except (DownloadError, NoReleasedWeights) as exc:
        if spec == "official":
            raise WeightsError(f"could not get the official weights for {variant}: {exc}") from exc
        if on_fallback is not None:
            on_fallback(f"official weights unavailable ({exc}); falling back to RANDOM WEIGHTS")
        return load_weights(model, "random", variant=variant, seed=seed)
    return _from_file(model, path, trusted, source="official", url=url)


def _download(url: str) -> Path:
    try:
        return download_weights(url)
    except DownloadError as exc:
        raise WeightsError(str(exc)) from exc


def _from_file(
    model: SwinTransformer,
    path: Path,
    trusted: bool,
    *,
    source: str,
    url: str | None = None,
    local: str | None = None,
) -> WeightsSource:
    try:
        load_checkpoint(model, path, trusted=trusted)
    except UntrustedCheckpointError as exc:
        raise WeightsError(f"{exc} (on the command line: --trust-checkpoint)") from exc
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from exc
    return WeightsSource(source, random=False, sha256=_sha256_of(path), url=url, path=local)


def _sha256_of(path: Path) -> str:
    """The checkpoint file's digest; for a HuggingFace folder, the digest of the file read."""
    if path.is_file():
        return sha256_file(path)
    for name in DIRECTORY_FILES:
        if (path / name).is_file():
            return sha256_file(path / name)
    raise WeightsError(f"{path} holds none of {', '.join(DIRECTORY_FILES)}")

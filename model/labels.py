"""Class names shipped with the package (model/data/README.md says where they come from)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

IMAGENET_1K, IMAGENET_22K = 1000, 21841


@cache
def _shipped(name: str) -> tuple[str, ...]:
    text = files(__package__).joinpath(f"data/{name}").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    return _shipped("imagenet1k_labels.txt")


def imagenet22k_labels() -> tuple[str, ...]:
    """The 21841 ImageNet-22k class names, in the order of the official Swin 22k heads."""
    return _shipped("imagenet22k_labels.txt")


def class_labels(num_classes: int) -> tuple[str, ...]:
    """Names for a head of `num_classes` outputs when nothing better is known.

    ImageNet-1k and ImageNet-22k heads get the real names; any other head gets `class_<i>`:
    give its names to the export (`--labels`, or a HuggingFace `config.json`).
    """
    if num_classes == IMAGENET_1K:
        return imagenet_labels()
    if num_classes == IMAGENET_22K:
        return imagenet22k_labels()
    return tuple(f"class_{i}" for i in range(num_classes))

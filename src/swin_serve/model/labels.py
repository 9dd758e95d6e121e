"""Class names shipped with the package (model/data/README.md says where they come from)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

IMAGENET_1K, IMAGENET_22K = 1000, 21841


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    text = files(__package__).joinpath("data/imagenet1k_labels.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def class_labels(num_classes: int) -> tuple[str, ...]:
    """Names for a head of `num_classes` outputs when nothing better is known.

    ImageNet-1k heads get the real names; any other head, ImageNet-22k included (data/README.md
    says why), gets `class_<i>`: give its names to the export (`--labels`, or a HuggingFace
    `config.json`).
    """
    if num_classes == IMAGENET_1K:
        return imagenet_labels()
    return tuple(f"class_{i}" for i in range(num_classes))

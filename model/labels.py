"""Class names shipped with the package."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in class-index order."""
    text = files(__package__).joinpath("data/imagenet1k_labels.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def class_labels(num_classes: int) -> tuple[str, ...]:
    """Names for a head of `num_classes` outputs.

    ImageNet-1k heads get the real names. No other label set ships with the package (the
    ImageNet-22k synset names are not redistributed here), so other heads get `class_<i>`.
    """
    if num_classes == 1000:
        return imagenet_labels()
    return tuple(f"class_{i}" for i in range(num_classes))

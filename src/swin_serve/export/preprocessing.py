"""Which input transform an export records, and where it came from.

In this order:
1. export flags (`--resize`, `--crop-pct`, `--interpolation`, `--mean`, `--std`), each over
   the source below it;
2. the checkpoint's own: transformers' `preprocessor_config.json` beside the weights, else
   timm's `pretrained_cfg` in a hub-style `config.json` beside them;
3. the official evaluation of that input size: at 224 (and any size below 384) the shorter side
   to `int(256 / 224 * S)`, then a centre crop (`TEST.CROP: True`); at 384 and above a
   squash to S x S (`TEST.CROP: False` in every official `*_384` config). Bicubic, ImageNet
   mean and std.

The transform must make inputs of the model's own size; any other is refused, as is a field
that cannot be reproduced exactly (export/transform_configs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from swin_serve.artifact.contract import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from swin_serve.model.weights import is_local

from .transform_configs import (
    HF_FILE,
    TransformConfigError,
    beside_checkpoint,
    huggingface_transform,
    read_json,
    timm_transform,
)

SQUASH_FROM = 384  # the official code evaluates its 384 checkpoints uncropped


@dataclass(frozen=True)
class TransformFlags:
    """What the command line said of the transform; None: not said."""

    resize: str | None = None  # "crop" or "squash"
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def given(self) -> list[str]:
        names = ("resize", "crop_pct", "interpolation", "mean", "std")
        return ["--" + n.replace("_", "-") for n in names if getattr(self, n) is not None]


@dataclass(frozen=True)
class Transform:
    spec: PreprocessSpec
    source: str  # for the manifest's preprocessing_source and the export summary


def official_fields(size: int) -> dict[str, Any]:
    """The official evaluation transform (`data/build.py: build_transform`) at input size S."""
    common = {"interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if size >= SQUASH_FROM:
        return {**_squash(size, 1.0), **common}
    return {**_crop(size, CROP_PCT, int((256 / 224) * size)), **common}


def decide_transform(checkpoint: str, size: int, flags: TransformFlags) -> Transform:
    """The transform for a model of input side `size` loaded from `checkpoint`; raises
    TransformConfigError when the checkpoint's own transform cannot be served exactly."""
    fields, source = _checkpoint_fields(checkpoint, size)
    if flags.given():
        fields = _apply_flags(fields, size, flags)
        source = f"export flags ({', '.join(flags.given())}) over {source}"
    if fields["crop_size"] != size:
        raise TransformConfigError(
            f"{source} makes {fields['crop_size']}x{fields['crop_size']} inputs, but the model "
            f"takes {size}x{size}: export with --img-size {fields['crop_size']}, or state the "
            "transform with --resize and --crop-pct"
        )
    base = {"color": "RGB", "layout": "NCHW", "scale": 255.0}
    return Transform(PreprocessSpec.model_validate({**base, **fields}), source)


def _checkpoint_fields(checkpoint: str, size: int) -> tuple[dict[str, Any], str]:
    if is_local(checkpoint):
        processor = beside_checkpoint(checkpoint, HF_FILE)
        if processor is not None:
            data = read_json(processor)
            fields = huggingface_transform(data, str(processor))
            return fields, f"the checkpoint's {HF_FILE} (transformers){_fast_note(data)}"
        config = beside_checkpoint(checkpoint, "config.json")
        timm_cfg = read_json(config).get("pretrained_cfg") if config is not None else None
        if isinstance(timm_cfg, dict):
            fields = timm_transform(timm_cfg, f"{config}: pretrained_cfg")
            return fields, "the checkpoint's config.json pretrained_cfg (timm)"
    rule = "no crop" if size >= SQUASH_FROM else f"crop_pct {CROP_PCT}"
    return official_fields(size), f"the official evaluation at {size}px ({rule})"


def _fast_note(data: dict[str, Any]) -> str:
    kind = data.get("image_processor_type")
    if isinstance(kind, str) and kind.endswith("Fast"):
        return f"; saved by {kind}, whose torchvision backend differs by a few grey levels"
    return ""


def _apply_flags(fields: dict[str, Any], size: int, flags: TransformFlags) -> dict[str, Any]:
    fields = dict(fields)
    if flags.resize is not None or flags.crop_pct is not None:
        mode = flags.resize or fields["resize_mode"]
        pct = flags.crop_pct or (CROP_PCT if mode == "crop" else 1.0)
        geometry = _crop(size, pct) if mode == "crop" else _squash(size, pct)
        # The source's own crop arithmetic (transformers floors the offset) is kept.
        fields.update(geometry, crop_offset=fields["crop_offset"])
    for name in ("interpolation", "mean", "std"):
        if getattr(flags, name) is not None:
            fields[name] = getattr(flags, name)
    return fields


def _crop(size: int, crop_pct: float, resize: int | None = None) -> dict[str, Any]:
    """The shorter side to `resize` (by default timm's floor(S / crop_pct)), a centre crop S."""
    resize = math.floor(size / crop_pct) if resize is None else resize
    return {
        "resize_mode": "crop",
        "resize_shorter": resize,
        "crop_size": size,
        "crop_pct": crop_pct,
        "crop_offset": "round",
    }


def _squash(size: int, crop_pct: float) -> dict[str, Any]:
    return {**_crop(size, crop_pct), "resize_mode": "squash"}


def parse_triple(text: str, imagenet: tuple[float, float, float]) -> tuple[float, float, float]:
    """`--mean 0.5,0.5,0.5` -> three floats; the word `imagenet` -> ``imagenet``."""
    if text == "imagenet":
        return imagenet
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(
            f"expected three comma-separated numbers (R,G,B) or imagenet, got {text!r}"
        )
    r, g, b = (float(p) for p in parts)
    if not all(math.isfinite(v) for v in (r, g, b)):
        raise ValueError(f"expected finite numbers, got {text!r}")
    return (r, g, b)


def transform_summary(transform: Transform) -> str:
    return f"{transform.spec.describe()}; from {transform.source}"


__all__ = [
    "Transform",
    "TransformConfigError",
    "TransformFlags",
    "decide_transform",
    "official_fields",
    "parse_triple",
]

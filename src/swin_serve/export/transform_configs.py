"""The input transform a checkpoint declares: HuggingFace's `preprocessor_config.json` or timm's
`pretrained_cfg`, read into the fields of `swin_serve.artifact.contract.PreprocessSpec`.

Each reader reproduces its framework's evaluation arithmetic exactly, or refuses: a field that
would change the pixels in a way the server does not reproduce stops the export with a message
that names the field. Nothing is approximated.

- transformers (`ViTImageProcessor`, what `AutoImageProcessor` gives a Swin): resize to
  `size` (`{height, width}`, or `{shortest_edge}` then `center_crop` to `crop_size`, whose
  offset is `(size - crop) // 2`), `* rescale_factor`, `(x - image_mean) / image_std`.
- timm (`resolve_data_config` + `transforms_imagenet_eval`): `scale = floor(S / crop_pct)`;
  `crop_mode` "center" resizes the shorter side to it, "squash" both sides; then
  torchvision's `CenterCrop(S)` (offset `round((size - crop) / 2)`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from swin_serve.artifact.contract import IMAGENET_MEAN, IMAGENET_STD
from swin_serve.model.checkpoint import DIRECTORY_FILES

HF_FILE = "preprocessor_config.json"
TIMM_DEFAULT_CROP_PCT = 0.875  # timm.data.constants.DEFAULT_CROP_PCT

# PIL's resampling codes, which transformers stores as `resample`.
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

# `ViTImageProcessor`'s defaults: what a field left out of the file means. Another processor
# class has other defaults, so for it every field the transform needs must be written out.
_VIT_TYPES = {"ViTImageProcessor", "ViTImageProcessorPil", "ViTImageProcessorFast"}
_VIT_DEFAULTS: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "default_to_square": True,
    "resample": 2,
    "do_center_crop": False,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
# Keys that name or route the processor, or that every path here does anyway (RGB conversion).
_HF_HARMLESS = {
    "image_processor_type",
    "feature_extractor_type",
    "processor_class",
    "_processor_class",
    "do_convert_rgb",
    "default_to_square",
    "data_format",
    "input_data_format",
    "return_tensors",
    "device",
    "disable_grouping",
    "crop_size",
}


class TransformConfigError(ValueError):
    """A checkpoint's transform that cannot be read, or cannot be reproduced exactly."""


def beside_checkpoint(checkpoint: str, filename: str) -> Path | None:
    """`filename` in a checkpoint folder, or beside its `model.safetensors` / `pytorch_model.bin`
    (the layouts transformers and timm's hub save)."""
    path = Path(checkpoint)
    if path.is_dir():
        found = path / filename
    elif path.name in DIRECTORY_FILES:
        found = path.parent / filename
    else:
        return None
    return found if found.is_file() else None


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise TransformConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise TransformConfigError(f"{path}: expected a JSON object")
    return data


def huggingface_transform(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A `preprocessor_config.json` -> PreprocessSpec fields, or TransformConfigError."""
    kind = data.get("image_processor_type") or data.get("feature_extractor_type")
    vit = kind is None or kind in _VIT_TYPES or kind == "ViTFeatureExtractor"
    _refuse_unknown_hf_keys(data, where)

    def field(name: str) -> Any:
        if name in data and data[name] is not None:
            return data[name]
        if vit:
            return _VIT_DEFAULTS[name]
        raise TransformConfigError(
            f"{where}: field {name!r} is not set, and {kind}'s default is not known here; "
            "write it into the file, or state the transform with --resize, --crop-pct, "
            "--interpolation, --mean and --std"
        )

    if not field("do_resize"):
        raise TransformConfigError(
            f"{where}: field 'do_resize' is false: images would reach the model at their own "
            "size, which a fixed-size model cannot take"
        )
    size = field("size")
    if isinstance(size, int) and not isinstance(size, bool):
        # The feature extractors' form: a square, or (CLIP and others) the shorter side.
        size = (
            {"height": size, "width": size}
            if field("default_to_square")
            else {"shortest_edge": size}
        )
    crop = _hf_crop(field("do_center_crop"), data.get("crop_size"), where)
    fields = _hf_geometry(size, crop, where)
    fields["interpolation"] = _pil_filter(field("resample"), where)
    fields["scale"] = _hf_scale(field("do_rescale"), field("rescale_factor"), where)
    if field("do_normalize"):
        fields["mean"] = _triple(field("image_mean"), "image_mean", where)
        fields["std"] = _triple(field("image_std"), "image_std", where)
    else:
        fields["mean"], fields["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return fields


def _refuse_unknown_hf_keys(data: dict[str, Any], where: str) -> None:
    known = _HF_HARMLESS | set(_VIT_DEFAULTS)
    for key, value in data.items():
        if key == "auto_map":
            raise TransformConfigError(
                f"{where}: field 'auto_map' names custom processor code, which is not run here"
            )
        if key not in known and value not in (None, False, [], {}):
            raise TransformConfigError(
                f"{where}: field {key!r} ({value!r}) changes the pixels in a way this exporter "
                "does not reproduce; state the transform with --resize, --crop-pct, "
                "--interpolation, --mean and --std instead"
            )


def _hf_geometry(size: Any, crop: int | None, where: str) -> dict[str, Any]:
    """`size` (and the centre crop, if any) -> resize_mode, resize_shorter, crop_size."""
    if not isinstance(size, dict):
        raise TransformConfigError(f"{where}: field 'size' ({size!r}) is not understood")
    keys = {k for k, v in size.items() if v is not None}
    if keys == {"height", "width"}:
        if size["height"] != size["width"]:
            raise TransformConfigError(
                f"{where}: field 'size' {size} is not square; Swin takes square inputs"
            )
        side = _positive_int(size["height"], "size", where)
        return _geometry("squash", side, crop if crop is not None else side, where)
    if keys == {"shortest_edge"} and crop is not None:
        return _geometry("crop", _positive_int(size["shortest_edge"], "size", where), crop, where)
    if keys == {"shortest_edge"}:
        raise TransformConfigError(
            f"{where}: field 'size' {size} without 'do_center_crop' keeps each image's aspect, so "
            "inputs would not be square"
        )
    raise TransformConfigError(f"{where}: field 'size' {size} is not reproduced here")


def _hf_crop(do_center_crop: Any, crop: Any, where: str) -> int | None:
    if not do_center_crop:
        return None
    if isinstance(crop, dict) and crop.get("height") == crop.get("width") is not None:
        crop = crop["height"]
    if isinstance(crop, int) and not isinstance(crop, bool) and crop > 0:
        return crop
    raise TransformConfigError(f"{where}: field 'crop_size' ({crop!r}) is not a square size")


def _positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise TransformConfigError(f"{where}: field {name!r} ({value!r}) is not a positive integer")


def _geometry(mode: str, resize: int, crop: int, where: str) -> dict[str, Any]:
    if resize < crop:
        raise TransformConfigError(
            f"{where}: resizing to {resize} then cropping {crop} would pad the image, which is "
            "not reproduced here"
        )
    return {
        "resize_mode": mode,
        "resize_shorter": resize,
        "crop_size": crop,
        "crop_pct": crop / resize,
        "crop_offset": "floor",
    }


def _pil_filter(resample: Any, where: str) -> str:
    if isinstance(resample, int) and resample in PIL_FILTERS:
        return PIL_FILTERS[resample]
    raise TransformConfigError(
        f"{where}: field 'resample' ({resample!r}) is not one of PIL's filters 0-5"
    )


def _hf_scale(do_rescale: Any, factor: Any, where: str) -> float:
    if not do_rescale:
        return 1.0
    if not _finite(factor) or factor <= 0:
        raise TransformConfigError(f"{where}: field 'rescale_factor' ({factor!r}) is not positive")
    return 1.0 / float(factor)


def _triple(value: Any, name: str, where: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        value = [value] * 3
    if not (isinstance(value, list) and len(value) == 3):
        raise TransformConfigError(f"{where}: field {name!r} ({value!r}) is not 3 numbers (RGB)")
    if not all(_finite(v) for v in value):
        raise TransformConfigError(f"{where}: field {name!r} ({value!r}) is not 3 numbers (RGB)")
    if name in ("image_std", "std") and min(value) <= 0:
        raise TransformConfigError(f"{where}: field {name!r} ({value!r}) is not positive")
    return (float(value[0]), float(value[1]), float(value[2]))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def timm_transform(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """A timm `pretrained_cfg` -> PreprocessSpec fields, or TransformConfigError."""
    size = cfg.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and size[1] == size[2]):
        raise TransformConfigError(
            f"{where}: field 'input_size' ({size!r}) is not [3, S, S] (Swin takes square inputs)"
        )
    side = _positive_int(size[1], "input_size", where)
    crop_pct = cfg.get("crop_pct")
    crop_pct = TIMM_DEFAULT_CROP_PCT if crop_pct is None else crop_pct
    if not (_finite(crop_pct) and 0 < crop_pct <= 1):
        raise TransformConfigError(f"{where}: field 'crop_pct' ({crop_pct!r}) is not in (0, 1]")
    mode = cfg.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise TransformConfigError(
            f"{where}: field 'crop_mode' ({mode!r}) is not reproduced here (center and squash are)"
        )
    interpolation = cfg.get("interpolation") or "bicubic"  # resolve_data_config's default
    if interpolation not in PIL_FILTERS.values():
        raise TransformConfigError(
            f"{where}: field 'interpolation' ({interpolation!r}) is not reproduced here"
        )
    return {
        "resize_mode": "crop" if mode == "center" else "squash",
        "resize_shorter": math.floor(side / crop_pct),
        "crop_size": side,
        "crop_pct": float(crop_pct),
        "crop_offset": "round",
        "interpolation": interpolation,
        "mean": _triple(cfg.get("mean", list(IMAGENET_MEAN)), "mean", where),
        "std": _triple(cfg.get("std", list(IMAGENET_STD)), "std", where),
        "scale": 255.0,
    }

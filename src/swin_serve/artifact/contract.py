"""The contract between the exporter and the server: names, metadata keys and the manifest schema.

The exporter builds a `Manifest` and stores it as JSON under `MANIFEST_KEY` in the ONNX file's
metadata; the server reads it back through the same model. The server needs nothing but the
.onnx: labels, preprocessing and output shapes all come from here. docs/CONTRACTS.md has an
example. This module imports neither torch nor onnx, so both sides can use it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_KEY = "swin.manifest"
GOLDEN_KEY = "swin.golden"  # the golden answers of the start-up self-check (artifact/golden.py)
# 2: a transform that a version-1 server would misread (it knows neither resize_mode nor
# crop_offset nor the box and hamming filters). An export that needs none of them still writes 1,
# so older servers keep reading it; one that does writes 2, which they refuse rather than serve
# with the wrong transform.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)

INPUT_NAME = "pixel_values"
# ``stage1..stage4`` are (C_i, H_i, W_i) maps, ``embedding`` the pooled (C_4,) vector.
FEATURE_NAMES = ("stage1", "stage2", "stage3", "stage4", "embedding")
OUTPUT_NAMES = ("logits", "embedding", "stage1", "stage2", "stage3", "stage4")  # graph order
FeatureName = Literal[FEATURE_NAMES]  # type: ignore[valid-type]  # one spelling of the names

# The official evaluation of the 224 checkpoints (TEST.CROP: True): resize the shorter side to
# int(size / 0.875), then centre-crop. Its 384 checkpoints are evaluated uncropped (a squash).
CROP_PCT = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_weights_warning(variant: str, *, official: bool = True) -> str:
    """What every answer about a model with random weights says, with the command that exports
    ``variant`` with real ones: the official release's, where ``official`` weights exist."""
    head = "This model has RANDOM weights: its predictions are meaningless. Export it with real "
    if official:
        return head + (
            f"weights for real use: `swin-export --variant {variant} --checkpoint official` "
            "(or `--checkpoint PATH` for your own)."
        )
    return head + (
        f"weights for real use: `swin-export --variant {variant} --checkpoint PATH` with your "
        "own (no official weights exist for it)."
    )


def served_warning(manifest: Manifest) -> str | None:
    """What the server says of a model: its exporter's words where they name a command of this
    release (the exporter knew whether official weights exist), else the official one's."""
    weights = manifest.weights
    if not weights.random:
        return None
    if weights.warning and "`swin-export --variant" in weights.warning:
        return weights.warning
    return random_weights_warning(manifest.variant)


class ManifestError(ValueError):
    """The model file carries no manifest, or one this service cannot use."""


class _Part(BaseModel):
    # Unknown keys are kept (extra="allow") so a newer exporter does not break an older server.
    model_config = ConfigDict(extra="allow", frozen=True)


class ModelConfig(_Part):
    embed_dim: int = Field(gt=0)
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = Field(gt=0)
    img_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    in_chans: int = 3
    num_classes: int = Field(gt=0)
    mlp_ratio: float = 4.0


class InputSpec(_Part):
    name: str
    dtype: Literal["float32", "float16"] = "float32"
    shape: tuple[int | str, ...]


class PreprocessSpec(_Part):
    """The whole input transform; artifact/preprocess.py implements it, docs/export.md explains it.

    - ``resize_mode`` "crop": the shorter side to ``resize_shorter`` (aspect kept, the longer side
      truncated), then a centre crop of ``crop_size`` (torchvision's and timm's eval, the official
      224 evaluation, HF's ``shortest_edge`` + ``center_crop``).
    - ``resize_mode`` "squash": both sides to ``resize_shorter`` (aspect not kept), then a centre
      crop of ``crop_size``, a no-op when the two are equal (HF's ``{height, width}``, the official
      384 evaluation, timm's ``crop_mode="squash"``).
    - ``crop_offset``: where a centre crop starts, "round" ``round((size - crop) / 2)`` as
      torchvision, or "floor" ``(size - crop) // 2`` as transformers' ``center_crop``.
    - Then ``x / scale``, ``(x - mean) / std``, HWC -> CHW.

    Manifests written before ``resize_mode`` existed describe the crop mode, and read as it.
    """

    resize_shorter: int = Field(gt=0)
    crop_size: int = Field(gt=0)
    crop_pct: float = Field(gt=0.0, le=1.0)
    resize_mode: Literal["crop", "squash"] = "crop"
    crop_offset: Literal["round", "floor"] = "round"
    interpolation: Literal["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"] = (
        "bicubic"
    )
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    color: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    scale: float = Field(255.0, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> PreprocessSpec:
        if self.resize_shorter < self.crop_size:
            raise ValueError("resize_shorter must be >= crop_size")
        numbers = (*self.mean, *self.std, self.scale, self.crop_pct)
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError("mean, std, scale and crop_pct must be finite numbers")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self

    def is_version_1(self) -> bool:
        """What a version-1 manifest could state: the shorter side, torchvision's crop offsets,
        and the four filters it knew."""
        return not self.beyond_version_1()

    def beyond_version_1(self) -> list[str]:
        """The fields, as ``name=value``, that a version-1 manifest could not state."""
        beyond = []
        if self.resize_mode != "crop":
            beyond.append(f"resize_mode={self.resize_mode}")
        if self.crop_offset != "round":
            beyond.append(f"crop_offset={self.crop_offset}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest", "lanczos"):
            beyond.append(f"interpolation={self.interpolation}")
        return beyond

    def describe(self) -> str:
        """One line for people: what happens to an image before the model sees it."""
        r, s = self.resize_shorter, self.crop_size
        if self.resize_mode == "squash":
            steps = f"resize to {r}x{r} (aspect not kept)"
            steps += f", centre crop {s}" if r != s else ""
        else:
            steps = f"resize shorter side to {r}, centre crop {s}"
        mean = ", ".join(f"{v:g}" for v in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return f"{steps} ({self.interpolation}), /{self.scale:g}, mean ({mean}), std ({std})"


class WeightsInfo(BaseModel):
    """Where the weights came from: what /v1/models shows (the exporter records more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source: str = Field(description="official, url, file or random")
    random: bool
    sha256: str | None = None
    url: str | None = None


class WeightsRecord(WeightsInfo):
    """What the exporter records besides, so that `python -m swin_serve.export.verify` can
    reload them."""

    model_config = ConfigDict(extra="allow", frozen=True)

    seed: int | None = None  # random weights are rebuilt from it
    path: str | None = None  # a local checkpoint file, as given to the exporter
    warning: str | None = None  # random_weights_warning() when the weights are random


class Manifest(_Part):
    """Typed view of the manifest; see docs/CONTRACTS.md for an example."""

    format_version: int
    name: str
    variant: str
    precision: str = "fp32"
    config: ModelConfig
    input: InputSpec
    outputs: dict[str, tuple[int | str, ...]]
    preprocess: PreprocessSpec
    labels: tuple[str, ...]
    labels_source: str | None = None  # where the exporter found the names
    preprocessing_source: str | None = None  # where the exporter found the transform
    weights: WeightsRecord
    exporter: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None
    # The exporter's reports, shown to operators as they are; the server decides nothing on them.
    parity: dict[str, Any] | None = None
    golden: dict[str, Any] | None = None
    optimization: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None  # a variant against the fp32 model
    quantization: dict[str, Any] | None = None  # int8 only

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.format_version not in READ_VERSIONS:
            raise ValueError(
                f"unsupported format_version {self.format_version} "
                f"(this server reads {', '.join(map(str, READ_VERSIONS))})"
            )
        if self.format_version < FORMAT_VERSION and not self.preprocess.is_version_1():
            fields = ", ".join(self.preprocess.beyond_version_1())
            raise ValueError(f"a format_version 1 manifest cannot state preprocess {fields}")
        if len(self.labels) != self.config.num_classes:
            raise ValueError(f"{len(self.labels)} labels for num_classes={self.config.num_classes}")
        missing = set(OUTPUT_NAMES) - set(self.outputs)
        if missing:
            raise ValueError(f"outputs lack {sorted(missing)}")
        if self.preprocess.crop_size != self.config.img_size:
            raise ValueError("preprocess.crop_size differs from config.img_size")
        return self

    @property
    def image_size(self) -> int:
        return self.preprocess.crop_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def feature_shape(self, name: str) -> tuple[int, ...]:
        """Per-image shape of an output, without the batch axis: (C,) or (C, H, W)."""
        return tuple(int(d) for d in self.outputs[name][1:])


def parse_manifest(text: str | bytes, *, source: str = "model") -> Manifest:
    """Parse and validate the manifest JSON; raises ManifestError naming ``source``."""
    try:
        return Manifest.model_validate(json.loads(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{source}: {MANIFEST_KEY} is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise ManifestError(f"{source}: invalid {MANIFEST_KEY}: {exc}") from exc


def manifest_from_metadata(custom_metadata: dict[str, str], *, source: str = "model") -> Manifest:
    """Read the manifest from ONNX ``metadata_props`` (``session.get_modelmeta().custom_metadata_map``)."""
    text = custom_metadata.get(MANIFEST_KEY)
    if text is None:
        raise ManifestError(
            f"{source} has no '{MANIFEST_KEY}' metadata: was it written by `swin-export`? "
            f"(metadata keys present: {sorted(custom_metadata) or 'none'})"
        )
    return parse_manifest(text, source=source)

"""The golden preprocessing check: one stored image, decoded and transformed at every start.

The exporter stores a small PNG (``golden_image``) and the float32 tensor that the artefact's
transform made of it on the exporting machine. The server decodes and transforms the same bytes
before it is ready and compares. A Pillow whose resampling differs from the exporter's, or a
transform that no longer does what the manifest states, then stops start-up, naming
preprocessing, instead of serving slightly wrong inputs that nobody would notice.

The comparison is in 8-bit grey levels, ``|dx| * std * scale``, the unit Pillow resamples in.
Pillow resamples 8-bit images in fixed-point integer arithmetic, so one Pillow release gives the
same pixels on every CPU; what remains is float rounding in the normalisation, far below a level.
So any value off by half a level or more means a pixel changed (docs/selfcheck.md).

PNG, not JPEG: PNG decoding is lossless, so the check sees the resampling and the arithmetic, not
the JPEG decoder's own rounding.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from swin_serve.artifact.contract import PreprocessSpec
from swin_serve.artifact.preprocess import ImageRejected, decode_image, resize_plan

MAX_LEVELS = 0.5  # largest difference, in 8-bit grey levels, still taken as float rounding
_MAX_PIXELS = 1 << 24  # the golden image is about 1.9 S^2 pixels: room for S up to 2900


@dataclass(frozen=True)
class PreprocessCheck:
    status: str  # "passed", "failed" or "skipped"
    max_levels: float | None = None  # worst difference, in 8-bit grey levels
    changed_values: int | None = None  # values off by MAX_LEVELS or more
    bound_levels: float = MAX_LEVELS
    image: str | None = None  # "PNG WxH"
    pillow: str | None = None  # the exporter's Pillow, against this one
    pillow_here: str = Image.__version__
    took_ms: float = 0.0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failure(self) -> str:
        if self.max_levels is None:
            return f"preprocessing: {self.reason}"
        return (
            f"preprocessing: the stored {self.image} image gives pixels up to "
            f"{self.max_levels:.3g} grey levels away from the exporter's ({self.changed_values} "
            f"values off by {self.bound_levels:g} or more). Pillow {self.pillow_here} here, "
            f"{self.pillow} at export: this Pillow resamples differently, or the transform does "
            "not do what the manifest states. Serve with the exporter's Pillow (the lock's), or "
            "re-export on this one"
        )


def golden_size(spec: PreprocessSpec) -> tuple[int, int]:
    """A non-square size a little larger than the input side, so that both a crop and a squash
    downsample it; in crop mode its width makes ``size - crop`` 3 modulo 4, where the two crop
    offset rules (round halves to even, floor) pick different columns."""
    size = spec.crop_size
    width, height = size * 3 // 2 + 7, size * 5 // 4 + 3
    for candidate in range(width, width + 16):
        new_w, _, _, _ = resize_plan(candidate, height, spec)
        if (new_w - size) % 4 == 3:
            return candidate, height
    return width, height


def golden_image(spec: PreprocessSpec) -> bytes:
    """A deterministic RGB PNG of ``golden_size``: gradients, hard edges (which every filter
    treats differently) and mild noise."""
    size = spec.crop_size
    width, height = golden_size(spec)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack(
        [255 * xx / width, 255 * yy / height, 128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)],
        axis=-1,
    )  # H, W, 3
    rgb[height // 5 : height // 2, width // 6 : width // 3] = (250, 20, 30)
    disk = (xx - width * 0.7) ** 2 + (yy - height * 0.6) ** 2 < (size / 5) ** 2
    rgb[disk] = (10, 200, 240)
    rgb += np.random.RandomState(0).randint(-6, 7, size=rgb.shape)
    pixels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def transform(image: bytes, spec: PreprocessSpec) -> np.ndarray:
    """What the server makes of ``image``: float32 (3, S, S)."""
    return decode_image(image, spec, max_pixels=_MAX_PIXELS)


def check_preprocessing(
    image: bytes | None, expected: np.ndarray | None, spec: PreprocessSpec, pillow: str | None
) -> PreprocessCheck:
    if image is None or expected is None:
        reason = "the artefact stores no golden image: re-export it to enable the check"
        return PreprocessCheck("skipped", reason=reason)
    started = time.perf_counter()
    try:
        got = transform(image, spec)
    except ImageRejected as exc:
        return PreprocessCheck("failed", reason=f"the golden image is refused: {exc.message}")
    took_ms = round((time.perf_counter() - started) * 1e3, 1)
    levels = level_differences(got, expected, spec)
    with Image.open(io.BytesIO(image)) as im:
        described = f"{im.format} {im.width}x{im.height}"
    worst = float(levels.max()) if levels.size else float("inf")
    changed = int((levels >= MAX_LEVELS).sum()) if levels.size else -1
    passed = got.shape == expected.shape and worst < MAX_LEVELS
    return PreprocessCheck(
        "passed" if passed else "failed",
        worst,
        changed,
        image=described,
        pillow=pillow,
        took_ms=took_ms,
    )


def level_differences(got: np.ndarray, expected: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """|got - expected| in 8-bit grey levels, per value; empty when the shapes differ."""
    if got.shape != expected.shape:
        return np.empty(0)
    unit = np.asarray(spec.std, dtype=np.float64).reshape(3, 1, 1) * spec.scale
    return np.abs(got.astype(np.float64) - expected.astype(np.float64)) * unit

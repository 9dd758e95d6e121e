"""Image bytes -> model input, by the transform the model's manifest states (``PreprocessSpec``):

    resize (the shorter side, or both sides: ``resize_mode``) to ``resize_shorter`` with the
    manifest's filter, centre crop ``crop_size``, divide by ``scale``, normalise, HWC -> CHW.

Each step is the same Pillow or NumPy call that torchvision, timm and transformers' PIL image
processors make, so the tensor equals theirs (tests/artifact/test_preprocess_frameworks.py).
Runs in a worker thread, never on the event loop.
Bad input raises ImageRejected (the server answers it 400, 413 or 415); nothing here can
produce a 5xx for any byte string.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from swin_serve.artifact.contract import PreprocessSpec
from swin_serve.artifact.jpeg_scans import DEFAULT_MAX_SCANS, SCAN_PASSES, count_scans

# The formats whose Pillow decoders we expose. Pillow otherwise picks a parser by magic bytes from
# ~40 plugins, including EPS (runs Ghostscript). BMP is served: RGB BMP is common from Windows
# tools and the plugin only maps raw or RLE pixel data. (Camera JPEGs with extra preview images open
# through the JPEG factory as format "MPO"; we only ever use their first frame.)
ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# Magic numbers of image formats we recognise but refuse (415 rather than "not an image", 400).
_REFUSED_MAGIC: Final = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"SIMPLE  =", "FITS"),
    (b"\x0a", "PCX"),
    (b"<?xml", "SVG/XML"),
    (b"<svg", "SVG"),
)
_FTYP_BRANDS: Final = {
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"mif1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}

# Every exception type Pillow's parsers are known to raise on hostile input. All are the client's
# fault (400), except the size ones (413) which are handled before this tuple is consulted.
_DECODE_ERRORS: Final = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    EOFError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    Image.DecompressionBombError,
)

# Resize via a box (only the pixels that survive the crop) once the full resize would exceed this
# many times the crop area: a 10000x10 strip would otherwise resize to a ~200-megapixel image.
# Pillow computes a box's sample positions with different rounding, so a few values move by a
# grey level or more (nearest: many): only strips past about 64:1 pay that, never a photo.
_BOX_RESIZE_FACTOR: Final = 64

_RESAMPLING: Final = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


# The codes of the server's error table (server/errors.py) that a refused image is answered with.
INVALID_IMAGE = "invalid_image"
IMAGE_TOO_LARGE = "image_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"


class ImageRejected(ValueError):
    """An image the transform will not take. ``code`` names the server's answer to it: one of
    the three codes above."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def configure_pillow(max_pixels: int | None = None) -> None:
    """Process-wide Pillow policy: a DecompressionBombWarning is an error, never just a log line.

    Pillow checks its own limit inside ``Image.open``, before our cap (SWIN_MAX_IMAGE_PIXELS) can
    look at ``im.size``; ``max_pixels`` raises Pillow's limit to at least ours, so that whenever
    Pillow's check fires the image is over our cap too, and the 413 can name our setting.
    (Raised only, never lowered: other code in the process may open large images.) Installed
    once at start-up, because ``warnings.catch_warnings`` is not thread-safe and decoding runs on
    several threads.
    """
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None and limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def sniff_refused_format(data: bytes) -> str | None:
    """Name of a known-but-refused image format from the magic bytes, else None."""
    for magic, name in _REFUSED_MAGIC:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12])
    return None


def decode_image(
    data: bytes, spec: PreprocessSpec, *, max_pixels: int, max_scans: int = DEFAULT_MAX_SCANS
) -> np.ndarray:
    """Decode one image and preprocess it: bytes -> float32 (3, S, S), S = ``spec.crop_size``.

    Raises ImageRejected: invalid_image, image_too_large (over ``max_pixels`` pixels or, for
    a JPEG, ``max_scans`` scans: decided from the header and markers, before any pixel is
    decoded) or 415 unsupported_media_type.
    """
    if not data:
        raise ImageRejected(INVALID_IMAGE, "empty image body")
    try:
        rgb = load_rgb(data, spec, max_pixels=max_pixels, max_scans=max_scans)
        return to_model_input(rgb, spec)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check, inside Image.open: configure_pillow keeps its limit at or above
        # ours, so the image is over ours too; Pillow's figure would only confuse the client.
        raise ImageRejected(
            IMAGE_TOO_LARGE,
            f"image refused before decoding: its header declares more than "
            f"SWIN_MAX_IMAGE_PIXELS = {max_pixels} pixels (width*height)",
        ) from exc
    except UnidentifiedImageError as exc:
        refused = sniff_refused_format(data)
        if refused is not None:
            raise ImageRejected(
                UNSUPPORTED_MEDIA_TYPE,
                f"image format {refused} is not accepted; send one of {', '.join(ALLOWED_FORMATS)}",
            ) from exc
        raise ImageRejected(
            INVALID_IMAGE, "not a decodable image (JPEG, PNG, WebP, GIF or BMP)"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected(
            INVALID_IMAGE, f"cannot decode image: {type(exc).__name__}: {exc}"[:300]
        ) from exc


def load_rgb(
    data: bytes, spec: PreprocessSpec, *, max_pixels: int, max_scans: int = DEFAULT_MAX_SCANS
) -> Image.Image:
    """Open, size-check, decode (first frame, EXIF orientation applied) and convert to 8-bit RGB."""
    im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    width, height = im.size
    if width < 1 or height < 1:
        raise ImageRejected(INVALID_IMAGE, f"image has no pixels ({width}x{height})")
    # The header's size is all we trust before load(): refuse bombs without decoding a pixel.
    if width * height > max_pixels:
        raise ImageRejected(
            IMAGE_TOO_LARGE,
            f"image is {width}x{height} = {width * height} pixels; "
            f"SWIN_MAX_IMAGE_PIXELS is {max_pixels}",
        )
    if im.format in ("JPEG", "MPO"):
        _check_scans(data, min(max_scans, scan_budget(width * height, max_pixels)), max_scans)
        _draft_jpeg(im, spec)
    im.load()  # first frame only: we never seek
    im = _apply_exif_orientation(im)
    return to_rgb(im)


def scan_budget(pixels: int, max_pixels: int) -> int:
    """The most scans an image of ``pixels`` may declare so that its decode costs no more than
    SCAN_PASSES scans of the largest image allowed: a large progressive image may not spend all
    of SWIN_MAX_JPEG_SCANS, which a small one may."""
    return max(1, SCAN_PASSES * max_pixels // pixels)


def _check_scans(data: bytes, limit: int, max_scans: int) -> None:
    """413 for a JPEG that declares more than ``limit`` scans: libjpeg would run every one over
    every block, so the decode's cost is its pixels times its scans (artifact/jpeg_scans.py)."""
    scans = count_scans(data, stop_after=limit)
    if scans <= limit:
        return
    if limit == max_scans:
        reason = f"more than {max_scans} scans (SWIN_MAX_JPEG_SCANS)"
    else:
        reason = (
            f"more than {limit} scans at its size: scans x pixels may not exceed "
            f"{SCAN_PASSES} x SWIN_MAX_IMAGE_PIXELS (SWIN_MAX_JPEG_SCANS caps any image at "
            f"{max_scans})"
        )
    raise ImageRejected(IMAGE_TOO_LARGE, f"JPEG declares {reason}")


def _draft_jpeg(im: Image.Image, spec: PreprocessSpec) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is far larger than needed.

    We ask for a shorter side of at least 2 * resize_shorter, so the bicubic resize that follows
    still reduces by 2x or more from real pixels: the result stays within a few grey levels of a
    full decode (tests pin this), while decode time and memory drop by up to 64x.
    """
    target = 2 * spec.resize_shorter
    short = min(im.size)
    if short < 2 * target:  # draft could only halve, or not at all: not worth the deviation
        return
    ratio = target / short
    im.draft(None, (math.ceil(im.size[0] * ratio), math.ceil(im.size[1] * ratio)))


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error, OSError):
        # Corrupt EXIF is metadata damage, not image damage: serve the pixels as stored.
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    - Transparency (RGBA, LA, PA, La, RGBa, P or L/RGB with a ``transparency`` key) is composited
      on white, as a browser shows it on a page. (Plain ``convert("RGB")`` would expose whatever
      colour happens to sit under transparent pixels, often black.)
    - 16/32-bit integer greys (I;16*, I) are scaled by 255/65535, not clipped at 255 as
      ``convert`` would do; float greys (F) are taken as 0..255 and clipped.
    - CMYK, YCbCr, LAB, HSV, 1, L and P use Pillow's conversions.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        grey = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8).convert("RGB")
    if mode == "F":
        grey8 = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: shorter side -> ``shorter``, longer side truncated (int)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def center_crop_offsets(width: int, height: int, crop: int, rule: str = "round") -> tuple[int, int]:
    """(left, top) of a centre crop: torchvision's ``round((size - crop) / 2)``, or with
    ``rule="floor"`` transformers' ``(size - crop) // 2``. Python rounds halves to even, so they
    differ only when size - crop is 3 modulo 4."""
    if rule == "floor":
        return (width - crop) // 2, (height - crop) // 2
    return round((width - crop) / 2.0), round((height - crop) / 2.0)


def resize_plan(width: int, height: int, spec: PreprocessSpec) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top): the size the image is resized to and where the crop starts."""
    if spec.resize_mode == "squash":
        new_w = new_h = spec.resize_shorter
    else:
        new_w, new_h = resized_size(width, height, spec.resize_shorter)
    left, top = center_crop_offsets(new_w, new_h, spec.crop_size, spec.crop_offset)
    return new_w, new_h, left, top


def to_model_input(rgb: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """8-bit RGB image -> float32 (3, S, S): resize, center crop, scale, normalise."""
    crop = spec.crop_size
    resample = _RESAMPLING[spec.interpolation]
    new_w, new_h, left, top = resize_plan(rgb.width, rgb.height, spec)
    if new_w * new_h > _BOX_RESIZE_FACTOR * crop * crop:
        # Resample only the region that survives the crop: same filter, scale factor and source
        # coordinates as a full resize then the crop, up to Pillow's rounding of the box's
        # positions; memory stays O(crop^2) however extreme the aspect ratio.
        sx, sy = rgb.width / new_w, rgb.height / new_h
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        cropped = np.asarray(rgb.resize((crop, crop), resample, box=box))  # S, S, 3 uint8
    else:
        resized = np.asarray(rgb.resize((new_w, new_h), resample))  # new_h, new_w, 3 uint8
        cropped = resized[top : top + crop, left : left + crop]  # S, S, 3
    x = cropped.astype(np.float32) * np.float32(1.0 / spec.scale)  # S, S, 3
    x -= np.asarray(spec.mean, dtype=np.float32)
    x /= np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # 3, S, S

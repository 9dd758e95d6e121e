"""Preprocessing: numbers against an independent reference, every mode, EXIF, draft, hostile input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import swin_serve.artifact.preprocess as pre
from swin_serve.artifact.contract import PreprocessSpec
from swin_serve.artifact.jpeg_scans import SCAN_PASSES
from swin_serve.server.errors import ErrorCode
from tests.support import sample_images

SPEC = PreprocessSpec(
    resize_shorter=73,
    crop_size=64,
    crop_pct=0.875,
    interpolation="bicubic",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
SPEC_224 = SPEC.model_copy(update={"resize_shorter": 256, "crop_size": 224})
MAX_PIXELS = 40_000_000

# Expected handling of every file in samples/images (its README): status, or "ok".
SAMPLE_EXPECTED = {
    "hopper.jpg": "ok",
    "hopper.png": "ok",
    "hopper.webp": "ok",
    "hopper.gif": "ok",
    "hopper.bmp": "ok",  # our choice: BMP is served
    "hopper_gray.jpg": "ok",
    "hopper_orientation_6.jpg": "ok",
    "hopper_bad_exif.jpg": "ok",
    "flower.jpg": "ok",
    "flower2.jpg": "ok",
    "pil_sample_cmyk.jpg": "ok",
    "pil123rgba.png": "ok",
    "p_trns_single.png": "ok",
    "dispose_bgnd_rgba.gif": "ok",
    "broken.png": 400,
    "truncated_end_chunk.png": 400,
    "decompression_bomb.gif": 413,
}


def reference_pipeline(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The official eval written out plainly (torchvision Resize(int) + CenterCrop + ToTensor +
    Normalize), in float64, sharing no code with swin_serve.artifact.preprocess. PIL does only the resize."""
    w, h = im.size
    short = spec.resize_shorter
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = np.asarray(im.convert("RGB").resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    rh, rw = resized.shape[:2]
    c = spec.crop_size
    top, left = round((rh - c) / 2.0), round((rw - c) / 2.0)
    crop = resized[top : top + c, left : left + c] / 255.0
    out = (crop - np.array(spec.mean)) / np.array(spec.std)
    return out.transpose(2, 0, 1)  # 3, S, S


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decode(data: bytes, spec: PreprocessSpec = SPEC, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return pre.decode_image(data, spec, max_pixels=max_pixels)


@pytest.mark.parametrize("name", ["hopper.png", "flower.jpg", "flower2.jpg", "hopper.bmp"])
@pytest.mark.parametrize("spec", [SPEC, SPEC_224], ids=["64", "224"])
def test_matches_independent_reference(images_dir, monkeypatch, name, spec):
    monkeypatch.setattr(pre, "_draft_jpeg", lambda im, spec: None)  # draft has its own test
    data = (images_dir / name).read_bytes()
    ours = decode(data, spec)
    ref = reference_pipeline(Image.open(io.BytesIO(data)), spec)
    assert ours.shape == (3, spec.crop_size, spec.crop_size) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_non_square_portrait_crop_is_centred():
    # A portrait image with a bright band exactly in the middle third: the crop must be centred.
    arr = np.zeros((300, 100, 3), np.uint8)
    arr[100:200] = 255
    ours = decode(encode(Image.fromarray(arr), "PNG"))
    ref = reference_pipeline(Image.fromarray(arr), SPEC)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_extreme_aspect_ratio_uses_box_resize_within_one_grey_level():
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 255, (10, 3000, 3), dtype=np.uint8))
    ours = decode(encode(strip, "PNG"))
    ref = reference_pipeline(strip, SPEC)
    one_grey_level = 1 / 255 / min(SPEC.std)
    assert np.abs(ours - ref).max() <= one_grey_level + 1e-6
    assert np.abs(ours - ref).mean() < 1e-3


def test_same_photo_in_three_containers_agrees(images_dir):
    x = {ext: decode((images_dir / f"hopper.{ext}").read_bytes()) for ext in ("png", "jpg", "webp")}
    for ext in ("jpg", "webp"):
        # Lossy re-encodes: a few grey levels on average (0.1 ~ 6 levels in normalised units).
        assert np.abs(x[ext] - x["png"]).mean() < 0.1, ext


def test_large_jpeg_draft_stays_close_to_full_decode(images_dir):
    big = Image.open(images_dir / "flower.jpg").resize((2400, 1800), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=95)
    drafted = pre.load_rgb(data, SPEC_224, max_pixels=MAX_PIXELS)
    assert drafted.size == (1200, 900)  # libjpeg decoded at 1/2: still 2x the resize target
    assert min(pre.load_rgb(data, SPEC, max_pixels=MAX_PIXELS).size) >= 2 * SPEC.resize_shorter
    for spec in (SPEC, SPEC_224):
        ours = decode(data, spec)
        full = reference_pipeline(Image.open(io.BytesIO(data)), spec)
        diff = np.abs(ours - full)
        assert diff.mean() < 0.01 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_small_jpeg_is_not_drafted(images_dir):
    data = (images_dir / "flower.jpg").read_bytes()  # 480x360: < 4x the target
    assert pre.load_rgb(data, SPEC_224, max_pixels=MAX_PIXELS).size == (480, 360)


def test_exif_orientation_is_applied():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red: upright it is wide, red on the left
    upright = Image.fromarray(arr)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated_data = encode(stored, "PNG", exif=exif)
    np.testing.assert_allclose(decode(rotated_data), decode(encode(upright, "PNG")), atol=1e-5)


def test_sample_orientation_6_image_is_turned_upright(images_dir):
    im = Image.open(images_dir / "hopper_orientation_6.jpg")
    rgb = pre.load_rgb(
        (images_dir / "hopper_orientation_6.jpg").read_bytes(),
        SPEC,
        max_pixels=MAX_PIXELS,
    )
    assert rgb.getexif().get(0x0112) in (None, 1)
    # Orientation 6 means "rotate 90 degrees clockwise to display" (EXIF 2.32, tag 0x0112).
    stored = np.asarray(im.convert("RGB"), dtype=np.float32)
    upright = np.rot90(stored, k=-1)  # clockwise
    got = np.asarray(rgb, dtype=np.float32)
    assert np.abs(got - upright).mean() < 1.0  # the same decoded pixels, turned
    assert np.abs(got - stored).mean() > 10.0  # and turning did matter for this photo


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_are_composited_on_white(mode):
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0)).convert(mode)  # fully transparent black
    x = decode(encode(im, "PNG"))
    white = (1.0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), white, atol=1e-4)


@pytest.mark.parametrize("mode", ["PA", "RGBa"])
def test_other_alpha_modes_composite_on_white(mode):
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0)).convert(mode)
    assert np.asarray(pre.to_rgb(im)).min() == 255


def test_palette_with_transparency_index_is_white(images_dir):
    im = Image.new("P", (40, 40), 0)
    im.putpalette([0, 0, 0] * 256)
    x = decode(encode(im, "PNG", transparency=0))
    white = (1.0 - np.array(SPEC.mean)) / np.array(SPEC.std)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), white, atol=1e-4)


def test_grey_becomes_three_equal_channels(images_dir):
    rgb = pre.load_rgb((images_dir / "hopper_gray.jpg").read_bytes(), SPEC, max_pixels=MAX_PIXELS)
    arr = np.asarray(rgb)
    assert (
        rgb.mode == "RGB"
        and (arr[..., 0] == arr[..., 1]).all()
        and (arr[..., 1] == arr[..., 2]).all()
    )


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.full((20, 20), 32768, dtype=np.uint16)  # mid grey in 16 bits
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    rgb = pre.to_rgb(im)
    assert np.asarray(rgb)[0, 0].tolist() == [128, 128, 128]  # convert("RGB") would give 255
    decode(encode(im, "PNG"))  # and a real 16-bit PNG decodes


def test_cmyk_is_converted_like_pillow(images_dir):
    data = (images_dir / "pil_sample_cmyk.jpg").read_bytes()
    ours = decode(data)
    ref = reference_pipeline(Image.open(io.BytesIO(data)).convert("RGB"), SPEC)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_only_the_first_animation_frame_is_used():
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    np.testing.assert_allclose(decode(data), decode(encode(frames[0], "PNG")), atol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLE_EXPECTED))
def test_every_sample_image_gets_its_documented_outcome(images_dir, name):
    data = (images_dir / name).read_bytes()
    expected = SAMPLE_EXPECTED[name]
    if expected == "ok":
        x = decode(data)
        assert x.shape == (3, 64, 64) and np.isfinite(x).all()
    else:
        with pytest.raises(pre.ImageRejected) as err:
            decode(data)
        assert ErrorCode(err.value.code).status == expected


def test_sample_images_are_all_covered(images_dir):
    assert {p.name for p in sample_images(images_dir)} == set(SAMPLE_EXPECTED)


def test_pixel_cap_is_checked_before_decoding(monkeypatch):
    data = encode(Image.new("RGB", (2000, 2000)), "PNG")
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(pre.ImageRejected) as err:
        decode(data, max_pixels=1_000_000)
    assert ErrorCode(err.value.code).status == 413 and err.value.code == "image_too_large"
    assert loaded == []


def test_decompression_bomb_is_refused_from_its_header(images_dir, monkeypatch):
    data = (images_dir / "decompression_bomb.gif").read_bytes()
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(pre.ImageRejected) as err:
        decode(data)
    assert ErrorCode(err.value.code).status == 413
    assert loaded == []  # refused before a single pixel was decoded: fast on any machine


def test_pillow_bomb_warning_is_an_error_even_with_a_lax_cap(monkeypatch):
    pre.configure_pillow()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(pre.ImageRejected) as err:
        decode(encode(Image.new("RGB", (40, 40)), "PNG"), max_pixels=10**9)  # 1600 px: a warning
    assert ErrorCode(err.value.code).status == 413


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height``, with one tiny IDAT: never decodable."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


def test_a_header_over_pillows_own_limit_is_refused_naming_our_setting():
    # 10000x10000 is over Pillow's default limit, whose check inside Image.open fires first.
    pre.configure_pillow(MAX_PIXELS)
    with pytest.raises(pre.ImageRejected) as err:
        decode(png_header_only(10_000, 10_000))
    assert ErrorCode(err.value.code).status == 413 and err.value.code == "image_too_large"
    assert f"SWIN_MAX_IMAGE_PIXELS = {MAX_PIXELS}" in err.value.message, err.value.message
    assert str(Image.MAX_IMAGE_PIXELS) not in err.value.message  # not Pillow's figure
    with pytest.raises(pre.ImageRejected) as ours:
        decode(png_header_only(7000, 7000))  # under Pillow's limit, over ours: our own check
    assert f"SWIN_MAX_IMAGE_PIXELS is {MAX_PIXELS}" in ours.value.message, ours.value.message


def test_pillows_limit_is_raised_to_ours_and_never_lowered(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    pre.configure_pillow(5000)
    assert Image.MAX_IMAGE_PIXELS == 5000  # else Pillow would refuse images our cap allows
    pre.configure_pillow(10)
    assert Image.MAX_IMAGE_PIXELS == 5000


def progressive_with_scans(scans: int) -> bytes:
    """A progressive grey JPEG (6 scans) whose last scan is repeated up to ``scans`` scans."""
    data = encode(Image.new("L", (512, 512), 128), "JPEG", progressive=True)
    last, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:eoi] + data[last:eoi] * (scans - 6) + data[eoi:]


def test_a_jpeg_over_the_scan_limit_is_refused_before_decoding(monkeypatch):
    bomb = progressive_with_scans(1006)
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(pre.ImageRejected) as err:
        pre.decode_image(bomb, SPEC, max_pixels=MAX_PIXELS)
    assert ErrorCode(err.value.code).status == 413 and err.value.code == "image_too_large"
    assert "SWIN_MAX_JPEG_SCANS" in err.value.message and "100" in err.value.message
    assert loaded == []


def test_a_jpeg_at_the_scan_limit_is_served():
    at_limit = progressive_with_scans(20)
    x = pre.decode_image(at_limit, SPEC, max_pixels=MAX_PIXELS, max_scans=20)
    assert x.shape == (3, 64, 64)
    with pytest.raises(pre.ImageRejected):
        pre.decode_image(progressive_with_scans(21), SPEC, max_pixels=MAX_PIXELS, max_scans=20)


def test_a_large_jpeg_may_declare_fewer_scans_than_a_small_one():
    """Scans x pixels is capped at SCAN_PASSES x the pixel cap: at a cap of 20 x 512 x 512 a
    512 x 512 image may have 20 scans, and 26 are refused naming the rule, not SWIN_MAX_JPEG_SCANS;
    an image a quarter of the size may have 80."""
    cap = 512 * 512
    assert pre.scan_budget(512 * 512, cap) == SCAN_PASSES == 20
    assert pre.scan_budget(256 * 256, cap) == 4 * SCAN_PASSES
    assert pre.decode_image(progressive_with_scans(20), SPEC, max_pixels=cap).shape == (3, 64, 64)
    with pytest.raises(pre.ImageRejected) as err:
        pre.decode_image(progressive_with_scans(26), SPEC, max_pixels=cap)
    assert (
        ErrorCode(err.value.code).status == 413
        and "20 x SWIN_MAX_IMAGE_PIXELS" in err.value.message
    )


def test_corrupt_exif_is_not_an_error(images_dir):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = decode((images_dir / "hopper_bad_exif.jpg").read_bytes())
    assert np.isfinite(x).all()


@pytest.mark.parametrize(
    "exc",
    [
        OSError("x"),
        SyntaxError("x"),
        ValueError("x"),
        IndexError("x"),
        struct.error("x"),
        MemoryError(),
        EOFError(),
        KeyError("x"),
    ],
)
def test_every_pillow_exception_type_maps_to_400(monkeypatch, exc):
    def explode(*args, **kwargs):
        raise exc

    monkeypatch.setattr(pre.Image, "open", explode)
    with pytest.raises(pre.ImageRejected) as err:
        decode(b"\x89PNG....")
    assert ErrorCode(err.value.code).status == 400 and err.value.code == "invalid_image"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"II*\x00" + b"\x00" * 64, 415),  # TIFF
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415),  # EPS: never parsed
        (b"%PDF-1.7\n", 415),
        (b"\x00\x00\x00\x1cftypavif" + b"\x00" * 32, 415),
        (b"<html><body>hi</body></html>", 400),
        (b"\x00" * 100, 400),
        (b"", 400),
    ],
)
def test_refused_formats_and_non_images(data, status):
    with pytest.raises(pre.ImageRejected) as err:
        decode(data)
    assert ErrorCode(err.value.code).status == status


def test_eps_never_reaches_a_parser(monkeypatch):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(
        EpsImagePlugin.EpsImageFile, "_open", lambda self: pytest.fail("EPS parser ran")
    )
    with pytest.raises(pre.ImageRejected):
        decode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")

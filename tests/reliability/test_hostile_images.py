"""Malformed and hostile images through the real app and the tiny exported model (in-process).

Every input gets its documented status (the error table in docs/api.md), never a 5xx, and afterwards a
good image still gets the result it got before. Decompression bombs are refused from the
header: a subprocess (running this checkout's ``service``) measures its own peak RSS around the
decode and counts the pixel decoders Pillow created for it.
"""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from contextlib import asynccontextmanager

import httpx
import pytest
from PIL import Image

from swin_serve.server.http.app import create_app
from swin_serve.server.settings import Settings
from tests.support import assert_same_predictions, sample_images

pytestmark = pytest.mark.anyio

PIXEL_CAP = 250_000  # the largest sample photo (500x500) sits exactly at it
ALLOWED = ("PNG", "WEBP", "JPEG", "GIF", "BMP")
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
SAMPLE_STATUS = {"broken.png": 400, "truncated_end_chunk.png": 400, "decompression_bomb.gif": 413}
ANY_CLIENT_ERROR_OR_OK = {200, 400, 413, 415}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serving(model_path):
    settings = Settings(
        model_path=model_path,
        providers="cpu",
        max_image_pixels=PIXEL_CAP,
        max_upload_bytes=4 * 1024 * 1024,
        max_batch_delay_ms=0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.service.lifecycle.wait_for_warm_up()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            yield c


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(mode: str, size=(48, 40)) -> Image.Image:
    rgb = Image.merge(
        "RGB",
        [
            Image.linear_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
            Image.new("L", size, 90),
        ],
    )
    if mode in ("I;16", "I", "F"):
        return rgb.convert("L").convert(mode)
    return rgb.convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height grey pixels, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim width x height."""
    gif = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    gif[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = gif.index(b",")  # image descriptor: ',' x y w h
    gif[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(gif)


def corpus(images_dir) -> list[tuple[str, bytes, set[int]]]:
    """(name, bytes, the statuses allowed for it)."""
    cases: list[tuple[str, bytes, set[int]]] = []
    for path in sample_images(images_dir):
        cases.append(
            (f"samples/{path.name}", path.read_bytes(), {SAMPLE_STATUS.get(path.name, 200)})
        )

    for mode in MODES:
        im = gradient(mode)
        for fmt in ALLOWED:
            try:
                data = encode(im, fmt)
            except (OSError, ValueError, KeyError):
                continue  # this format cannot hold this mode
            cases.append((f"mode {mode} as {fmt}", data, {200}))
    for mode in ("I;16", "I", "F"):  # their native container is TIFF, which is refused
        cases.append((f"mode {mode} as TIFF", encode(gradient(mode), "TIFF"), {415}))
    cases.append(("16-bit PNG", encode(gradient("I;16"), "PNG"), {200}))

    frames = [gradient("RGB").rotate(a) for a in (0, 90, 180)]
    cases.append(("APNG", encode(frames[0], "PNG", save_all=True, append_images=frames[1:]), {200}))
    cases.append(
        (
            "GIF, 3 frames",
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
            {200},
        )
    )
    cases.append(
        (
            "TIFF, 3 frames",
            encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
            {415},
        )
    )
    cases.append(("1x1", encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), {200}))
    cases.append(("10000x10 strip", encode(gradient("RGB", (10000, 10)), "PNG"), {200}))
    cases.append(("10x10000 strip", encode(gradient("RGB", (10, 10000)), "JPEG"), {200}))
    cases.append(("25000x10 at the cap", encode(gradient("RGB", (25000, 10)), "PNG"), {200}))
    cases.append(("500x500 at the cap", encode(gradient("RGB", (500, 500)), "JPEG"), {200}))
    cases.append(("25001x10 over the cap", encode(gradient("RGB", (25001, 10)), "PNG"), {413}))
    cases.append(("501x500 over the cap", encode(gradient("RGB", (501, 500)), "JPEG"), {413}))

    photo_jpeg = (images_dir / "flower.jpg").read_bytes()
    photo_png = encode(Image.open(images_dir / "hopper.png").convert("RGB"), "PNG")
    rng = random.Random(7)
    for name, data in (("JPEG", photo_jpeg), ("PNG", photo_png)):
        for k in range(10):
            cut = max(1, int(len(data) * (k + 0.5) / 10))
            cases.append((f"{name} truncated at {cut}", data[:cut], {400}))
            flipped = bytearray(data)
            for _ in range(8):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            # A flip may land in pixel data (still decodable) or in a size field.
            cases.append((f"{name} with flipped bits #{k}", bytes(flipped), ANY_CLIENT_ERROR_OR_OK))

    cases.append(("empty", b"", {400}))
    cases.append(("text", b"just some text, not an image\n" * 10, {400}))
    cases.append(("HTML", b"<!doctype html><html><body><img src=x></body></html>", {400}))
    cases.append(("JSON", b'{"image": "cat.jpg"}', {400}))
    cases.append(("SVG", b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', {415}))
    cases.append(("PDF", b"%PDF-1.7\n" + photo_png, {415}))

    small_png = encode(gradient("RGB"), "PNG")
    gif = encode(gradient("P"), "GIF")
    gif_html = gif[:-1] + b"!\xfe" + bytes([40]) + b"<html><script>x()</script></html>xxxxxx\x00;"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.png", small_png)
    cases.append(("GIF/HTML polyglot", gif_html, {200}))
    cases.append(("PNG + ZIP appended", small_png + archive.getvalue(), {200}))
    cases.append(("JPEG + trailing garbage", photo_jpeg + b"\x00garbage" * 100, {200}))
    cases.append(("HTML + PNG appended", b"<html></html>" + small_png, {400}))
    cases.append(("ZIP holding a PNG", archive.getvalue(), {400}))

    cases.append(("PNG bomb 50000x50000", png_bomb(50_000, 50_000), {413}))
    cases.append(("PNG bomb 2^31-1 wide", png_bomb(2**31 - 1, 1), {400, 413}))
    cases.append(("GIF bomb 65535x65535", gif_bomb(65535, 65535), {413}))
    return cases


async def test_every_hostile_image_gets_its_documented_status_and_poisons_nothing(
    tiny_model_path, images_dir
):
    reference_image = (images_dir / "hopper.jpg").read_bytes()
    cases = corpus(images_dir)
    wrong = []
    async with serving(tiny_model_path) as client:
        reference = await client.post("/classify?top_k=10", files={"file": reference_image})
        assert reference.status_code == 200
        for name, data, allowed in cases:
            # Both ways in: a multipart part, and the raw body.
            multipart = await client.post("/classify", files={"file": ("x", data)})
            raw = await client.post(
                "/classify", content=data, headers={"Content-Type": "image/png"}
            )
            for how, resp in (("multipart", multipart), ("raw", raw)):
                if resp.status_code not in allowed:
                    wrong.append((name, how, resp.status_code, resp.text[:200]))
                elif resp.status_code != 200:
                    assert set(resp.json()["error"]) >= {"code", "message"}
        after = await client.post("/classify?top_k=10", files={"file": reference_image})
        healthy = await client.get("/readyz")
    assert not wrong, json.dumps(wrong, indent=1)
    assert len(cases) > 100
    # The same scores to float rounding: nothing was poisoned (a poisoned session or a shifted
    # preprocessing changes scores by orders of magnitude more).
    assert_same_predictions(after.json()["results"], reference.json()["results"])
    assert healthy.status_code == 200


_PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import io, sys
    from PIL import Image
    from swin_serve.server.errors import ErrorCode
    from swin_serve.artifact.contract import PreprocessSpec
    from swin_serve.artifact.preprocess import ImageRejected, configure_pillow, decode_image

    def peak_rss_kib():
        # VmHWM, the peak RSS of this process image. Not getrusage's ru_maxrss: that one carries
        # the parent's RSS over fork and exec, so it would start at pytest's size.
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    decoders = 0  # every pixel decode (ImageFile.load) starts by asking Image for a decoder
    real_getdecoder = Image._getdecoder

    def counting_getdecoder(*args, **kwargs):
        global decoders
        decoders += 1
        return real_getdecoder(*args, **kwargs)

    Image._getdecoder = counting_getdecoder
    configure_pillow()
    spec = PreprocessSpec(resize_shorter=73, crop_size=64, crop_pct=0.875,
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    data = sys.stdin.buffer.read()
    cap = int(sys.argv[1])
    small = io.BytesIO(); Image.new("RGB", (64, 64)).save(small, format="PNG")
    decode_image(small.getvalue(), spec, max_pixels=cap)  # warm: imports, codecs
    before, decoders = peak_rss_kib(), 0
    try:
        decode_image(data, spec, max_pixels=cap)
        status = 200
    except ImageRejected as exc:
        status = ErrorCode(exc.code).status
    peak = peak_rss_kib()
    print(status, (peak - before) * 1024, decoders)
    """
)


def peak_rss_of_decode(data: bytes, cap: int, helpers) -> tuple[int, int, int]:
    """(status, growth of the peak RSS in bytes, pixel decoders created) of one decode in a
    fresh process that imports this checkout's ``service``."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_SCRIPT, str(cap)],
        input=data,
        capture_output=True,
        check=True,
        cwd=helpers.root,
        env=helpers.checkout_env(),
        timeout=120,  # a hang guard, not a bound on the decode
    ).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


@pytest.mark.parametrize(
    "bomb",
    ["sample decompression_bomb.gif", "PNG 50000x50000", "GIF 65535x65535"],
)
def test_decompression_bombs_are_refused_before_any_pixel_is_decoded(images_dir, helpers, bomb):
    data = {
        "sample decompression_bomb.gif": lambda: (
            images_dir / "decompression_bomb.gif"
        ).read_bytes(),
        "PNG 50000x50000": lambda: png_bomb(50_000, 50_000),
        "GIF 65535x65535": lambda: gif_bomb(65535, 65535),
    }[bomb]()
    status, growth, decoders = peak_rss_of_decode(data, 40_000_000, helpers)  # the default cap
    assert status == 413
    # Refused from the header: Pillow never started decoding pixels (a count, where a time
    # bound would only make it likely), and memory did not grow.
    assert decoders == 0
    assert growth < 8 * 2**20, f"peak RSS grew {growth / 2**20:.1f} MiB"


def test_the_peak_rss_probe_sees_a_real_decode(helpers):
    """The control for the test above: the same probe does see a real 8000x5000 decode (its peak
    grows by about 300 MiB, against the 8 MiB the bombs must stay under, and Pillow creates a
    decoder for it)."""
    data = encode(Image.new("RGB", (8000, 5000), (10, 20, 30)), "PNG")
    status, growth, decoders = peak_rss_of_decode(data, 40_000_000, helpers)
    assert status == 200
    assert decoders >= 1
    assert growth > 64 * 2**20, f"peak RSS grew only {growth / 2**20:.1f} MiB"

"""Every request body of the chaos soak: the good images on each route, and the hostile ones.

Hostile: junk, truncated, empty, a malformed multipart body, bad JSON, bad base64, the wrong
content type, a bad query, a body over the cap, an unknown model, the decompression-bomb GIF,
and the progressive JPEG "scan bomb".
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass

from PIL import Image

from bench.chaos_models import NAME
from bench.common import IMAGES_DIR
from bench.loadclient import build_request
from bench.soak import GOOD_NAMES

TOP_K = 3
MAX_UPLOAD_BYTES = 1024 * 1024  # the server's cap (bench.chaos sets it)
CLASSIFY = f"/classify?top_k={TOP_K}"


def scan_bomb() -> bytes:
    """A progressive 4096x4096 grey JPEG whose last scan is repeated 1000 times before EOI: small
    (about 100 kB, 16.8 Mpixel, under the pixel cap) but a thousand scans of decode work."""
    buf = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    sos, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:eoi] + data[sos:eoi] * 1000 + data[eoi:]


def multipart(data: bytes, filename: str, boundary: str = "chaosboundary7x") -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def v2_body(elements: list[str], datatype: str = "BYTES") -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "image", "datatype": datatype, "shape": [len(elements)], "data": elements}
            ],
            "outputs": [{"name": "logits", "parameters": {"classification": TOP_K}}],
        }
    ).encode()


def v2_request(body: bytes, model: str = NAME) -> bytes:
    return build_request(f"/v2/models/{model}/infer", body, "application/json")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def http_good_requests(good: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """(image name, request) for each good image, raw and multipart."""
    out = []
    for i, (name, data) in enumerate(good.items()):
        out.append((name, build_request(CLASSIFY, data, "image/*")))
        body, ctype = multipart(data, name)
        if i % 2:  # and a named-model route now and then
            out.append(
                (name, build_request(f"/v1/models/{NAME}/classify?top_k={TOP_K}", body, ctype))
            )
        else:
            out.append((name, build_request(CLASSIFY, body, ctype)))
    return out


def hostile_requests(jpeg: bytes, truncated: bytes, bomb: bytes) -> dict[str, bytes]:
    """The hostile HTTP and v2 requests, by kind."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(png, format="PNG")
    bad_multipart = b"--chaosboundary7x\r\nContent-Disposition: form-da"  # cut in a header
    return {
        "http_junk": build_request(CLASSIFY, os.urandom(2048), "image/jpeg"),
        "http_truncated": build_request(CLASSIFY, truncated, "image/jpeg"),
        "http_empty": build_request(CLASSIFY, b"", "image/png"),
        "http_bad_multipart": build_request(
            CLASSIFY, bad_multipart, "multipart/form-data; boundary=chaosboundary7x"
        ),
        "http_wrong_type": build_request(CLASSIFY, png.getvalue(), "text/plain"),
        "http_top_k": build_request("/classify?top_k=0", png.getvalue(), "image/png"),
        # Headers only: the 413 comes from Content-Length, before any body is read.
        "http_too_big": build_request(CLASSIFY, b"", "image/jpeg").replace(
            b"Content-Length: 0", f"Content-Length: {MAX_UPLOAD_BYTES + 1}".encode()
        ),
        "http_bomb": build_request(CLASSIFY, bomb, "image/gif"),
        "http_unknown_model": build_request(
            "/v1/models/no_such_model/classify", png.getvalue(), "image/png"
        ),
        "v2_bad_json": v2_request(b'{"inputs": [{"name": "image", "datatype": '),
        "v2_bad_base64": v2_request(v2_body(["this is not base64!"])),
        "v2_truncated": v2_request(v2_body([b64(truncated)])),
        "v2_bomb": v2_request(v2_body([b64(bomb)])),
        "v2_unknown_model": v2_request(v2_body([b64(jpeg)]), "no_such_model"),
    }


@dataclass(frozen=True)
class Inputs:
    """Every request body of the run, built once."""

    good: dict[str, bytes]  # image name -> file
    http_good: list[tuple[str, bytes]]  # (image name, request), raw and multipart
    v2_good: list[tuple[str, bytes]]
    hostile_http: dict[str, bytes]
    bomb: bytes
    truncated: bytes
    scan_bomb: bytes

    @classmethod
    def build(cls) -> Inputs:
        good = {n: (IMAGES_DIR / n).read_bytes() for n in GOOD_NAMES}
        v2_good = [(n, v2_request(v2_body([b64(d)]))) for n, d in good.items()]
        jpeg = good["hopper.jpg"]
        truncated = jpeg[: len(jpeg) // 3]
        bomb = (IMAGES_DIR / "decompression_bomb.gif").read_bytes()
        hostile_http = hostile_requests(jpeg, truncated, bomb)
        return cls(
            good, http_good_requests(good), v2_good, hostile_http, bomb, truncated, scan_bomb()
        )

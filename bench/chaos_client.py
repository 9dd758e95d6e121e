"""The chaos soak's wire: one HTTP/1.1 request per connection, and reading what comes back
(status and error code, predictions, Prometheus counters)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

CLIENT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Reply:
    status: int  # 0: no HTTP answer
    code: str
    retry_after: str
    body: bytes
    started: float
    ended: float
    error: str = ""  # why there is no answer: the exception, or "eof" (closed with nothing)


_CODE = re.compile(rb'"code":\s*"([a-z_]+)"')


def parse_reply(raw: bytes, started: float, ended: float) -> Reply:
    """A whole HTTP/1.1 response (the server closed after it) -> Reply."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Reply(0, "", "", b"", started, ended)
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = dechunk(body)
    match = _CODE.search(body) if status >= 300 else None
    return Reply(
        status,
        match.group(1).decode() if match else "",
        headers.get(b"retry-after", b"").decode(),
        body,
        started,
        ended,
    )


def dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out)
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


async def exchange(port: int, request: bytes, timeout_s: float = CLIENT_TIMEOUT_S) -> Reply:
    """One request on a fresh connection (``Connection: close``); reads to EOF."""
    started = time.perf_counter()
    writer = None
    raw, error = b"", ""
    stage = "connect"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            stage = "send"
            writer.write(request)
            await writer.drain()
            stage = "read"
            while chunk := await reader.read(1 << 16):
                raw += chunk
    except (OSError, TimeoutError) as exc:  # a reset after a whole answer leaves it in raw
        error = f"{stage}: {type(exc).__name__}"
    finally:
        if writer is not None:
            writer.close()
    reply = parse_reply(raw, started, time.perf_counter())
    if reply.status == 0:
        return dataclasses.replace(reply, error=error or f"{stage}: closed, {len(raw)} bytes")
    return reply


async def abandon(port: int, request: bytes, cut: int, after_s: float) -> None:
    """Send the first ``cut`` bytes of ``request``, wait ``after_s``, close without reading."""
    writer = None
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request[:cut])
        await writer.drain()
        await asyncio.sleep(after_s)
    if writer is not None:
        writer.close()


def classify_top(body: bytes) -> tuple[list[str], int, float]:
    """/classify's 200 -> (labels, top-1 index, top-1 score)."""
    preds = json.loads(body)["results"][0]["predictions"]
    return [p["label"] for p in preds], int(preds[0]["index"]), float(preds[0]["score"])


def classification_top(strings: Sequence[str | bytes]) -> tuple[list[str], int, float]:
    """Triton classification strings ("value:index:label", highest first) -> as classify_top."""
    parts = [(s.decode() if isinstance(s, bytes) else s).split(":", 2) for s in strings]
    return [p[2] for p in parts], int(parts[0][1]), float(parts[0][0])


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of counter ``name`` (its ``_total`` series) in a Prometheus exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    with contextlib.suppress(ValueError):
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name:
                    out.append((dict(s.labels), s.value))
    return out


def metric_value(text: str, name: str, labels: dict[str, str]) -> float:
    return sum(v for lb, v in metric_samples(text, name) if labels.items() <= lb.items())


def metric_by(text: str, name: str, label: str) -> dict[str, float]:
    out: Counter[str] = Counter()
    for lb, v in metric_samples(text, name):
        out[lb.get(label, "")] += v
    return dict(sorted(out.items()))


async def metrics_text(port: int) -> str:
    """The body of ``GET /metrics`` (a Prometheus exposition)."""
    r = await exchange(
        port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 10
    )
    return r.body.decode(errors="replace")

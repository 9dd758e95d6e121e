"""A minimal open-loop HTTP/1.1 load client on asyncio streams, for the overload test and the soak.

httpx spends enough CPU per request that, on a small machine whose cores the client shares with
the server, it falls behind the rate it should offer and its own queueing shows up as server
latency. This client writes one request per fresh connection (``Connection: close``) and only
parses the status line, so what it measures is the server.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

TRANSPORT_ERROR = 0  # status of a request that got no HTTP response (refused, reset, timeout)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int  # HTTP status, or TRANSPORT_ERROR
    seconds: float  # connect to end of response
    started: float  # time.perf_counter() at start
    code: str = ""  # the JSON error code of a non-2xx answer, when there is one
    server_s: float | None = None  # the server's own time for it (Server-Timing "total")


_CODE = re.compile(rb'"code":\s*"([a-z_]+)"')
_SERVER_TOTAL = re.compile(rb"(?im)^server-timing:.*\btotal;dur=([0-9.]+)")


def build_request(path: str, body: bytes, content_type: str, host: str = "127.0.0.1") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def send(host: str, port: int, request: bytes, timeout_s: float = 30.0) -> Outcome:
    """Send one pre-built request on a new connection; read the whole response."""
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            rest = await reader.read()  # to EOF: the server closes after the response
        status = int(status_line.split(b" ", 2)[1])
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
        status, rest = TRANSPORT_ERROR, b""
    finally:
        if writer is not None:
            writer.close()
    match = _CODE.search(rest) if status >= 300 else None
    code = match.group(1).decode() if match else ""
    timing = _SERVER_TOTAL.search(rest)
    server_s = float(timing.group(1)) / 1e3 if timing else None
    return Outcome(status, time.perf_counter() - started, started, code, server_s)


async def open_loop(
    host: str, port: int, requests: list[bytes], rate: float, timeout_s: float = 30.0
) -> list[Outcome]:
    """Request i starts at i / rate seconds, whatever happened to the others (open loop)."""
    t0 = time.perf_counter()

    async def one(i: int, request: bytes) -> Outcome:
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        return await send(host, port, request, timeout_s)

    return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

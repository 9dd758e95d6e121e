"""Soak: the real server under mixed good, bad and overload traffic for a long time (``make soak``).

    python -m bench.soak --minutes 10 --model artefacts/swin_tiny_patch4_window7_224.onnx

It starts ``swin-serve`` on a free loopback port, measures the server's capacity (closed
loop, a few seconds), then runs for ``--minutes``, every second offering:

- good images (the photos in samples/images) at ``--good-load`` x capacity;
- a few bad requests (junk, truncated, empty, text, wrong content type, over the byte cap,
  a decompression bomb), each with the status docs/api.md documents;
- once a minute, a ``--burst-s`` overload burst at ``--burst-load`` x capacity.

Each minute it prints requests by status and error code, and the server's RSS; at the end a JSON
summary with the RSS trend. The exit status is 1 if any request got a status its kind does not
allow (any 5xx but 503, or no answer at all), or if RSS grew by more than
``--max-rss-growth-mib`` over the second half of the run (the first half lets the allocator and
ONNX Runtime arenas reach their high-water mark). Load goes to 127.0.0.1 only, bounded in time
and rate.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from PIL import Image

from bench.common import IMAGES_DIR, percentile
from bench.loadclient import TRANSPORT_ERROR, Outcome, build_request, send
from bench.service import service_server

GOOD_NAMES = ("hopper.jpg", "flower.jpg", "flower2.jpg", "hopper.png", "hopper.webp", "hopper.gif")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def good_requests() -> list[bytes]:
    return [
        build_request("/classify", (IMAGES_DIR / n).read_bytes(), "image/*") for n in GOOD_NAMES
    ]


def bad_requests(max_upload_bytes: int) -> list[tuple[str, bytes, set[int]]]:
    """(kind, request, the statuses it may get). 503 is allowed for all: admission comes first."""
    jpeg = (IMAGES_DIR / "hopper.jpg").read_bytes()
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(png, format="PNG")
    kinds = [
        ("junk", build_request("/classify", os.urandom(2048), "image/jpeg"), {400}),
        ("truncated", build_request("/classify", jpeg[: len(jpeg) // 3], "image/jpeg"), {400}),
        ("empty", build_request("/classify", b"", "image/png"), {400}),
        ("html", build_request("/classify", b"<html><body>hi</body></html>", "image/png"), {400}),
        ("wrong_type", build_request("/classify", png.getvalue(), "text/plain"), {415}),
        # Headers only: the 413 comes from Content-Length, before any body is read. (Sending the
        # body too would race the server's close against our write, and lose the response.)
        (
            "too_big",
            build_request("/classify", b"\xff" * (max_upload_bytes + 1), "image/jpeg").split(
                b"\r\n\r\n"
            )[0]
            + b"\r\n\r\n",
            {413},
        ),
        (
            "bomb",
            build_request(
                "/classify", (IMAGES_DIR / "decompression_bomb.gif").read_bytes(), "image/gif"
            ),
            {413},
        ),
        ("top_k", build_request("/classify?top_k=0", png.getvalue(), "image/png"), {422}),
    ]
    return [(k, r, ok | {503}) for k, r, ok in kinds]


async def measure_capacity(port: int, request: bytes, seconds: float, concurrency: int) -> float:
    """Closed loop with ``concurrency`` clients: 200 responses per second."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            if (await send("127.0.0.1", port, request)).status == 200:
                done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / seconds


class Tally:
    """Counts per minute and overall; only aggregates are kept, so memory stays flat."""

    def __init__(self) -> None:
        self.minute: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        self.latencies_503: list[float] = []  # of the "overloaded" ones only
        self.unexpected: Counter[str] = Counter()

    def add(self, kind: str, outcome: Outcome, allowed: set[int]) -> None:
        status = outcome.status
        key = "no_response" if status == TRANSPORT_ERROR else str(status)
        if outcome.code:
            key += f" {outcome.code}"
        self.minute[key] += 1
        self.total[key] += 1
        if outcome.code == "overloaded":  # deadline_exceeded 503s come at their deadline
            self.latencies_503.append(outcome.seconds)
        if status not in allowed:
            self.unexpected[f"{kind}->{status}"] += 1


async def soak(args: argparse.Namespace, port: int, pid: int) -> dict:
    good = good_requests()
    bad = bad_requests(args.max_upload_bytes)
    capacity = await measure_capacity(port, good[0], args.calibrate_s, concurrency=8)
    print(f"capacity ~{capacity:.1f} images/s (closed loop, 8 clients)", flush=True)
    tally = Tally()
    rss_trend: list[tuple[int, float]] = [(0, rss_mib(pid))]
    pending: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    seconds = int(args.minutes * 60)

    async def fire(kind: str, request: bytes, allowed: set[int], at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        outcome = await send("127.0.0.1", port, request, timeout_s=30)
        tally.add(kind, outcome, allowed)

    def schedule(kind: str, request: bytes, allowed: set[int], at: float) -> None:
        task = asyncio.create_task(fire(kind, request, allowed, at))
        pending.add(task)
        task.add_done_callback(pending.discard)

    for second in range(seconds):
        in_burst = second % 60 >= 60 - args.burst_s
        n_good = max(1, round(capacity * (args.burst_load if in_burst else args.good_load)))
        start = t0 + second
        for i in range(n_good):
            schedule("good", good[(second * 7 + i) % len(good)], {200, 503}, start + i / n_good)
        for j in range(args.bad_per_s):
            kind, request, allowed = bad[(second * args.bad_per_s + j) % len(bad)]
            schedule(kind, request, allowed, start + (j + 0.5) / 2)
        await asyncio.sleep(max(0.0, start + 1 - time.perf_counter()))
        if (second + 1) % 60 == 0:
            rss_trend.append((second + 1, rss_mib(pid)))
            print(
                f"[{(second + 1) // 60:3d} min] {dict(sorted(tally.minute.items()))} "
                f"RSS {rss_trend[-1][1]:.1f} MiB",
                flush=True,
            )
            tally.minute.clear()
    await asyncio.gather(*pending)
    rss_trend.append((seconds, rss_mib(pid)))
    return summarise(args.minutes, capacity, tally, rss_trend)


def summarise(
    minutes: float, capacity: float, tally: Tally, rss_trend: list[tuple[int, float]]
) -> dict:
    seconds = rss_trend[-1][0]
    lat = tally.latencies_503
    first_min = rss_trend[1][1] if len(rss_trend) > 2 else rss_trend[0][1]
    # A leak keeps growing; allocator and ONNX Runtime arenas rise to a high-water mark and stay.
    # So the verdict is on the second half of the run, after that mark had time to be reached.
    halfway = min(rss_trend, key=lambda point: abs(point[0] - seconds / 2))[1]
    return {
        "capacity_images_per_s": round(capacity, 2),
        "minutes": minutes,
        "requests": sum(tally.total.values()),
        "by_status": dict(sorted(tally.total.items())),
        "unexpected": dict(tally.unexpected),
        "p99_overloaded_503_ms": round(percentile(lat, 99) * 1e3, 1) if lat else None,
        "rss_mib": [(s, round(r, 1)) for s, r in rss_trend],
        "rss_growth_after_first_minute_mib": round(rss_trend[-1][1] - first_min, 1),
        "rss_growth_second_half_mib": round(rss_trend[-1][1] - halfway, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--model", type=Path, default=Path("artefacts/swin_tiny_patch4_window7_224.onnx")
    )
    parser.add_argument("--good-load", type=float, default=0.6, help="x capacity, outside bursts")
    parser.add_argument("--burst-load", type=float, default=2.0, help="x capacity, in bursts")
    parser.add_argument("--burst-s", type=int, default=10, help="seconds of burst per minute")
    parser.add_argument("--bad-per-s", type=int, default=2)
    parser.add_argument("--calibrate-s", type=float, default=10.0)
    parser.add_argument("--max-upload-bytes", type=int, default=1024 * 1024)
    parser.add_argument(
        "--max-rss-growth-mib", type=float, default=64.0, help="over the second half of the run"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} not found: `make export` (Swin-T) or pass --model")

    server = service_server(
        args.model.resolve(),
        None,
        {
            "SWIN_PROVIDERS": "cpu",
            "SWIN_MAX_UPLOAD_BYTES": str(args.max_upload_bytes),
            "SWIN_QUEUE_CAPACITY": "32",
        },
    )
    # What is soaked is the defaults plus the settings above, whatever this shell exports.
    server.inherit_settings, server.capture_log = False, False
    server.start()
    try:
        server.wait_ready()
        summary = asyncio.run(soak(args, server.port, server.proc.pid))
    finally:
        rc = server.stop(timeout_s=60)
    summary["server_exit_status"] = rc
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    failed = (
        summary["unexpected"]
        or summary["rss_growth_second_half_mib"] > args.max_rss_growth_mib
        or rc != 0
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

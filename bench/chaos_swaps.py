"""The chaos soak's repository changes and the card that shows them.

A change is the documented publish: a hidden copy renamed into place, then SIGHUP. Two cycles in
three swap to the other model; the third publishes a broken file (the other model's first half,
or random bytes) under the name, which the server must refuse while serving on. A poller reads
the model's card (``GET /v1/models/chaos``: ``digest``, the file's SHA-256, and ``state``) all
along, so every answer can be checked against the models the card named while it was out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from bench.chaos_client import exchange, metric_value, metrics_text
from bench.chaos_models import NAME, Model
from bench.chaos_verdict import SWAP_WAIT_S, CardObservation, SwapRecord
from bench.common import progress

CARD_POLL_S = 0.25


class Repository:
    """The model repository under test (``NAME`` in ``repo``, served by process ``pid``): its
    changes and its card."""

    def __init__(
        self,
        port: int,
        pid: int,
        repo: Path,
        models: dict[str, Model],
        in_overload: Callable[[], bool],
    ) -> None:
        self.port, self.pid, self.repo, self.models = port, pid, repo, models
        self.in_overload = in_overload  # read when a change is published
        self.target = repo / f"{NAME}.onnx"
        self.hidden = repo / f".{NAME}.onnx"
        self.serving = "A"
        self.observations: list[CardObservation] = []
        self.card_failures = 0
        self.swaps: list[SwapRecord] = []

    async def poll_card(self, stop: asyncio.Event) -> None:
        request = f"GET /v1/models/{NAME} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        while not stop.is_set():
            r = await exchange(self.port, request, timeout_s=10)
            if r.status == 200:
                try:
                    card = json.loads(r.body)
                    self.observations.append(
                        CardObservation(r.started, r.ended, card["digest"], card["state"])
                    )
                except (ValueError, KeyError):
                    self.card_failures += 1
            else:
                self.card_failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CARD_POLL_S)

    async def loads_failed(self) -> float:
        return metric_value(
            await metrics_text(self.port),
            "swin_model_loads_total",
            {"model": NAME, "outcome": "failed"},
        )

    def publish(self) -> None:
        """The last steps of the documented publish: rename the hidden copy into place, SIGHUP."""
        os.replace(self.hidden, self.target)
        os.kill(self.pid, signal.SIGHUP)

    async def swap(self, index: int) -> None:
        """Cycle ``index``'s repository change: to the other model, or (every third) a broken file."""
        if index % 3 == 2:
            rec = await self.publish_broken(("truncated", "garbage")[(index // 3) % 2])
        else:
            rec = await self.publish_other()
        self.swaps.append(rec)
        progress(
            f"cycle {index + 1}: {rec.kind}{' to ' + rec.to if rec.to else ''} "
            f"{'seen' if rec.observed else 'NOT SEEN'} after {rec.seconds} s"
            + (f", card unchanged: {rec.card_unchanged}" if rec.kind != "swap" else "")
        )

    async def publish_other(self) -> SwapRecord:
        """Publish the model not serving; wait for its digest on the card."""
        new = "B" if self.serving == "A" else "A"
        await asyncio.to_thread(shutil.copy2, self.models[new].path, self.hidden)
        rec = SwapRecord("swap", new, time.perf_counter(), during_overload=self.in_overload())
        self.publish()
        digest = self.models[new].digest
        deadline = rec.published + SWAP_WAIT_S
        while time.perf_counter() < deadline:
            last = self.observations[-1] if self.observations else None
            if last and last.sent > rec.published and last.digest == digest:
                rec.observed, rec.seconds = True, round(last.answered - rec.published, 2)
                break
            await asyncio.sleep(CARD_POLL_S / 2)
        self.serving = new  # on disk, whatever the server made of it
        return rec

    async def publish_broken(self, kind: str) -> SwapRecord:
        """Publish a broken file (``kind``: "truncated" or "garbage"); wait for the failed load,
        then for a card read that began after it."""
        other = self.models["B" if self.serving == "A" else "A"].path
        data = (
            other.read_bytes()[: other.stat().st_size // 2]
            if kind == "truncated"
            else os.urandom(1 << 20)
        )
        before = await self.loads_failed()
        serving_digest = self.models[self.serving].digest
        self.hidden.write_bytes(data)
        old = time.time() - 10  # settled: the server loads files older than SETTLE_S
        os.utime(self.hidden, (old, old))
        rec = SwapRecord(kind, None, time.perf_counter(), during_overload=self.in_overload())
        self.publish()
        deadline = rec.published + SWAP_WAIT_S
        while time.perf_counter() < deadline:
            if await self.loads_failed() > before:
                rec.observed, rec.seconds = True, round(time.perf_counter() - rec.published, 2)
                break
            await asyncio.sleep(0.5)
        seen = len(self.observations)
        while len(self.observations) == seen and time.perf_counter() < deadline:
            await asyncio.sleep(CARD_POLL_S)  # a card read that began after the refusal
        last = self.observations[-1] if self.observations else None
        rec.card_unchanged = bool(last and last.digest == serving_digest and last.state == "ready")
        return rec

"""The decode budget, in process: the JPEG scan counter (src/swin_serve/artifact/jpeg_scans.py) and the decode
pool's deadline, abandoned-decode room and drain (src/swin_serve/server/runtime/decoding.py).

Decodes are plain functions blocked on a ``threading.Event``: a decode as slow as the test
wants, that nothing but the test can end, as a libjpeg call is for the server."""

from __future__ import annotations

import asyncio
import io
import random
import threading
import time

import pytest
from PIL import Image

from swin_serve.artifact.jpeg_scans import count_scans
from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.runtime.decoding import DecodePool

HANG_GUARD_S = 10.0  # any wait on a thread: only a broken pool reaches it
# The deadline of a decode that should find a free thread at once: far past the microseconds it
# takes on a busy machine, far below the gate's guard (a decode queued behind a gated one fails).
FREE_THREAD_S = 2.0


def progressive(mode: str = "RGB", size: tuple[int, int] = (64, 48), **save) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, "JPEG", progressive=True, **save)
    return buf.getvalue()


def scan_bomb(repeats: int) -> bytes:
    """The issue's file: the last scan of a progressive JPEG repeated before the EOI."""
    data = progressive("L", (256, 256))
    last_scan, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:eoi] + data[last_scan:eoi] * repeats + data[eoi:]


def with_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """``data`` with one more segment (e.g. COM, APP1) right after its SOI."""
    segment = bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + segment + data[2:]


# -- the scan counter ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "progressive_", "scans"),
    [("L", False, 1), ("RGB", False, 1), ("L", True, 6), ("RGB", True, 10), ("CMYK", True, 18)],
)
def test_counts_the_scans_libjpeg_writes(mode, progressive_, scans):
    buf = io.BytesIO()
    Image.new(mode, (64, 48), 90).save(buf, "JPEG", progressive=progressive_)
    assert count_scans(buf.getvalue()) == scans


def test_counts_every_scan_of_a_scan_bomb_and_stops_past_the_limit():
    bomb = scan_bomb(1000)
    assert count_scans(bomb) == 1006
    assert count_scans(bomb, stop_after=100) == 101  # enough to refuse; the rest is not walked


def test_ff_bytes_in_entropy_data_are_not_markers():
    # Noise at quality 100 fills the entropy data with stuffed 0xFF 0x00 pairs and RST markers.
    noise = Image.frombytes("RGB", (128, 128), random.Random(0).randbytes(128 * 128 * 3))
    for extra in ({}, {"restart_marker_blocks": 1}):
        buf = io.BytesIO()
        noise.save(buf, "JPEG", quality=100, progressive=True, **extra)
        assert buf.getvalue().count(b"\xff\x00") > 50
        assert count_scans(buf.getvalue()) == 10, extra
    assert b"\xff\xd0" in buf.getvalue()  # the restart markers are there to be skipped


def test_scans_inside_metadata_or_after_the_end_are_not_counted():
    image = progressive()
    thumbnail = progressive("L", (16, 16))  # as an EXIF thumbnail or an ICC profile may hold
    assert count_scans(with_segment(image, 0xE1, b"Exif\x00\x00" + thumbnail)) == 10
    assert count_scans(with_segment(image, 0xFE, thumbnail * 20)) == 10
    assert count_scans(image + scan_bomb(200)) == 10  # a second image (MPO): never decoded


def test_broken_streams_count_what_precedes_the_damage():
    image = progressive()
    full = count_scans(image)
    for cut in range(0, len(image), 7):
        assert 0 <= count_scans(image[:cut]) <= full
    assert count_scans(b"") == count_scans(b"\x89PNG\r\n\x1a\n") == 0
    assert count_scans(b"\xff\xd8" + b"\xff" * 1000) == 0
    assert count_scans(b"\xff\xd8\xff\xda") == 0  # a length that is not there


# -- the pool -----------------------------------------------------------------------------------


class Gate:
    """A decode that blocks its thread until ``open()``; ``started`` is set once it runs."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self._open = threading.Event()
        self.finished = threading.Event()

    def __call__(self, value: str) -> str:
        self.started.set()
        try:
            assert self._open.wait(HANG_GUARD_S), "gate never opened"
            return value
        finally:
            self.finished.set()

    def open(self) -> None:
        self._open.set()


def soon(seconds: float) -> float:
    return time.monotonic() + seconds


async def wait_for(event: threading.Event, what: str) -> None:
    ok = await asyncio.get_running_loop().run_in_executor(None, event.wait, HANG_GUARD_S)
    assert ok, f"timed out waiting for {what}"


async def until(condition, what: str) -> None:
    deadline = soon(HANG_GUARD_S)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_deadline_answers_a_running_decode_and_the_thread_is_not_lost():
    async def scenario() -> None:
        pool = DecodePool(threads=1, max_abandoned=2)
        gate = Gate()
        started = time.monotonic()
        with pytest.raises(ApiError) as late:
            await pool.run(gate, "slow", deadline=soon(0.3))
        answered_after = time.monotonic() - started
        assert late.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert "while decoding" in late.value.message
        assert not gate.finished.is_set()  # answered while the decode still ran
        assert 0.25 <= answered_after < 0.3 + HANG_GUARD_S / 10, answered_after
        assert (pool.live, pool.abandoned) == (0, 1)
        # The one live slot is free again: a fresh decode runs beside the abandoned one.
        assert await pool.run(str.upper, "fresh", deadline=soon(FREE_THREAD_S)) == "FRESH"
        gate.open()
        await until(lambda: pool.abandoned == 0, "the abandoned decode to be counted out")
        pool.shutdown()

    asyncio.run(scenario())


def test_a_full_abandoned_room_refuses_decodes_and_says_so_until_one_ends():
    async def scenario() -> None:
        pool = DecodePool(threads=1, max_abandoned=1)
        changes: list[bool] = []
        pool.on_saturated = changes.append
        gate = Gate()
        with pytest.raises(ApiError):
            await pool.run(gate, "slow", deadline=soon(0.05))
        assert pool.saturated and changes == [True]
        with pytest.raises(ApiError) as refused:
            await pool.run(str.upper, "next", deadline=soon(HANG_GUARD_S))
        assert refused.value.code is ErrorCode.OVERLOADED
        assert "past their deadline" in refused.value.message
        gate.open()
        await until(lambda: not pool.saturated, "the abandoned decode to end")
        assert changes == [True, False]
        assert await pool.run(str.upper, "next", deadline=soon(FREE_THREAD_S)) == "NEXT"
        pool.shutdown()

    asyncio.run(scenario())


def test_a_decode_waiting_for_a_thread_is_answered_at_its_deadline_and_never_runs():
    async def scenario() -> None:
        pool = DecodePool(threads=1, max_abandoned=1)
        gate = Gate()
        first = asyncio.ensure_future(pool.run(gate, "slow", deadline=soon(HANG_GUARD_S)))
        await wait_for(gate.started, "the first decode to start")
        ran = threading.Event()
        with pytest.raises(ApiError) as late:
            await pool.run(ran.set, deadline=soon(0.05))
        assert late.value.code is ErrorCode.DEADLINE_EXCEEDED
        assert "waiting for a decode thread" in late.value.message
        gate.open()
        assert await first == "slow"
        assert not ran.is_set() and pool.running == 0
        pool.shutdown()

    asyncio.run(scenario())


def test_the_drain_answers_running_and_waiting_decodes_and_refuses_new_ones():
    async def scenario() -> None:
        pool = DecodePool(threads=1, max_abandoned=1)
        gate = Gate()
        running = asyncio.ensure_future(pool.run(gate, "a", deadline=soon(HANG_GUARD_S)))
        await wait_for(gate.started, "the decode to start")
        waiting = asyncio.ensure_future(pool.run(str.upper, "b", deadline=soon(HANG_GUARD_S)))
        await asyncio.sleep(0)  # let it queue for the slot
        assert pool.abandon_all() == 2
        for request in (running, waiting):
            with pytest.raises(ApiError) as drained:
                await request
            assert drained.value.code is ErrorCode.DRAINING
        with pytest.raises(ApiError) as refused:
            await pool.run(str.upper, "c", deadline=soon(HANG_GUARD_S))
        assert refused.value.code is ErrorCode.DRAINING
        assert pool.running == 1 and not gate.finished.is_set()  # the decode itself runs on
        gate.open()
        await until(lambda: pool.running == 0, "the abandoned decode to end")
        pool.shutdown()

    asyncio.run(scenario())


def test_a_cancelled_request_abandons_its_decode():
    async def scenario() -> None:
        pool = DecodePool(threads=1, max_abandoned=1)
        gate = Gate()
        request = asyncio.ensure_future(pool.run(gate, "a", deadline=soon(HANG_GUARD_S)))
        await wait_for(gate.started, "the decode to start")
        request.cancel()  # as when the HTTP client leaves
        with pytest.raises(asyncio.CancelledError):
            await request
        assert (pool.live, pool.abandoned) == (0, 1)
        gate.open()
        await until(lambda: pool.abandoned == 0, "the abandoned decode to end")
        pool.shutdown()

    asyncio.run(scenario())


def test_a_request_cancelled_while_waiting_for_a_thread_leaves_the_thread_free():
    """A client that leaves while its image waits for a decode thread must not take the thread
    with it: the next decode runs at once."""

    async def scenario() -> None:
        pool = DecodePool(threads=1, max_abandoned=1)
        gate = Gate()
        first = asyncio.ensure_future(pool.run(gate, "a", deadline=soon(HANG_GUARD_S)))
        await wait_for(gate.started, "the first decode to start")
        waiting = asyncio.ensure_future(pool.run(str.upper, "b", deadline=soon(HANG_GUARD_S)))
        await until(lambda: pool.live == 2, "the second request to wait for the thread")
        waiting.cancel()  # as when the HTTP client leaves
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.open()
        assert await first == "a"
        assert await pool.run(str.upper, "c", deadline=soon(FREE_THREAD_S)) == "C"
        assert pool.running == 0
        pool.shutdown()

    asyncio.run(scenario())

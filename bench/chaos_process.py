"""The server process's resident memory and open file descriptors, read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from bench.chaos_verdict import ProcSample

SAMPLE_EVERY_S = 2.0  # the RSS and fd series (the verdict uses the settled samples)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_sample(pid: int, t0: float) -> ProcSample:
    """One sample, its time in seconds since ``t0`` (a perf_counter reading)."""
    return ProcSample(round(time.perf_counter() - t0, 2), rss_mib(pid), open_fds(pid))


async def sample_series(pid: int, t0: float, series: list[ProcSample], stop: asyncio.Event) -> None:
    """Append a sample to ``series`` every SAMPLE_EVERY_S until ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(OSError):
            series.append(proc_sample(pid, t0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)

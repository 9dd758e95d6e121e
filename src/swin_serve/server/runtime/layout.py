"""How a model's runs share the CPU's cores, chosen when the model loads by timing them here.

Two ways to spend P cores on a model, and no CPU where one wins both ways:

- **wide**: one run at a time on all P threads. A lone image finishes soonest, but a Swin block
  is a long chain of small operators, and every one of them pays to split over threads and join.
- **narrow**: R runs side by side (R = P, at most 4), P / R threads each. Nothing is split or
  joined, so a busy server gets the most images per second, but a lone image gets one share.

So the engine keeps both and sends each run where it belongs (``Lanes``): a run that starts
while no other runs takes the wide lane; one that starts beside another takes a narrow one. The
price is a second copy of the packed weights, which ``calibrate`` pays only where the timings
on this CPU say that both lanes are worth having:

- ``narrow``: a lone run gains too little from more threads, so the wide lane would buy
  nothing;
- ``hybrid``: the wide lane is faster alone by the margin below, and the narrow lanes are not
  clearly slower under load;
- ``wide``: faster alone, and runs side by side clearly slower than one after the other.

``SWIN_CPU_LAYOUT`` names one of these instead of timing them; ``SWIN_INTRA_OP_THREADS`` or
``SWIN_PARALLEL_BATCHES`` set by hand bypass all of it (``manual``: one runner as configured).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# A runner: float32 (N, 3, S, S) -> the model's raw outputs, in the engine's output order.
Runner = Callable[[np.ndarray], list[np.ndarray]]

# The timings are taken once, at load, on a machine that may be busy for that moment, and a wrong
# drop lasts the life of the model; so a lane is dropped only on clear evidence. The wide lane
# goes when a lone run is less than 10% faster on it. The narrow lanes go only when they are 20%
# slower under load than one wide run after another: a batch timed alone on the wide lane leaves
# the cores idle between runs (decoding, batching, answering), which runs side by side fill, so
# the engine-level timing undersells them.
WIDE_GAIN = 0.9
NARROW_GAIN = 0.8
MAX_NARROW_RUNS = 4
_LONE_REPS = 2
_LOADED_REPS = 3
_ROUNDS = 3  # lone timings alternate between the lanes, so a burst of load hits both


@dataclass(frozen=True)
class Lane:
    runs: int  # runs at once
    threads: int  # threads per run


def lanes_for(cpus: int) -> tuple[Lane, Lane]:
    """(wide, narrow) for ``cpus`` cores."""
    runs = min(cpus, MAX_NARROW_RUNS)
    return Lane(1, cpus), Lane(runs, max(1, cpus // runs))


@dataclass(frozen=True)
class LayoutChoice:
    name: str  # wide | narrow | hybrid | manual
    parallel_runs: int  # batches the batcher may run at once
    wide: Lane | None
    narrow: Lane | None
    reason: str
    figures: dict[str, float] = field(default_factory=dict)  # what was timed, rounded

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_lone(run: Runner, feed: np.ndarray, reps: int = _LONE_REPS) -> float:
    """Median milliseconds of ``reps`` runs of ``feed``, one at a time, after one unmeasured."""
    run(feed)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_loaded(run: Runner, feed: np.ndarray, runs: int, reps: int = _LOADED_REPS) -> float:
    """Images per second with ``runs`` threads each running ``feed`` ``reps`` times at once."""
    barrier = threading.Barrier(runs)

    def worker() -> None:
        barrier.wait()
        for _ in range(reps):
            run(feed)

    with ThreadPoolExecutor(runs) as pool:
        run(feed)
        start = time.perf_counter()
        for future in [pool.submit(worker) for _ in range(runs)]:
            future.result()
    return runs * reps * len(feed) / (time.perf_counter() - start)


def decide(lone_wide_ms: float, lone_narrow_ms: float, loaded_narrow: float) -> tuple[str, str]:
    """The layout, and why, from the timings (a lone run on each lane, the narrow lanes full).

    One wide run after another serves ``1000 / lone_wide_ms`` images per second under load."""
    loaded_wide = 1e3 / lone_wide_ms
    figures = (
        f"a lone run {lone_wide_ms:.1f} ms wide, {lone_narrow_ms:.1f} ms narrow; under load "
        f"{loaded_narrow:.1f} img/s narrow, {loaded_wide:.1f} wide"
    )
    if lone_wide_ms > WIDE_GAIN * lone_narrow_ms:
        return "narrow", f"{figures}: more threads barely speed up a lone run"
    if loaded_narrow >= NARROW_GAIN * loaded_wide:
        return "hybrid", f"{figures}: the wide lane for a lone run, the narrow ones under load"
    return "wide", f"{figures}: runs side by side are slower than one after the other"


def calibrate(
    open_lane: Callable[[Lane], Runner], cpus: int, feed: np.ndarray, wanted: str = "auto"
) -> tuple[LayoutChoice, Runner | None, Runner | None]:
    """Open the lanes for ``cpus`` cores, time them on ``feed`` unless ``wanted`` names a layout,
    and keep what the layout uses: (choice, wide runner or None, narrow runner or None)."""
    wide, narrow = lanes_for(cpus)
    if cpus == 1:  # both lanes are the same one
        return (
            LayoutChoice("wide", 1, wide, None, "one CPU: one run at a time"),
            open_lane(wide),
            None,
        )
    opened: dict[Lane, Runner] = {}
    figures: dict[str, float] = {}
    if wanted != "auto":
        name, reason = wanted, f"SWIN_CPU_LAYOUT={wanted}"
    else:
        opened = {narrow: open_lane(narrow), wide: open_lane(wide)}
        figures = _timings(opened[wide], opened[narrow], narrow.runs, feed)
        name, reason = decide(
            figures["lone_wide_ms"], figures["lone_narrow_ms"], figures["loaded_narrow_img_s"]
        )
    kept = {lane for lane, used in ((wide, name != "narrow"), (narrow, name != "wide")) if used}
    runners = {lane: opened.get(lane) or open_lane(lane) for lane in kept}
    choice = LayoutChoice(
        name,
        narrow.runs if narrow in kept else 1,
        wide if wide in kept else None,
        narrow if narrow in kept else None,
        reason,
        {k: round(v, 2) for k, v in figures.items()},
    )
    return choice, runners.get(wide), runners.get(narrow)


def _timings(run_wide: Runner, run_narrow: Runner, runs: int, feed: np.ndarray) -> dict:
    """Medians of ``_ROUNDS`` alternating lone timings of each lane, and the narrow lanes full."""
    wide, narrow = [], []
    for _ in range(_ROUNDS):
        wide.append(time_lone(run_wide, feed))
        narrow.append(time_lone(run_narrow, feed))
    lone_wide = statistics.median(wide)
    return {
        "lone_wide_ms": lone_wide,
        "lone_narrow_ms": statistics.median(narrow),
        "loaded_narrow_img_s": time_loaded(run_narrow, feed, runs),
        "loaded_wide_img_s": 1e3 / lone_wide,
    }


class Lanes:
    """Sends each run to a lane: the wide one when no other run is in progress (and the layout
    has one), a narrow one otherwise. Thread-safe: the batcher's run threads call it at once."""

    def __init__(self, wide: Runner | None, narrow: Runner | None) -> None:
        if wide is None and narrow is None:
            raise ValueError("a layout needs at least one lane")
        self._wide, self._narrow = wide, narrow
        self._busy = 0
        self._lock = threading.Lock()

    def __call__(self, feed: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            alone = self._busy == 0
            self._busy += 1
        run = (
            self._wide
            if (alone and self._wide is not None) or self._narrow is None
            else self._narrow
        )
        try:
            return run(feed)
        finally:
            with self._lock:
                self._busy -= 1

    def runners(self) -> dict[str, Runner]:
        """Each lane by name, for checks that must cover both (the golden self-check)."""
        return {k: v for k, v in (("wide", self._wide), ("narrow", self._narrow)) if v is not None}

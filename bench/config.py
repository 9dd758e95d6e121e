"""How long each benchmark runs: one frozen config per benchmark, with its full values (the
figures in bench/results/) and its quick ones (``--quick``: a smoke run of the same code).

Times are in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Modes(Generic[T]):
    """A benchmark's config in each mode."""

    full: T
    quick: T

    def pick(self, quick: bool, **overrides: Any) -> T:
        """The mode's config, with the ``overrides`` that are set (not 0 or None)."""
        chosen = self.quick if quick else self.full
        return dataclasses.replace(chosen, **{k: v for k, v in overrides.items() if v})


def as_json(cfg: Any) -> dict[str, Any]:
    """A config as results files record it: its fields, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


@dataclass(frozen=True)
class Suite:
    """``all`` and its parts: engine, service, protocols and profile."""

    batches: tuple[int, ...]
    engine_reps: int
    engine_warmup: int
    min_images: int
    concurrency: tuple[int, ...]
    duration_s: float
    warmup_s: float
    service_reps: int
    idle_s: float
    protocol_rounds: int
    profile_s: float  # 0: the profile is left out of ``all``


SUITE = Modes(
    full=Suite((1, 2, 4, 8, 16, 32), 3, 1, 8, (1, 4, 16, 64), 15.0, 8.0, 2, 10.0, 6, 12.0),
    quick=Suite((1, 8), 1, 1, 1, (1, 16), 4.0, 3.0, 1, 3.0, 2, 0.0),
)


@dataclass(frozen=True)
class Swap:
    rounds: int  # swaps, alternately each way
    warmup_s: float
    before_s: float  # the window before SIGHUP whose latencies are the reference


SWAP = Modes(full=Swap(6, 8.0, 10.0), quick=Swap(1, 3.0, 4.0))


@dataclass(frozen=True)
class Interleaved:
    """Two servers loaded in turn, ``rounds`` times (tracing off/on, baseline base/head)."""

    rounds: int
    duration_s: float
    warmup_s: float


@dataclass(frozen=True)
class Tracing(Interleaved):
    idle_s: float


TRACING = Modes(full=Tracing(6, 15.0, 8.0, 5.0), quick=Tracing(2, 4.0, 3.0, 2.0))
BASELINE = Modes(full=Interleaved(6, 15.0, 8.0), quick=Interleaved(1, 4.0, 3.0))


@dataclass(frozen=True)
class Chaos:
    minutes: float
    cycle_s: float
    overload_s: float  # of every cycle
    calibrate_s: float


CHAOS = Modes(full=Chaos(30.0, 30.0, 10.0, 8.0), quick=Chaos(2.0, 15.0, 5.0, 3.0))


@dataclass(frozen=True)
class OverloadRefusal:
    calibrate_s: float
    warmup_s: float
    duration_s: float


OVERLOAD_REFUSAL = Modes(full=OverloadRefusal(8.0, 3.0, 20.0), quick=OverloadRefusal(3.0, 1.0, 5.0))

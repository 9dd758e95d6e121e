"""What each benchmark run records, the same way for every benchmark: when and where it ran
(``meta``), then its results as ``NAME.json`` and, where it has a Markdown rendering,
``NAME.md`` beside it."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine_info, progress, write_json
from bench.config import as_json


@dataclass(frozen=True)
class Run:
    """How a benchmark command is run: where its results go, quick or full, the rounds asked for
    (0: the benchmark's own number), and the CPUs the server and the load generator are pinned
    to (None: not pinned)."""

    out_dir: Path
    quick: bool
    rounds: int = 0
    server_cpus: list[int] | None = None
    loadgen_cpus: list[int] | None = None


class RunClock:
    """Started before any work: the run's own load must not count as the load it started under."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.machine = machine_info()

    def meta(
        self, *, quick: bool, config: Any, constants: dict[str, Any] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """The run's description: ``config`` (a bench.config dataclass) with the benchmark's
        ``constants`` beside its fields, then ``extra``."""
        return {
            "started": self.started,
            "mode": "quick" if quick else "full",
            "seconds": round(time.perf_counter() - self.t0, 1),
            "machine": self.machine,
            "config": {**as_json(config), **(constants or {})},
            **extra,
        }


def write_results(
    out_dir: Path, name: str, results: dict[str, Any], markdown: str | None = None
) -> None:
    """``NAME.json`` and, with ``markdown``, ``NAME.md`` (also printed) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{name}.json"]
    write_json(written[0], results)
    if markdown is not None:
        written.append(out_dir / f"{name}.md")
        written[1].write_text(markdown)
        print(markdown)
    progress(f"results in {' and '.join(map(str, written))}")

"""Numbered step lines on stderr, so that a long export says what it is doing."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Prints `[i/n] title ...` as a step starts and its duration (or FAILED) as it ends."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = self.done = 0

    def begin(self, total: int) -> None:
        self.total, self.done = total, 0

    def step(self, title: str) -> _Step:
        self.done += 1
        return _Step(self, f"[{self.done}/{self.total}] {title}")

    def warn(self, message: str) -> None:
        bar = "!" * 78
        print(f"\n{bar}\n{message}\n{bar}\n", file=self.stream, flush=True)


class _Step:
    def __init__(self, progress: Progress, title: str):
        self.progress, self.title = progress, title

    def __enter__(self) -> _Step:
        print(f"{self.title} ...", file=self.progress.stream, flush=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, *_) -> None:
        took = time.perf_counter() - self.start
        status = "done" if exc_type is None else "FAILED"
        print(f"    {status} in {took:.1f} s", file=self.progress.stream, flush=True)

"""Helpers shared by test modules (importable as `tests.support`; conftest files are not)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

IMAGE_SUFFIXES = frozenset({".jpg", ".png", ".gif", ".bmp", ".webp"})

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> Samples:
    """Prometheus text -> {(sample name, sorted labels): value}, with prometheus-client's parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def sample_images(images_dir: Path) -> list[Path]:
    """Every image file in samples/images, by name (its README and LICENSE left out)."""
    return sorted(p for p in images_dir.iterdir() if p.suffix in IMAGE_SUFFIXES)


# Batched and single runs reach the same scores through different BLAS kernels (and CPUs differ
# in which they have), so they agree to float32 rounding, not bit for bit: a few ulp (1e-7) on
# a probability. 1e-6 is ten times that, far below any real difference between two images.
SCORE_ATOL = 1e-6


def assert_same_predictions(got: list[dict], want: list[dict], atol: float = SCORE_ATOL) -> None:
    """Classification results per image agree: scores within ``atol``, classes in the same order
    except where two scores are within ``atol`` of each other (a tie rounding may flip)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        g_preds, w_preds = g["predictions"], w["predictions"]
        assert len(g_preds) == len(w_preds)
        for gp, wp in zip(g_preds, w_preds, strict=True):
            assert gp["score"] == pytest.approx(wp["score"], abs=atol), (gp, wp)
            if gp["index"] != wp["index"]:  # only a tie may swap two classes
                tied = {p["index"] for p in w_preds if abs(p["score"] - gp["score"]) <= atol}
                assert gp["index"] in tied, (gp, wp)
            else:
                assert gp["label"] == wp["label"]


def server_seconds(resp: httpx.Response) -> float:
    """The server's own time for a response (its Server-Timing "total"): unlike the client's
    clock, it leaves out the client's waits for a CPU on a busy machine."""
    timing = resp.headers.get("Server-Timing", "")
    for part in timing.split(","):
        name, _, rest = part.strip().partition(";")
        if name == "total" and rest.startswith("dur="):
            return float(rest.removeprefix("dur=")) / 1e3
    raise AssertionError(f"no Server-Timing total in {timing!r}")


def skip_unless_ci(reason: str) -> None:
    """Skip locally; fail in CI (CI=true), where whatever the suite needs must be installed and
    a skip would turn a broken install into a green run."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason} (in CI this is a failure, not a skip)")
    pytest.skip(reason)


def need_make() -> None:
    """GNU make, which the README's commands use (CI runs them)."""
    if shutil.which("make") is None:
        skip_unless_ci("GNU make is not installed")


def need_wrk() -> None:
    """The load generator of the benchmarks, from the OS (`.ci/run` installs it)."""
    if shutil.which("wrk") is None:
        skip_unless_ci("wrk is not installed (apt-get install wrk)")


async def until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Wait until ``condition()`` is true: an order of events made certain, where a fixed sleep
    only makes it likely (on a busy machine the other task may not have run yet)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)


async def eventually(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """``until``, failing with what it waited for."""
    try:
        await until(condition, timeout_s)
    except AssertionError:
        raise AssertionError(f"not within {timeout_s:.0f} s: {what}") from None


async def within(awaitable: Awaitable[T], what: str, timeout_s: float = 30.0) -> T:
    """``await awaitable``, failing with what it waited for if that takes over ``timeout_s``."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:.0f} s: {what}") from None


def settle(path: Path) -> Path:
    """Date ``path`` a minute back, so that the repository takes it as settled (not a file still
    being copied in) at once."""
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def checkout_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``environ`` with this checkout's ``src`` (and root, for ``tests`` and ``bench``) first on
    PYTHONPATH: a Python started with it imports ``swin_serve`` from here, never from wherever
    the editable install points (another checkout) nor from an inherited PYTHONPATH entry."""
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), *rest])}

"""Helpers shared by test modules (importable as `tests.support`; conftest files are not)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


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


def wait_ready(
    base_url: str,
    proc: subprocess.Popen,
    timeout_s: float = 90.0,
    log: Callable[[], str] = lambda: "",
) -> None:
    """Poll `/readyz` until it answers 200; fail the test, with the server's log, if the
    process exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"python -m service exited with {proc.returncode}:\n{log()}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"server at {base_url} not ready within {timeout_s:.0f} s:\n{log()}")

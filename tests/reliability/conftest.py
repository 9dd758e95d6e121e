"""Fixtures for the reliability suite: the real server as a separate process, on loopback only.

``start_server(**settings)`` runs ``python -m tests.reliability.harness`` (the real
``swin_serve.server.__main__``, optionally with a slowed or failing engine) through
``tests.support.live_server`` with the tiny exported model and the settings below; keywords
``harness_*`` configure the harness (``harness_fail_runs="0"`` -> ``HARNESS_FAIL_RUNS=0``), any
other is a setting or a keyword of ``start_server`` (``command``, ``wait``). Every server is
stopped at teardown. The ``helpers`` fixture hands shared helpers on to test modules.

The server runs this checkout's code, whatever the virtualenv's editable install points at
(``checkout_env``; tests/reliability/test_harness_tree.py guards this).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support import ROOT, checkout_env, metric, parse_metrics
from tests.support.live_server import LiveServer, Servers

HARNESS_COMMAND = (sys.executable, "-m", "tests.reliability.harness")  # run with cwd=ROOT
SETTINGS: dict[str, Any] = {
    "intra_op_threads": 1,
    "precision": "fp32",  # the harness injects its faults into ONNX Runtime's engine
    "decode_threads": 2,
    "grpc_port": 0,  # a test that wants gRPC passes a free port
}


class HarnessServers(Servers):
    """Servers run by the harness, its ``harness_*`` keywords passed as HARNESS_* variables."""

    def __call__(self, **settings: Any) -> LiveServer:
        harness = [k for k in settings if k.startswith("harness_")]
        env = {k.upper(): str(settings.pop(k)) for k in harness}
        return super().__call__(env=env, **settings)


def _servers(model_path: Path, log_dir: Path) -> HarnessServers:
    return HarnessServers(log_dir, command=HARNESS_COMMAND, model_path=model_path, **SETTINGS)


@pytest.fixture
def start_server(tiny_model_path, tmp_path) -> Iterator[Callable[..., LiveServer]]:
    """``start_server(**settings)``: a real server process for this test."""
    with _servers(tiny_model_path, tmp_path) as servers:
        yield servers


@pytest.fixture(scope="module")
def start_module_server(tiny_model_path, tmp_path_factory) -> Iterator[Callable[..., LiveServer]]:
    """The same, for servers shared by a whole module."""
    with _servers(tiny_model_path, tmp_path_factory.mktemp("servers")) as servers:
        yield servers


@pytest.fixture
def jpeg() -> Callable[..., bytes]:
    def make(size: tuple[int, int] = (96, 80), color=(120, 200, 40)) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    return make


@pytest.fixture
def helpers():
    """The module-level helpers, for test modules (which cannot import conftest)."""

    class Helpers:
        parse_metrics = staticmethod(parse_metrics)
        metric = staticmethod(metric)
        checkout_env = staticmethod(checkout_env)
        harness_command = HARNESS_COMMAND
        root = ROOT

    return Helpers

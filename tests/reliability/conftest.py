"""Fixtures for the reliability suite: the real server as a separate process, on loopback only.

``start_server(**settings)`` runs ``python -m tests.reliability.harness`` (the real
``swin_serve.server.__main__``, optionally with a slowed or failing engine) on a free 127.0.0.1 port with the
tiny exported model, waits for readiness and stops it at teardown (SIGTERM, then SIGKILL of that
one PID). Shared helpers live in ``tests/support/__init__.py``; the ``helpers`` fixture hands them on.

The server runs this checkout's code, whatever the virtualenv's editable install points at: it
starts from the repository root with the root first on PYTHONPATH (``checkout_env``), so
``import swin_serve`` never falls through to the install's finder (tests/reliability/
test_harness_tree.py guards this).
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support import checkout_env, free_port, metric, parse_metrics, wait_for_readyz

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("harness.py")
HARNESS_COMMAND = (sys.executable, "-m", "tests.reliability.harness")  # run with cwd=ROOT


class LiveServer:
    """One server process started by a test."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """Resident set size of the server process, from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def metrics(self) -> dict:
        return parse_metrics(httpx.get(f"{self.base}/metrics", timeout=5).text)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.settimeout(timeout)
        return sock

    def wait_for_readyz(self, timeout_s: float = 60.0) -> None:
        wait_for_readyz(self.base, self.proc, timeout_s, self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_env(model_path: Path, port: int, **settings: Any) -> dict[str, str]:
    """The environment for a server process: this checkout first on PYTHONPATH, no inherited
    SWIN_*/HARNESS_*, then ``settings`` (keys are setting names, ``harness_*`` keys configure the
    harness)."""
    env = {
        k: v
        for k, v in checkout_env().items()
        if not k.startswith(("SWIN_", "HARNESS_", "OMP_", "MKL_"))
    }
    base: dict[str, Any] = {
        "model_path": model_path,
        "port": port,
        "host": "127.0.0.1",
        "providers": "cpu",
        "log_level": "warning",
        "intra_op_threads": 1,
        "precision": "fp32",  # the harness injects its faults into ONNX Runtime's engine
        "decode_threads": 2,
        "grpc_port": 0,  # a test that wants gRPC passes a free port
    }
    base.update(settings)
    for key, value in base.items():
        name = key.upper() if key.startswith("harness_") else f"SWIN_{key.upper()}"
        env[name] = str(value)
    return env


class Launcher:
    """Starts servers and stops every one it started (only those PIDs) at ``close()``."""

    def __init__(self, model_path: Path, log_dir: Path) -> None:
        self.model_path = model_path
        self.log_dir = log_dir
        self.started: list[LiveServer] = []

    def __call__(self, *, wait: bool = True, **settings: Any) -> LiveServer:
        port = free_port()
        log_path = self.log_dir / f"server-{port}.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                list(HARNESS_COMMAND),
                cwd=ROOT,
                env=server_env(self.model_path, port, **settings),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = LiveServer(proc, port, log_path)
        self.started.append(server)
        if wait:
            server.wait_for_readyz()
        return server

    def close(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def start_server(tiny_model_path, tmp_path) -> Iterator[Callable[..., LiveServer]]:
    """``start_server(**settings)``: a real server process for this test."""
    launcher = Launcher(tiny_model_path, tmp_path)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def start_module_server(tiny_model_path, tmp_path_factory) -> Iterator[Callable[..., LiveServer]]:
    """The same, for servers shared by a whole module."""
    launcher = Launcher(tiny_model_path, tmp_path_factory.mktemp("servers"))
    yield launcher
    launcher.close()


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
        free_port = staticmethod(free_port)
        server_env = staticmethod(server_env)
        checkout_env = staticmethod(checkout_env)
        harness = HARNESS
        harness_command = HARNESS_COMMAND
        root = ROOT

    return Helpers

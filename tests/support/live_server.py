"""A real ``swin-serve`` process for a test: started on free loopback ports with this checkout's
code, ready (``/readyz`` 200) before the test sees it, and stopped with SIGTERM (then SIGKILL of
that one PID).

``start_server(log_dir, **settings)`` starts one; a keyword such as ``max_batch_size=2`` becomes
``SWIN_MAX_BATCH_SIZE=2``. ``Servers`` starts several with shared settings and stops them all.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, Samples, checkout_env, free_port, parse_metrics

SERVE = (sys.executable, "-m", "swin_serve.server")  # run with cwd=ROOT
# The developer's shell must not change what a test serves: no settings, thread counts,
# fault injection or trace export reach the server except the ones a test names.
NOT_INHERITED = ("SWIN_", "OMP_", "MKL_", "HARNESS_", "OTEL_")
DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "providers": "cpu",
    "precision": "fp32",  # tests compare with ONNX Runtime fp32 unless they name another
    "log_level": "warning",
}
READY_TIMEOUT_S = 90.0  # a slow, busy 2-core runner loading and self-checking a model
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 8000


class LiveServer:
    """One server process: ``base`` (its HTTP URL), ``grpc_address`` (host:port, "" with gRPC
    off), ``proc`` and its combined stdout and stderr in ``log_path``."""

    def __init__(self, proc: subprocess.Popen, port: int, grpc_port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.grpc_address = f"127.0.0.1:{grpc_port}" if grpc_port else ""
        self.log_path = log_path

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log()[-LOG_TAIL_CHARS:]

    def metrics(self) -> Samples:
        return parse_metrics(httpx.get(f"{self.base}/metrics", timeout=5).text)

    def rss_bytes(self) -> int:
        """Resident set size of the server process, from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.settimeout(timeout)
        return sock

    def wait_for_readyz(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until ``/readyz`` answers 200; fails the test, with the log's tail, if the process
        exits first or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"swin-serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"server at {self.base} not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def server_env(settings: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with this checkout first on PYTHONPATH and nothing of
    NOT_INHERITED, then ``settings`` as SWIN_* variables, then ``env`` as it is."""
    inherited = {k: v for k, v in checkout_env().items() if not k.startswith(NOT_INHERITED)}
    swin = {f"SWIN_{key.upper()}": str(value) for key, value in settings.items()}
    return {**inherited, **swin, **(env or {})}


def start_server(
    log_dir: Path,
    *,
    command: Sequence[str] = SERVE,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    **settings: Any,
) -> LiveServer:
    """``command`` (``swin-serve`` by default) from the repository root, with DEFAULTS and then
    ``settings`` as SWIN_* variables and ``env`` on top; HTTP and gRPC on free ports unless
    ``port``/``grpc_port`` are given (``grpc_port=0``: gRPC off). Ready unless ``wait`` is
    false; its output goes to ``log_dir/server-<port>.log``."""
    settings = {**DEFAULTS, **settings}
    port = settings.setdefault("port", free_port())
    grpc_port = settings.setdefault("grpc_port", free_port())
    log_path = Path(log_dir) / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(command),
            cwd=ROOT,
            env=server_env(settings, env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(proc, port, grpc_port, log_path)
    if wait:
        try:
            server.wait_for_readyz()
        except BaseException:
            server.stop()
            raise
    return server


class Servers:
    """``Servers(log_dir, **defaults)(**settings)`` starts a server with ``defaults`` updated
    by ``settings`` (any keyword of ``start_server``); ``close()`` stops every one it started."""

    def __init__(self, log_dir: Path, **defaults: Any) -> None:
        self.log_dir = log_dir
        self.defaults = defaults
        self.started: list[LiveServer] = []

    def __call__(self, **settings: Any) -> LiveServer:
        server = start_server(self.log_dir, **{**self.defaults, **settings})
        self.started.append(server)
        return server

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for server in self.started:
            server.stop()

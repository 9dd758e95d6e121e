"""One server under benchmark as a process tree: start, wait until healthy, measure, pause, stop.

Every figure is over the whole tree the command starts (bench.proctree), since a server such as
LitServe does its work in child processes. The tree runs in a session of its own, so that a
stop also reaps children the server's main process leaves behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic, sleep
from typing import Any

from bench.common import ROOT, progress
from bench.proctree import session_pids, tree_cpu_seconds, tree_pids, tree_rss_mb

# How far above its own idle CPU use a server may be and still count as idle, in cores. Serving
# one request keeps at least one core busy, so a server still working off a backlog stays well
# above this.
IDLE_MARGIN_CORES = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def idle_threshold(idle_cores: float | None) -> float:
    """CPU use (cores) under which a server whose idle use is ``idle_cores`` counts as idle.

    Near its own baseline rather than under a fixed figure: a server that polls while idle
    never gets below a fixed figure. Twice the baseline at most, since such polling varies.
    """
    if idle_cores is None:
        return IDLE_MARGIN_CORES
    return idle_cores + max(IDLE_MARGIN_CORES, idle_cores)


@dataclass
class Server:
    name: str
    label: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    cpus: list[int] | None = None
    proc: subprocess.Popen | None = None
    log: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    inherit_settings: bool = True  # False: SWIN_* variables of this shell do not reach it
    capture_log: bool = True  # False: its output goes to this terminal, and tail() is empty
    health_path: str = "/readyz"  # answers 200 once the server takes requests
    idle_cores: float | None = None  # its CPU use with no load, once measured

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = self.cmd
        if self.cpus:
            cmd = ["taskset", "-c", ",".join(map(str, self.cpus)), *cmd]
        env = {
            k: v
            for k, v in os.environ.items()
            if self.inherit_settings or not k.startswith("SWIN_")
        }
        if self.capture_log:
            # Closed in stop(); the server writes to it for the whole benchmark.
            self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{self.name}-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**env, **self.env},
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until ``health_path`` answers 200; fail with the log if it exits or times out."""
        assert self.proc is not None
        deadline = monotonic() + timeout_s
        while monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            url = f"{self.base}{self.health_path}"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
            sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def rss_mb(self) -> float:
        assert self.proc is not None
        return tree_rss_mb(self.proc.pid)

    def wait_idle(self, timeout_s: float = 180.0, window_s: float = 0.5) -> float:
        """Block until the server has finished the previous run's backlog; returns seconds waited.

        wrk stops at its deadline with requests still queued in the server; without this wait
        they would be served during the next run and count against it. Idle means CPU use near
        the server's own idle baseline (``idle_threshold``, ``measure_idle``).
        """
        limit = idle_threshold(self.idle_cores) * window_s
        t0 = monotonic()
        while monotonic() - t0 < timeout_s:
            c0 = self.cpu_seconds()
            sleep(window_s)
            if self.cpu_seconds() - c0 < limit:
                return monotonic() - t0
        progress(f"{self.name} still busy after {timeout_s:.0f} s; going on")
        return monotonic() - t0

    def pause(self) -> None:
        """Freeze the whole tree (SIGSTOP): an idle server that polls takes no CPU from the
        server under load."""
        self._signal_tree(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_tree(signal.SIGCONT)

    def _signal_tree(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in tree_pids(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def tail(self, n: int = 4000) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the server drains), SIGKILL after ``timeout_s``; returns the exit status.

        Whatever the main process leaves of its session (LitServe's workers outlive it) is
        terminated too.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            _end_session(self.proc.pid)
        if self.log is not None:
            self.log.close()
        return None if self.proc is None else self.proc.returncode


def measure_idle(servers: list[Server], seconds: float) -> dict[str, float]:
    """Every server's CPU use over the same ``seconds`` with no load, in cores; each becomes
    that server's idle baseline. Measured together: each figure is its own process tree's,
    and idle servers barely compete."""
    c0, t0 = [s.cpu_seconds() for s in servers], monotonic()
    sleep(seconds)
    wall = monotonic() - t0
    for s, c in zip(servers, c0, strict=True):
        s.idle_cores = (s.cpu_seconds() - c) / wall
    return {s.name: s.idle_cores for s in servers}


def _end_session(sid: int, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process still running in the session ``sid``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                os.kill(
                    pid, signal.SIGCONT
                )  # a paused orphan acts on the SIGTERM only when resumed
        deadline = monotonic() + grace_s
        while session_pids(sid):
            if monotonic() > deadline:
                break
            sleep(0.1)
        else:
            return

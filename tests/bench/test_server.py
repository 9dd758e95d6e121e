"""A benchmarked server as a process tree: CPU and memory summed over it, pausing it, stopping
all of it, and when it counts as idle (nothing here asserts a duration)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from bench import server_process as server_module
from bench.proctree import (
    PeakRss,
    process_cpu_seconds,
    process_rss_mb,
    session_pids,
    tree_cpu_seconds,
    tree_pids,
)
from bench.server_process import IDLE_MARGIN_CORES, Server, idle_threshold, measure_idle

MB = 2**20
# A worker, as LitServe's: it holds 64 MB, burns 0.5 s of CPU, then says so in a file. SIGUSR1
# makes it take 128 MB more, SIGUSR2 frees them; each says so in a file too.
WORKER = r"""
import os, signal, sys, time
from pathlib import Path

out = Path(sys.argv[1])

def touched(n):
    b = bytearray(n)  # calloc'd: a page counts as resident once written
    for i in range(0, n, 4096):
        b[i] = 1
    return b

held, extra = touched(64 * 2**20), []

def grow(*_):
    extra.append(touched(128 * 2**20))
    (out / "grown").touch()

def shrink(*_):
    extra.clear()
    (out / "shrunk").touch()

signal.signal(signal.SIGUSR1, grow)
signal.signal(signal.SIGUSR2, shrink)
t0 = time.process_time()
while time.process_time() - t0 < 0.5:
    pass
(out / "ready").write_text(str(os.getpid()))
while True:
    signal.pause()
"""
# Its parent starts it and waits; killed, it leaves the worker behind, as LitServe's main does.
PARENT = "import signal, subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]]); signal.pause()"


def _wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.fixture
def tree(tmp_path):
    """A Server whose work is done by a grandchild: (server, worker pid, handshake folder)."""
    server = Server("t", "t", [sys.executable, "-c", PARENT, WORKER, str(tmp_path)], {}, port=0)
    server.start()
    _wait_for(tmp_path / "ready")
    worker = int((tmp_path / "ready").read_text())
    yield server, worker, tmp_path
    server.stop(timeout_s=10)


def test_cpu_and_memory_are_summed_over_the_whole_tree(tree):
    server, worker, _ = tree
    parent = server.proc.pid
    assert tree_pids(parent) == [parent, worker]
    assert process_cpu_seconds(worker) >= 0.5
    assert process_cpu_seconds(parent) < 0.5
    assert server.cpu_seconds() == pytest.approx(tree_cpu_seconds(parent))
    assert tree_cpu_seconds(parent) >= process_cpu_seconds(parent) + 0.5
    assert process_rss_mb(worker) >= 64 * MB / 1e6
    assert server.rss_mb() >= process_rss_mb(parent) + 64 * MB / 1e6


def test_the_sampled_peak_keeps_memory_that_was_freed_before_the_end(tree):
    server, worker, folder = tree
    with PeakRss(server.proc.pid, interval_s=0.05) as peak:
        before = server.rss_mb()
        os.kill(worker, signal.SIGUSR1)
        _wait_for(folder / "grown")
        deadline = time.monotonic() + 30
        while peak.mb < before + 128 * MB / 1e6:  # the sampler's next look
            assert time.monotonic() < deadline, "the sampler never saw the 128 MB"
            time.sleep(0.05)
        os.kill(worker, signal.SIGUSR2)
        _wait_for(folder / "shrunk")
    assert peak.mb >= before + 128 * MB / 1e6
    assert server.rss_mb() < before + 64 * MB / 1e6  # freed: only the peak remembers it


def test_a_paused_tree_is_stopped_whole_and_resumes(tree):
    server, worker, _ = tree
    server.pause()
    deadline = time.monotonic() + 30
    while {_state(server.proc.pid), _state(worker)} != {"T"}:
        assert time.monotonic() < deadline, "the tree was not stopped"
        time.sleep(0.05)
    server.resume()
    while "T" in {_state(server.proc.pid), _state(worker)}:
        assert time.monotonic() < deadline, "the tree was not resumed"
        time.sleep(0.05)


def test_stop_also_ends_what_the_main_process_left_behind(tree):
    server, worker, _ = tree
    sid = server.proc.pid
    assert sorted(session_pids(sid)) == sorted([sid, worker])
    server.stop(timeout_s=10)
    assert _state(worker) in ("gone", "Z")  # a zombie if this machine's init does not reap
    assert session_pids(sid) == []


def test_a_server_is_idle_near_its_own_baseline_not_under_a_fixed_figure():
    assert idle_threshold(None) == IDLE_MARGIN_CORES  # before its baseline is known
    assert idle_threshold(0.0) == IDLE_MARGIN_CORES
    assert idle_threshold(0.3) == pytest.approx(0.6)  # polling varies: up to twice the baseline
    assert idle_threshold(0.02) == pytest.approx(0.12)


class _ScriptedServer(Server):
    """CPU seconds from a script instead of /proc, on a clock that sleeping advances."""

    def __init__(self, rates_cores, idle_cores):
        super().__init__("s", "s", [], {}, port=0, idle_cores=idle_cores)
        self.rates, self.used, self.clock = list(rates_cores), 0.0, 0.0

    def cpu_seconds(self):
        return self.used

    def sleep(self, s):
        self.used += self.rates.pop(0) * s if self.rates else 0.0
        self.clock += s


@pytest.mark.parametrize(
    ("idle_cores", "waited_windows"),
    [(0.3, 3), (None, 6)],
    ids=["with its baseline", "before its baseline: 0.1 core"],
)
def test_wait_idle_waits_out_the_backlog_then_stops_at_the_servers_idle_use(
    monkeypatch, idle_cores, waited_windows
):
    # Two windows of backlog at 1.9 cores, then a server polling at 0.3-0.35 cores, then quiet.
    server = _ScriptedServer([1.9, 1.9, 0.35, 0.3, 0.35, 0.05], idle_cores)
    monkeypatch.setattr(server_module, "sleep", server.sleep)
    monkeypatch.setattr(server_module, "monotonic", lambda: server.clock)
    waited = server.wait_idle(timeout_s=60, window_s=0.5)
    assert waited == pytest.approx(waited_windows * 0.5)


def test_wait_idle_gives_up_after_its_timeout(monkeypatch):
    server = _ScriptedServer([1.0] * 100, idle_cores=0.3)
    monkeypatch.setattr(server_module, "sleep", server.sleep)
    monkeypatch.setattr(server_module, "monotonic", lambda: server.clock)
    assert server.wait_idle(timeout_s=5, window_s=0.5) == pytest.approx(5.0)


def test_idle_use_measured_becomes_each_servers_baseline(monkeypatch):
    quiet, polling = _ScriptedServer([0.0], None), _ScriptedServer([0.25], None)
    polling.name = "polling"

    def sleep(s):  # one clock for both: they are measured over the same window
        quiet.sleep(s)
        polling.sleep(s)

    monkeypatch.setattr(server_module, "sleep", sleep)
    monkeypatch.setattr(server_module, "monotonic", lambda: quiet.clock)
    assert measure_idle([quiet, polling], 10.0) == {"s": 0.0, "polling": pytest.approx(0.25)}
    assert (quiet.idle_cores, polling.idle_cores) == (0.0, pytest.approx(0.25))

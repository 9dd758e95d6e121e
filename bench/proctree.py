"""A server's process tree from /proc: CPU time and resident memory summed over every process in it.

LitServe answers HTTP in one set of child processes and runs the model in another; the pid the
benchmark started holds little of either, so every figure here is over the pid and all its
descendants. Resident memory is each process's VmRSS added up: pages that several processes
share (the Python runtime, libraries) count once per process, as they would if the processes
ran on separate machines.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int, proc: Path = PROC) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def _processes(proc: Path) -> dict[int, list[str]]:
    """{pid: its /proc stat fields} of every process now (state, ppid, pgrp, session, ...)."""
    out = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):  # it exited while we read
                out[int(entry.name)] = _stat_fields(int(entry.name), proc)
    return out


def tree_pids(root: int, proc: Path = PROC) -> list[int]:
    """``root`` and every descendant alive now, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, fields in _processes(proc).items():
        children.setdefault(int(fields[1]), []).append(pid)
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(sorted(children.get(pid, ()), reverse=True))
    return pids


def session_pids(sid: int, proc: Path = PROC) -> list[int]:
    """The processes of session ``sid`` still running: a child whose parent died stays in its
    session, and a zombie (exited, never reaped: not every init reaps) is left out."""
    return [
        pid
        for pid, fields in _processes(proc).items()
        if int(fields[3]) == sid and fields[0] != "Z"
    ]


def process_cpu_seconds(pid: int, proc: Path = PROC) -> float:
    """utime + stime of a process (all its threads)."""
    fields = _stat_fields(pid, proc)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int, proc: Path = PROC) -> float:
    """VmRSS in MB (10^6 bytes); 0 for a process without one (a zombie)."""
    for line in (proc / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6  # the kernel's kB are KiB
    return 0.0


def tree_cpu_seconds(root: int, proc: Path = PROC) -> float:
    """CPU seconds of ``root`` and its descendants; a process that exits mid-read is left out."""
    return _tree_sum(root, process_cpu_seconds, proc)


def tree_rss_mb(root: int, proc: Path = PROC) -> float:
    return _tree_sum(root, process_rss_mb, proc)


def _tree_sum(root: int, read, proc: Path) -> float:
    total = 0.0
    for pid in tree_pids(root, proc):
        with contextlib.suppress(OSError, IndexError):
            total += read(pid, proc)
    return total


class PeakRss:
    """``with PeakRss(pid) as peak: ...`` then ``peak.mb``: the largest tree RSS seen meanwhile.

    A thread samples every ``interval_s``; a spike shorter than that can be missed, which is why
    the figure is called a sampled peak.
    """

    def __init__(self, root: int, interval_s: float = 0.2) -> None:
        self.root, self.interval_s = root, interval_s
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.mb = max(self.mb, tree_rss_mb(self.root))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, tree_rss_mb(self.root))  # the state at the end counts too

"""End-to-end benchmark: the real server (``python -m service``) and the naive peer, same load.

Both servers run for the whole benchmark and are loaded in turn, interleaved at every
concurrency level (service c=1, peer c=1, service c=4, ...), so a noisy neighbour hits both.
Per run: throughput, p50/p95/p99, errors (wrk: non-2xx + socket errors), the server's CPU time
per request (from /proc), the cores every other process used meanwhile (from /proc/stat: a
run they disturbed is visible), and for the service the mean batch size and the per-image
decode, queue-wait and per-batch inference times (differences of its /metrics histograms).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, machine_cpu_seconds, progress
from bench.loadgen import run_wrk

# The histograms whose _sum/_count differences the report needs.
HISTOGRAMS = (
    "swin_batch_size",
    "swin_decode_seconds",
    "swin_queue_wait_seconds",
    "swin_inference_seconds",
    "swin_request_duration_seconds",
)


def histogram_totals(text: str) -> dict[str, tuple[float, float]]:
    """Prometheus text -> {histogram: (sum, count)}, each added over all its label sets."""
    totals: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        total = count = 0.0
        for sample in family.samples:
            if sample.name == f"{family.name}_sum":
                total += sample.value
            elif sample.name == f"{family.name}_count":
                count += sample.value
        totals[family.name] = (total, count)
    return totals


def histogram_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, Any]:
    """Mean of each histogram over the observations made between two ``histogram_totals``."""
    out: dict[str, Any] = {}
    for name in HISTOGRAMS:
        s0, c0 = before.get(name, (0.0, 0.0))
        s1, c1 = after.get(name, (0.0, 0.0))
        n = c1 - c0
        out[name] = {"count": n, "mean": (s1 - s0) / n if n > 0 else None}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            cmd, cwd=ROOT, env={**env, **self.env}, stdout=self.log, stderr=self.log
        )

    def wait_for_readyz(self, timeout_s: float = 300.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def metrics(self) -> dict[str, tuple[float, float]]:
        """The server's histograms now, as ``histogram_totals``."""
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=10) as r:
            return histogram_totals(r.read().decode())

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def wait_idle(self, timeout_s: float = 180.0, window_s: float = 0.5) -> float:
        """Block until the server has finished the previous run's backlog (CPU use < 10%).

        wrk stops at its deadline with requests still queued in the server; without this wait
        they would be served during the next run and count against it. Returns seconds waited.
        """
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            c0 = self.cpu_seconds()
            time.sleep(window_s)
            if self.cpu_seconds() - c0 < 0.1 * window_s:
                break
        return time.monotonic() - t0

    def tail(self, n: int = 4000) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-n:]

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the server drains), SIGKILL after ``timeout_s``; returns the exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        return None if self.proc is None else self.proc.returncode


def service_server(model: Path, cpus: list[int] | None, env: dict[str, str]) -> Server:
    port = free_port()
    full_env = {
        "SWIN_MODEL_PATH": str(model),
        "SWIN_HOST": "127.0.0.1",
        "SWIN_PORT": str(port),
        "SWIN_LOG_LEVEL": "warning",
        # Every load here is HTTP; servers started side by side would contend for gRPC's port.
        "SWIN_GRPC_PORT": "0",
        **env,
    }
    return Server(
        "service",
        "swin-serve (ORT fp32, dynamic batching)",
        [sys.executable, "-m", "service"],
        full_env,
        port,
        cpus,
        info={"env": {k: v for k, v in full_env.items() if k != "SWIN_PORT"}},
    )


def peer_server(manifest: Path, cpus: list[int] | None) -> Server:
    port = free_port()
    return Server(
        "peer",
        "naive peer (FastAPI + PyTorch eager, no batching) - BASELINE",
        [sys.executable, "-m", "bench.peer"],
        {"PEER_MANIFEST": str(manifest), "PEER_PORT": str(port)},
        port,
        cpus,
    )


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_for_readyz()
            progress(f"{s.name} ready on :{s.port}")
        yield servers
    finally:
        for s in servers:
            s.stop()


def load_once(
    server: Server,
    script: Path,
    *,
    connections: int,
    duration_s: float,
    loadgen_cpus,
    path: str = "/classify",
) -> dict[str, Any]:
    """One wrk run against ``server``'s ``path``, with the server-side figures of the same window."""
    is_service = server.name.startswith("service")
    server.wait_idle()
    before = server.metrics() if is_service else None
    cpu0, machine0, t0 = server.cpu_seconds(), machine_cpu_seconds(), time.perf_counter()
    result = run_wrk(
        f"{server.base}{path}",
        script,
        connections=connections,
        duration_s=duration_s,
        cpus=loadgen_cpus,
    )
    # The metrics window closes once the requests wrk left in flight are done, so their batches
    # count; the CPU time is taken at wrk's end, per request wrk saw answered.
    cpu1, machine1, wall = server.cpu_seconds(), machine_cpu_seconds(), time.perf_counter() - t0
    if machine0 and machine1:
        result.update(
            others_load(machine0, machine1, cpu1 - cpu0, result["loadgen_cpu_share"], wall)
        )
    result["drain_s"] = round(server.wait_idle(), 2)
    result["server_cpu_s_per_request"] = (
        round((cpu1 - cpu0) / result["requests"], 4) if result["requests"] else None
    )
    if is_service:
        means = histogram_means(before, server.metrics())
        result["mean_batch_size"] = means["swin_batch_size"]["mean"]
        result["server_breakdown_ms"] = {
            "decode_per_image": _ms(means["swin_decode_seconds"]["mean"]),
            "queue_wait_per_image": _ms(means["swin_queue_wait_seconds"]["mean"]),
            "inference_per_batch": _ms(means["swin_inference_seconds"]["mean"]),
            "request_in_server": _ms(means["swin_request_duration_seconds"]["mean"]),
        }
    return result


def others_load(
    before: tuple[float, float],
    after: tuple[float, float],
    server_cpu_s: float,
    loadgen_share: float,
    wall_s: float,
) -> dict[str, float]:
    """What else the machine did during a run, in cores: every process but the server and wrk
    (the other work on a shared machine that makes runs drift), and the hypervisor's steal."""
    busy = after[0] - before[0]
    return {
        "others_cores": round(max(0.0, (busy - server_cpu_s) / wall_s - loadgen_share), 3),
        "steal_cores": round((after[1] - before[1]) / wall_s, 3),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def run_service_benchmark(
    servers: list[Server],
    body: Path,
    *,
    concurrency: tuple[int, ...],
    duration_s: float,
    warmup_s: float,
    reps: int,
    loadgen_cpus: list[int] | None,
    probe: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Interleaved load; per server and concurrency the run with the median throughput is kept.

    ``probe(concurrency, result)``, if given, runs right after each run of the server named
    "service" (the servers are idle then) and its dict is stored as ``result["engine_probe"]``:
    the raw-engine figure of the same moment, so service/engine ratios are not skewed by the
    machine's load drifting between the engine and service phases.
    """
    from bench.loadgen import lua_script

    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post_jpeg.lua"
        script.write_text(lua_script(body))
        with running(servers):
            for s in servers:  # warm every batch shape and the peer's allocator
                progress(f"warm-up {s.name}: c=16 for {warmup_s:g} s")
                run_wrk(
                    f"{s.base}/classify",
                    script,
                    connections=16,
                    duration_s=warmup_s,
                    cpus=loadgen_cpus,
                )
            runs: dict[str, dict[int, list[dict[str, Any]]]] = {
                s.name: {c: [] for c in concurrency} for s in servers
            }
            for rep, c, s in itertools.product(range(reps), concurrency, servers):
                r = load_once(
                    s, script, connections=c, duration_s=duration_s, loadgen_cpus=loadgen_cpus
                )
                if probe is not None and s.name == "service":
                    r["engine_probe"] = probe(c, r)
                runs[s.name][c].append(r)
                progress(f"rep {rep + 1}/{reps} c={c:<3} {s.name:<8} {summary_line(r)}")
            logs = {s.name: s.tail(1500) for s in servers}
    return {
        s.name: {
            "label": s.label,
            "info": s.info,
            "levels": {str(c): _median_run(rs) for c, rs in runs[s.name].items()},
            "log_tail": logs[s.name],
        }
        for s in servers
    }


def summary_line(r: dict[str, Any]) -> str:
    extra = f", mean batch {r['mean_batch_size']:.2f}" if r.get("mean_batch_size") else ""
    return (
        f"{r['throughput_rps']:7.2f} req/s  p50 {r['p50_ms']:8.1f} ms  "
        f"p99 {r['p99_ms']:8.1f} ms  errors {r['error_count']}{extra}"
    )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every run's throughput beside it."""
    ordered = sorted(runs, key=lambda r: r["throughput_rps"])
    kept = dict(ordered[len(ordered) // 2])
    kept["throughput_all_reps"] = [r["throughput_rps"] for r in runs]
    return kept

"""End-to-end benchmark: the real server (``swin-serve``) and its peers, same load.

The peers are the naive FastAPI + PyTorch server (bench.peers.naive) and LitServe in the configurations
a user would try on the machine (bench.peers.litserve_app, ``litserve_configs``). Every server runs
for the whole benchmark, serves the same JPEG through the same preprocessing and is loaded by
the same wrk, in turn, interleaved at every concurrency level (service c=1, peer c=1, ...,
service c=4, ...), so a noisy neighbour hits them all. The servers not under load are frozen
(SIGSTOP) meanwhile: LitServe polls while idle, and that CPU would be taken from the server
being measured.

Per run: throughput, p50/p95/p99, answers by status code and socket errors, the server's CPU
time per request and its sampled peak resident memory (both over its whole process tree, from
/proc), the cores every other process used meanwhile (from /proc/stat: a run they disturbed is
visible), and for the service the mean batch size and the per-image decode, queue-wait and
per-batch inference times (differences of its /metrics histograms). Per server, once, after the
warm-up: its idle CPU use.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.common import machine_cpu_seconds, progress
from bench.loadgen import run_wrk, unexpected_answers
from bench.proctree import PeakRss
from bench.server_process import Server, free_port, measure_idle

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


def scrape_histograms(server: Server) -> dict[str, tuple[float, float]]:
    """The service's histograms now, as ``histogram_totals``."""
    with urllib.request.urlopen(f"{server.base}/metrics", timeout=10) as r:
        return histogram_totals(r.read().decode())


def service_server(
    model: Path | None,
    cpus: list[int] | None,
    env: dict[str, str],
    description: str = "swin-serve (ORT fp32, dynamic batching)",
) -> Server:
    """The service on ``model``; with None, ``env`` says what it serves (a repository)."""
    port = free_port()
    full_env = {
        **({"SWIN_MODEL_PATH": str(model)} if model is not None else {}),
        "SWIN_HOST": "127.0.0.1",
        "SWIN_PORT": str(port),
        "SWIN_LOG_LEVEL": "warning",
        # Every load here is HTTP; servers started side by side would contend for gRPC's port.
        "SWIN_GRPC_PORT": "0",
        **env,
    }
    return Server(
        "service",
        description,
        [sys.executable, "-m", "swin_serve.server"],
        full_env,
        port,
        cpus,
        info={"env": {k: v for k, v in full_env.items() if k != "SWIN_PORT"}},
    )


def auto_precision(model: Path) -> str:
    """What SWIN_PRECISION=auto serves ``model`` at on this machine (src/swin_serve/server/runtime/precision.py)."""
    from swin_serve.server.runtime.engines import machine
    from swin_serve.server.runtime.precision import plan
    from swin_serve.server.settings import Settings

    return plan("auto", "auto", model, "fp32", machine(Settings(providers="cpu"))).precision


def precision_servers(model: Path, cpus: list[int] | None, env: dict[str, str]) -> list[Server]:
    """The service at each precision this CPU runs natively other than auto's own choice, fp32
    always among them: ``service_fp32``, ``service_bf16``, ``service_int8``."""
    from swin_serve.server.runtime.engines import machine
    from swin_serve.server.runtime.precision import PrecisionError, plan
    from swin_serve.server.settings import Settings

    here = machine(Settings(providers="cpu"))
    auto = auto_precision(model)
    servers = []
    for precision in ("fp32", "bf16", "int8"):
        if precision == auto or (precision == "int8" and not here.int8_fast):
            continue
        try:
            chosen = plan(precision, "auto", model, "fp32", here)
        except PrecisionError as exc:
            progress(f"service at {precision}: not run ({exc})")
            continue
        server = service_server(
            model,
            cpus,
            {**env, "SWIN_PRECISION": precision},
            f"swin-serve at {precision} ({chosen.engine}, dynamic batching)",
        )
        server.name = f"service_{precision}"
        servers.append(server)
    return servers


def peer_server(manifest: Path, cpus: list[int] | None) -> Server:
    port = free_port()
    return Server(
        "peer",
        "naive peer (FastAPI + PyTorch eager, no batching) - BASELINE",
        [sys.executable, "-m", "bench.peers.naive"],
        {"PEER_MANIFEST": str(manifest), "PEER_PORT": str(port)},
        port,
        cpus,
    )


def litserve_configs(n_cpus: int) -> list[tuple[int, int]]:
    """(workers, ORT threads per worker) a user would screen on ``n_cpus`` CPUs.

    One worker with every CPU (batches run fastest), one single-threaded worker per CPU (no
    thread handoffs, decode overlaps inference) and, where the CPUs allow, two workers sharing
    them.
    """
    configs = [(1, n_cpus), (n_cpus, 1)]
    if n_cpus >= 4:
        configs.append((2, n_cpus // 2))
    return list(dict.fromkeys(configs))


def litserve_server(model: Path, cpus: list[int] | None, workers: int, threads: int) -> Server:
    from bench.peers import litserve_app

    port = free_port()
    return Server(
        f"litserve_w{workers}t{threads}",
        f"LitServe {_version('litserve')}, {workers} worker(s) x {threads} ORT thread(s), "
        f"max batch {litserve_app.MAX_BATCH_SIZE}, {litserve_app.BATCH_TIMEOUT_S * 1e3:g} ms "
        "- PEER",
        [sys.executable, "-m", "bench.peers.litserve_app"],
        {
            "PEER_MODEL": str(model),
            "PEER_PORT": str(port),
            "LITSERVE_WORKERS": str(workers),
            "LITSERVE_THREADS": str(threads),
        },
        port,
        cpus,
        info={"workers": workers, "ort_threads": threads},
        health_path="/health",
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        # One at a time: the service times its CPU layout while it loads, which another
        # server's start-up beside it would skew.
        for s in servers:
            s.start()
            s.wait_ready()
            progress(f"{s.name} ready on :{s.port}")
        yield servers
    finally:
        for s in servers:
            s.stop()


@contextlib.contextmanager
def alone(server: Server, servers: list[Server]) -> Iterator[Server]:
    """``server`` runs, every other one of ``servers`` is frozen, until the block ends."""
    for s in servers:
        if s is not server:
            s.pause()
    server.resume()
    try:
        yield server
    finally:
        for s in servers:
            s.resume()


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
    before = scrape_histograms(server) if is_service else None
    assert server.proc is not None
    with PeakRss(server.proc.pid) as peak:
        cpu0, machine0, t0 = server.cpu_seconds(), machine_cpu_seconds(), time.perf_counter()
        result = run_wrk(
            f"{server.base}{path}",
            script,
            connections=connections,
            duration_s=duration_s,
            cpus=loadgen_cpus,
        )
        # The metrics window closes once the requests wrk left in flight are done, so their
        # batches count; the CPU time is taken at wrk's end, per request wrk saw answered.
        cpu1, machine1 = server.cpu_seconds(), machine_cpu_seconds()
        wall = time.perf_counter() - t0
        if machine0 and machine1:
            result.update(
                others_load(machine0, machine1, cpu1 - cpu0, result["loadgen_cpu_share"], wall)
            )
        result["drain_s"] = round(server.wait_idle(), 2)
    result["peak_rss_mb"] = round(peak.mb, 1)
    result["server_cpu_s_per_request"] = (
        round((cpu1 - cpu0) / result["requests"], 4) if result["requests"] else None
    )
    if is_service:
        means = histogram_means(before, scrape_histograms(server))
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
    idle_s: float = 10.0,
    probe: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Interleaved load; per server and concurrency the run with the median throughput is kept.

    Each server is loaded alone (``alone``). Its idle CPU use is measured over ``idle_s`` after
    its warm-up, and a first, shorter figure taken before any load is what ``wait_idle`` waits
    for until then. Its peak RSS is the largest over every run, kept or not.

    ``probe(concurrency, result)``, if given, runs right after each run of the server named
    "service" (every server is idle then) and its dict is stored as ``result["engine_probe"]``:
    the raw-engine figure of the same moment, so service/engine ratios are not skewed by the
    machine's load drifting between the engine and service phases.
    """
    from bench.loadgen import lua_script

    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post_jpeg.lua"
        script.write_text(lua_script(body))
        with running(servers):
            measure_idle(servers, min(idle_s, 3.0))
            for s in servers:  # warm every batch shape and the peer's allocator
                progress(f"warm-up {s.name}: c=16 for {warmup_s:g} s")
                with alone(s, servers):
                    run_wrk(
                        f"{s.base}/classify",
                        script,
                        connections=16,
                        duration_s=warmup_s,
                        cpus=loadgen_cpus,
                    )
                    s.wait_idle()
            idle = measure_idle(servers, idle_s)
            progress(
                "idle CPU, % of a core: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in idle.items())
            )
            runs: dict[str, dict[int, list[dict[str, Any]]]] = {
                s.name: {c: [] for c in concurrency} for s in servers
            }
            for rep, c, s in itertools.product(range(reps), concurrency, servers):
                with alone(s, servers):
                    r = load_once(
                        s, script, connections=c, duration_s=duration_s, loadgen_cpus=loadgen_cpus
                    )
                    if probe is not None and s.name == "service":
                        r["engine_probe"] = probe(c, r)
                runs[s.name][c].append(r)
                progress(f"rep {rep + 1}/{reps} c={c:<3} {s.name:<14} {summary_line(r)}")
            logs = {s.name: s.tail(1500) for s in servers}
    return {
        s.name: {
            "label": s.label,
            "info": s.info,
            "idle_cpu_pct": round(100 * idle[s.name], 1),
            "peak_rss_mb": max(r["peak_rss_mb"] for rs in runs[s.name].values() for r in rs),
            "levels": {str(c): _median_run(rs) for c, rs in runs[s.name].items()},
            "log_tail": logs[s.name],
        }
        for s in servers
    }


def warm_up_each(
    servers: dict[str, Server],
    script: Path,
    *,
    connections: int,
    duration_s: float,
    loadgen_cpus: list[int] | None,
) -> None:
    """Load each server alone for ``duration_s`` (the others paused), then wait until it is idle."""
    every = list(servers.values())
    for name, server in servers.items():
        progress(f"warm-up {name}: c={connections} for {duration_s:g} s")
        with alone(server, every):
            run_wrk(
                f"{server.base}/classify",
                script,
                connections=connections,
                duration_s=duration_s,
                cpus=loadgen_cpus,
            )
            server.wait_idle()


def load_in_turn(
    servers: dict[str, Server],
    order: tuple[str, ...],
    script: Path,
    *,
    connections: int,
    duration_s: float,
    loadgen_cpus: list[int] | None,
    label: str,
) -> dict[str, dict[str, Any]]:
    """One round of interleaved runs: each server of ``order`` loaded alone, in that order."""
    every, runs = list(servers.values()), {}
    for name in order:
        with alone(servers[name], every):
            runs[name] = load_once(
                servers[name],
                script,
                connections=connections,
                duration_s=duration_s,
                loadgen_cpus=loadgen_cpus,
            )
        progress(f"{label} {name:<4} {summary_line(runs[name])}")
    return runs


def summary_line(r: dict[str, Any]) -> str:
    extra = f", mean batch {r['mean_batch_size']:.2f}" if r.get("mean_batch_size") else ""
    return (
        f"{r['throughput_rps']:7.2f} req/s  p50 {r['p50_ms']:8.1f} ms  "
        f"p99 {r['p99_ms']:8.1f} ms  errors {r['error_count']}  "
        f"peak RSS {r.get('peak_rss_mb', 0):.0f} MB{extra}"
    )


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, with every run's throughput and unexpected answers
    (``unexpected_answers``) beside it."""
    ordered = sorted(runs, key=lambda r: r["throughput_rps"])
    kept = dict(ordered[len(ordered) // 2])
    kept["throughput_all_reps"] = [r["throughput_rps"] for r in runs]
    kept["unexpected_all_reps"] = [unexpected_answers(r) for r in runs]
    return kept

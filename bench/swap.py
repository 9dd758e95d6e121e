"""``python -m bench swap``: a model swap under load, and what each served model costs in memory.

Swap (Swin-T): a model repository (a temporary directory) holds the benchmark's fp32 export as
``swin_t``; ``CLIENTS`` closed-loop clients (a thread and a keep-alive connection each, one
request in flight) POST the benchmark JPEG to ``/v1/models/swin_t/classify`` throughout. Each
round publishes the other export (int8, then fp32 again, ...) under the same name as a model
repository is meant to be updated (a hidden copy renamed into place, then SIGHUP) and polls
``/v1/models`` until the name's digest is the new file's. Per round:

- SIGHUP to switch: by the poll (first answer with the new digest; within ``POLL_S`` and one
  answer's time), by the server's log line (``model swin_t: swapped in X s``, load to switch,
  after the scan and the file's SHA-256) and by ``swin_model_load_seconds`` (load, self-check
  and warm-up, the difference of its sum over the swap);
- latency p50/p99/max and non-200 answers of the requests completed in the ``before_s`` before
  SIGHUP, and of every request that overlapped the swap window (SIGHUP to switch + ``TAIL_S``);
- the tree's RSS before SIGHUP and its sampled peak until the old version is unloaded.

Memory: another server, no load; its repository grows by SIGHUP from one Swin-T fp32 model to
two (the same file again, under another name: a session of its own), then three (+ the int8
export). The tree's RSS is read once the new model is ready, has served ``MEMORY_REQUESTS``
requests (so its arenas are populated) and the server is idle again; the increments are what an
extra fp32 and an extra int8 model cost.

Results: ``swap.json`` and ``swap.md`` in bench/results/ (``--quick``: bench/results/raw/quick/).
Times are in seconds unless a name says ``_ms``; memory in MB (10^6 bytes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.closedloop import ClosedLoop, Sample
from bench.common import (
    SAMPLE_IMAGE,
    describe_cpu,
    median,
    percentile,
    progress,
)
from bench.config import SWAP, Swap
from bench.model_files import BenchModels
from bench.proctree import PeakRss
from bench.run_record import Run, RunClock, write_results
from bench.server_process import Server
from bench.service import scrape_histograms, service_server

CLIENTS = 4  # the service's CPU batch size: a steady load keeps its batches full
NAME = "swin_t"
TAIL_S = 1.0  # the swap window lasts this long past the switch
POLL_S = 0.05
MEMORY_REQUESTS = 4  # per client, on each model added

_LOAD_LINE = re.compile(r"model (?P<name>\S+): (?P<verb>ready|swapped) in (?P<s>[0-9.]+) s")
_UNLOADED_LINE = re.compile(r"model (?P<name>\S+): old version unloaded")


# -- pure parts --------------------------------------------------------------------------------


def load_times(log: str, name: str, verb: str) -> list[float]:
    """The seconds of every ``model NAME: VERB in X s`` line (verb: ready or swapped), in order."""
    return [
        float(m["s"]) for m in _LOAD_LINE.finditer(log) if m["name"] == name and m["verb"] == verb
    ]


def unloads(log: str, name: str) -> int:
    """How many old versions of ``name`` the server has unloaded (after a swap)."""
    return sum(m["name"] == name for m in _UNLOADED_LINE.finditer(log))


def completed_within(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    """The requests sent and answered inside [start, end]."""
    return [s for s in samples if s.started >= start and s.ended <= end]


def overlapping(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    """The requests in flight at any moment of [start, end]: a request the swap slowed down
    counts even when it was sent before SIGHUP."""
    return [s for s in samples if s.started < end and s.ended > start]


def latency_summary(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    """Count, non-200 answers, 200s answered per second over ``seconds``, latency p50/p99/max."""
    times = [s.ms for s in samples]
    out: dict[str, Any] = {
        "requests": len(samples),
        "non_200": sum(s.status != 200 for s in samples),
        "ok_per_s": round(sum(s.status == 200 for s in samples) / seconds, 2) if seconds else None,
    }
    for key, q in (("p50_ms", 50), ("p99_ms", 99), ("max_ms", 100)):
        out[key] = round(percentile(times, q), 1) if times else None
    return out


def histogram_delta(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], name: str
) -> float | None:
    """The mean of histogram ``name`` over the observations between two ``histogram_totals``;
    None when there were none."""
    s0, c0 = before.get(name, (0.0, 0.0))
    s1, c1 = after.get(name, (0.0, 0.0))
    return (s1 - s0) / (c1 - c0) if c1 > c0 else None


def increments(steps: Sequence[tuple[str, float]]) -> list[dict[str, Any]]:
    """(what the repository held, RSS MB) in order -> each with its increase over the one before."""
    out, previous = [], None
    for label, rss in steps:
        delta = None if previous is None else round(rss - previous, 1)
        out.append({"repository": label, "rss_mb": round(rss, 1), "increment_mb": delta})
        previous = rss
    return out


def medians(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median over the rounds of each figure the summary shows (None where none has it)."""

    def med(get: Callable[[dict[str, Any]], float | None]) -> float | None:
        values = [v for v in map(get, rounds) if v is not None]
        return round(median(values), 3) if values else None

    out: dict[str, Any] = {
        key: med(lambda r, k=key: r[k])
        for key in ("sighup_to_switch_s", "server_log_s", "load_seconds_metric", "peak_rss_mb")
    }
    for window in ("before", "during"):
        out[window] = {
            key: med(lambda r, w=window, k=key: r[w][k])
            for key in ("p50_ms", "p99_ms", "max_ms", "ok_per_s")
        }
    return out


# -- the server --------------------------------------------------------------------------------


def repository_server(repo: Path, cpus: list[int] | None) -> Server:
    env = {"SWIN_MODEL_REPOSITORY": str(repo), "SWIN_LOG_LEVEL": "info"}  # the swap lines
    server = service_server(None, cpus, env, "swin-serve, model repository")
    server.inherit_settings = False  # the defaults, whatever this shell exports
    return server


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        server.start()
        server.wait_ready()
        progress(f"service ready on :{server.port}")
        yield server
    finally:
        server.stop()


def whole_log(server: Server) -> str:
    return server.tail(1 << 40)


def models_index(server: Server) -> dict[str, dict[str, Any]]:
    """``/v1/models``: every model's status by name."""
    with urllib.request.urlopen(f"{server.base}/v1/models", timeout=10) as r:
        return {m["name"]: m for m in json.loads(r.read())["models"]}


def publish(src: Path, repo: Path, name: str) -> Path:
    """A hidden copy of ``src``, to be renamed to ``NAME.onnx``; copy2 keeps the artefact's old
    modification time, so the server's scan takes the file as settled (not still being written)."""
    hidden = repo / f".{name}.onnx"
    shutil.copy2(src, hidden)
    return hidden


def wait_for(
    server: Server, done: Callable[[dict[str, dict[str, Any]]], bool], what: str, timeout_s=300.0
) -> float:
    """Poll ``/v1/models`` every POLL_S until ``done(index)``; returns the monotonic time of the
    answer that said so."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited {server.proc.returncode}:\n{server.tail()}")
        index = models_index(server)
        if done(index):
            return time.monotonic()
        time.sleep(POLL_S)
    raise RuntimeError(f"no {what} after {timeout_s:.0f} s:\n{server.tail()}")


def settled_rss(server: Server, samples: int = 5, every_s: float = 0.2) -> float:
    """The tree's RSS once the server is idle: the median of a few readings."""
    server.wait_idle()
    readings = []
    for _ in range(samples):
        readings.append(server.rss_mb())
        time.sleep(every_s)
    return median(readings)


# -- the measurements --------------------------------------------------------------------------


def measure_swaps(cfg: Swap, models: BenchModels, server_cpus, loadgen_cpus) -> dict[str, Any]:
    from swin_serve.server.runtime.model_file import content_digest

    files = {"fp32": models.fp32, "int8": models.int8}
    digests = {k: content_digest(p) for k, p in files.items()}
    body = SAMPLE_IMAGE.read_bytes()
    path = f"/v1/models/{NAME}/classify"
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        repo = Path(tmp)
        shutil.copy2(files["fp32"], repo / f"{NAME}.onnx")
        with running(repository_server(repo, server_cpus)) as server:
            assert server.proc is not None
            load = ClosedLoop(server.port, path, body, CLIENTS, cpus=loadgen_cpus).start()
            try:
                progress(f"{CLIENTS} clients on {path}: warm-up {cfg.warmup_s:g} s")
                time.sleep(cfg.warmup_s)
                serving = "fp32"
                for i in range(cfg.rounds):
                    new = "int8" if serving == "fp32" else "fp32"
                    hidden = publish(files[new], repo, NAME)
                    result = swap_round(server, load, hidden, repo, digests[new], cfg)
                    rounds.append({"round": i + 1, "from": serving, "to": new, **result})
                    progress(
                        f"round {i + 1}/{cfg.rounds} {serving} -> {new}: {round_line(rounds[-1])}"
                    )
                    serving = new
            finally:
                samples = load.stop()
            log = whole_log(server)
    everything = latency_summary(samples, samples[-1].ended - samples[0].started)
    return {
        "model": NAME,
        "route": path,
        "clients": CLIENTS,
        "body": f"{SAMPLE_IMAGE.name}, {len(body)} bytes",
        "files": {k: {"path": p.name, "bytes": p.stat().st_size} for k, p in files.items()},
        "rounds": rounds,
        # Per direction: an fp32 file takes longer to load than an int8 one.
        "median_by_target": {
            to: medians([r for r in rounds if r["to"] == to])
            for to in dict.fromkeys(r["to"] for r in rounds)
        },
        "all_requests": everything,
        "log_load_lines": [m.group(0) for m in _LOAD_LINE.finditer(log)],
    }


def swap_round(
    server: Server, load: ClosedLoop, hidden: Path, repo: Path, digest: str, cfg: Swap
) -> dict[str, Any]:
    assert server.proc is not None
    log_before = whole_log(server)
    swapped_before = len(load_times(log_before, NAME, "swapped"))
    unloaded_before = unloads(log_before, NAME)
    metrics_before = scrape_histograms(server)
    time.sleep(cfg.before_s)
    rss_before = server.rss_mb()
    with PeakRss(server.proc.pid) as peak:
        os.replace(hidden, repo / f"{NAME}.onnx")
        t_hup = time.monotonic()
        os.kill(server.proc.pid, signal.SIGHUP)
        t_switch = wait_for(server, lambda idx: idx[NAME]["digest"] == digest, "switch")
        time.sleep(TAIL_S)
        t_end = t_switch + TAIL_S
        # The round ends once the old version has finished its requests and gone.
        deadline = time.monotonic() + 60
        while unloads(whole_log(server), NAME) == unloaded_before:
            if time.monotonic() > deadline:
                progress("the old version was not unloaded within 60 s; going on")
                break
            time.sleep(POLL_S)
        unloaded_s = time.monotonic() - t_hup
    metrics_after = scrape_histograms(server)
    log_times = load_times(whole_log(server), NAME, "swapped")[swapped_before:]
    samples = list(load.samples)
    return {
        "sighup_to_switch_s": round(t_switch - t_hup, 3),
        "server_log_s": log_times[0] if log_times else None,
        "load_seconds_metric": _round(
            histogram_delta(metrics_before, metrics_after, "swin_model_load_seconds"), 3
        ),
        "before": latency_summary(
            completed_within(samples, t_hup - cfg.before_s, t_hup), cfg.before_s
        ),
        "during": latency_summary(overlapping(samples, t_hup, t_end), t_end - t_hup),
        "window_s": round(t_end - t_hup, 3),
        "old_unloaded_after_s": round(unloaded_s, 2),
        "rss_before_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak.mb, 1),
    }


def measure_memory(models: BenchModels, server_cpus, loadgen_cpus) -> dict[str, Any]:
    body = SAMPLE_IMAGE.read_bytes()
    first = ("swin_t_fp32", models.fp32, "fp32")
    added = [
        ("swin_t_fp32_b", models.fp32, "fp32 + fp32 (the same file, a session of its own)"),
        ("swin_t_int8", models.int8, "fp32 + fp32 + int8"),
    ]
    steps: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        repo = Path(tmp)
        shutil.copy2(first[1], repo / f"{first[0]}.onnx")
        with running(repository_server(repo, server_cpus)) as server:
            assert server.proc is not None
            for i, (name, src, label) in enumerate([first, *added]):
                if i:
                    os.replace(publish(src, repo, name), repo / f"{name}.onnx")
                    os.kill(server.proc.pid, signal.SIGHUP)
                    wait_for(
                        server, lambda idx, n=name: idx.get(n, {}).get("state") == "ready", name
                    )
                exercise(server, name, body, loadgen_cpus)
                steps.append((label, settled_rss(server)))
                progress(f"RSS with {i + 1} model(s): {steps[-1][1]:.0f} MB")
            log = whole_log(server)
    table = increments(steps)
    return {
        "measured": (
            "Process tree RSS (sum of VmRSS) of one server, idle, once the model added last was "
            f"ready (the first at start-up, the others by SIGHUP) and had served "
            f"{CLIENTS * MEMORY_REQUESTS} requests from {CLIENTS} clients; the median of 5 readings"
        ),
        "steps": table,
        "per_extra_fp32_mb": table[1]["increment_mb"],
        "per_extra_int8_mb": table[2]["increment_mb"],
        # The server's "ready in" line of each model added by SIGHUP (loaded with no load on).
        "ready_in_s": {
            name: next(iter(load_times(log, name, "ready")), None) for name, *_ in added
        },
    }


def exercise(server: Server, name: str, body: bytes, cpus) -> None:
    """A few requests on ``name``, so that its arenas hold what serving needs."""
    path = f"/v1/models/{name}/classify"
    loop = ClosedLoop(server.port, path, body, CLIENTS, MEMORY_REQUESTS, cpus).start()
    bad = [s.status for s in loop.join() if s.status != 200]
    if bad:
        raise RuntimeError(f"{path}: non-200 answers {bad}:\n{server.tail()}")


# -- the report --------------------------------------------------------------------------------


def round_line(r: dict[str, Any]) -> str:
    b, d = r["before"], r["during"]
    return (
        f"switch {r['sighup_to_switch_s']:.2f} s (log {r['server_log_s']} s), "
        f"p99 {b['p99_ms']} -> {d['p99_ms']} ms, max {d['max_ms']} ms, "
        f"non-200 {b['non_200'] + d['non_200']}"
    )


def render_markdown(results: dict[str, Any]) -> str:
    meta, swap, memory = results["meta"], results["swap"], results["memory"]
    machine = meta["machine"]

    def lat(w: dict[str, Any]) -> str:
        return " / ".join(_fmt(w[k], 0) for k in ("p50_ms", "p99_ms", "max_ms"))

    lines = [
        "### Model swap under load, and memory per model (Swin-T)",
        "",
        f"{machine['cpus']} CPUs: {describe_cpu(machine)}. Run of {meta['started']} "
        f"({meta['mode']}, load average {machine['loadavg_at_start']} at its start).",
        "",
        f"**Swap.** {swap['clients']} closed-loop clients POST {swap['body']} to "
        f"`{swap['route']}`; each round renames the other export into place as "
        f"`{swap['model']}.onnx` and sends SIGHUP. *Switch*: SIGHUP until `/v1/models` shows "
        f"the new digest (polled every {POLL_S * 1e3:g} ms); *log*: the server's `swapped in` "
        "(load to switch); *metric*: `swin_model_load_seconds` (load, self-check, warm-up). "
        "Latency p50 / p99 / max in ms: *before*, requests completed in the "
        f"{meta['config']['before_s']:g} s before SIGHUP; *during*, every request in flight "
        f"between SIGHUP and {TAIL_S:g} s after the switch.",
        "",
        "| Round | Swap | Switch (s) | Log (s) | Metric (s) | Before | During | Non-200 | "
        "Peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in swap["rounds"]:
        lines.append(
            f"| {r['round']} | {r['from']} -> {r['to']} | {r['sighup_to_switch_s']:.2f} | "
            f"{_fmt(r['server_log_s'])} | {_fmt(r['load_seconds_metric'])} | {lat(r['before'])} | "
            f"{lat(r['during'])} | {r['before']['non_200'] + r['during']['non_200']} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    for to, m in swap["median_by_target"].items():
        n = sum(r["to"] == to for r in swap["rounds"])
        lines.append(
            f"| median of {n} | -> {to} | {_fmt(m['sighup_to_switch_s'])} | "
            f"{_fmt(m['server_log_s'])} | {_fmt(m['load_seconds_metric'])} | {lat(m['before'])} | "
            f"{lat(m['during'])} | | {_fmt(m['peak_rss_mb'], 0)} |"
        )
    total = swap["all_requests"]
    lines += [
        "",
        f"Every request of the run: {total['requests']}, non-200: {total['non_200']}.",
        "",
        f"**Memory per model.** {memory['measured']}.",
        "",
        "| Repository | RSS (MB) | Increment (MB) |",
        "|---|---|---|",
    ]
    for step in memory["steps"]:
        inc = step["increment_mb"]
        lines.append(
            f"| {step['repository']} | {step['rss_mb']:.0f} | {'' if inc is None else f'+{inc:.0f}'} |"
        )
    lines += [
        "",
        f"Each extra Swin-T fp32 model: +{memory['per_extra_fp32_mb']:.0f} MB; each extra int8 "
        f"model: +{memory['per_extra_int8_mb']:.0f} MB.",
    ]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def main(run: Run) -> int:
    out_dir, quick, rounds = run.out_dir, run.quick, run.rounds
    server_cpus, loadgen_cpus = run.server_cpus, run.loadgen_cpus
    from bench.model_files import ensure_models

    cfg = SWAP.pick(quick, rounds=rounds)
    clock = RunClock()
    models = ensure_models()
    progress("memory per model: one server, models added by SIGHUP")
    memory = measure_memory(models, server_cpus, loadgen_cpus)
    progress(f"swap under load: {cfg.rounds} round(s)")
    swap = measure_swaps(cfg, models, server_cpus, loadgen_cpus)
    constants = {"clients": CLIENTS, "tail_s": TAIL_S, "poll_s": POLL_S}
    cpus = {"server_cpus": server_cpus, "client_cpus": loadgen_cpus}
    meta = clock.meta(quick=quick, config=cfg, constants=constants, **cpus)
    results = {"meta": meta, "swap": swap, "memory": memory}
    write_results(out_dir, "swap", results, render_markdown(results))
    bad = swap["all_requests"]["non_200"]
    if bad:
        progress(f"FAILED: {bad} requests were not answered 200")
    return 1 if bad else 0

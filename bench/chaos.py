"""``python -m bench chaos [--minutes N] [--quick]``: every kind of trouble at once, for N minutes.

One real server (``swin-serve``, this checkout) serves a model repository holding one
name, ``chaos`` (the default model), with OpenTelemetry tracing every request to a collector in
this process (bench.span_sink ``SpanSink``) and gRPC on. Two Swin micro exports (64 px, random
weights) take turns under that name: model A (seed 1, labels ``A0``..``A9``) and model B
(seed 2, labels ``B0``..``B9``), so an answer's labels say which model gave it, and its top-1
against that model's golden output (computed here with ONNX Runtime from the same file) says
that it really is that model's answer.

The server's capacity is measured first, for the good mix below (closed loop, 8 clients, tracing
on; bench.soak ``measure_capacity`` on ``/classify`` alone is recorded beside it). Then the run goes in cycles of ``cycle_s`` until ``--minutes`` have passed; in
each, open loop, from 127.0.0.1 only:

- good images (the samples soak uses) at ``BASE_LOAD`` x capacity, and for ``overload_s`` of the
  cycle at ``OVERLOAD`` x capacity, shared between ``/classify`` (raw body or multipart), v2 HTTP
  (``/v2/models/chaos/infer``, JSON, base64 BYTES, ``classification``) and gRPC (tritonclient's
  ``ModelInfer``, a BYTES ``image`` input, ``class_count``);
- hostile requests on all three: junk, truncated, empty, a malformed multipart body, bad JSON,
  bad base64, a wrong tensor datatype, the wrong content type, a bad query, a body over the cap,
  an unknown model, the decompression-bomb GIF, and every ``SCAN_BOMB_EVERY_S`` a progressive
  JPEG "scan bomb" (``scan_bomb``);
- clients that give up: half a body then close, a whole request then close before the answer, a
  gRPC call cancelled a few ms in;
- one repository change, by the documented publish (a hidden copy renamed into place, SIGHUP):
  two cycles in three swap to the other model, the third publishes a broken file (the other
  model's first half, or random bytes) under the name; the swap lands inside the overload window
  every other cycle;
- then a lull: no new requests, the ones in flight finish, and the server's RSS and open file
  descriptors are read (``/proc/PID/status`` VmRSS, ``/proc/PID/fd``), a *settled* sample.

A poller reads the model's card (``GET /v1/models/chaos``: its ``digest``, the file's SHA-256)
every ``CARD_POLL_S`` throughout. At the end, good requests keep coming while SIGTERM is sent.

The run passes when:

1. **Statuses**: every answer is in the documented set of its kind (``allowed``: docs/api.md's
   error table and gRPC mapping; 503 ``overloaded`` or ``deadline_exceeded`` for any inference,
   since admission and the deadline come first; 503 ``draining`` only for requests in flight at
   SIGTERM; no answer only for requests sent after it, or for the clients that gave up).
2. **Models**: every 200 names one model by its labels, its top-1 matches that model's golden,
   and that model's file is one the card named while the request was out (``allowed_models``;
   a request that straddles a swap may get the old model or the new one).
3. **Swaps**: every swap's new digest shows on the card within ``SWAP_WAIT_S``; every broken file
   is refused (``swin_model_loads_total{outcome="failed"}`` rises) with the card unchanged and
   ``ready``; the card never names a file that is neither model.
4. **Flat**: over the second half of the run, the settled samples' RSS grows (least-squares line)
   by under ``RSS_BAND`` of their median, and their fd spread is at most ``FD_BAND``. Growth, not
   spread: each swap loads a model beside the one it replaces, and the allocator returns that
   memory when it likes, so settled RSS moves up and down by a model or two without leaking.
5. **Exit**: after SIGTERM the server exits 0 within ``DRAIN_TIMEOUT_S`` + ``EXIT_MARGIN_S``.
6. **Traced**: the collector received spans.

Results: ``chaos.json`` and ``chaos.md`` in bench/results/ (``--quick``: raw/quick/). Times are
in seconds unless a name says ``_ms``; memory in MiB.

This module runs it (the server, the cycles, SIGTERM). The parts: bench.chaos_verdict (the
documented status sets and the pure criteria), chaos_models (A and B, their goldens),
chaos_inputs (the request bodies), chaos_client (raw HTTP exchanges and parsing),
chaos_traffic (the clients), chaos_swaps (the repository changes and the card poller),
chaos_process (RSS and fds from /proc), chaos_report (chaos.json and chaos.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos_client import CLIENT_TIMEOUT_S, metric_by, metric_value, metrics_text
from bench.chaos_inputs import CLASSIFY, MAX_UPLOAD_BYTES, Inputs
from bench.chaos_models import NAME, Model, compute_goldens, ensure_chaos_models
from bench.chaos_process import proc_sample, sample_series
from bench.chaos_report import build_results, describe_run, render_markdown
from bench.chaos_swaps import CARD_POLL_S, Repository
from bench.chaos_traffic import Traffic
from bench.chaos_verdict import ProcSample, judge
from bench.common import progress
from bench.config import CHAOS
from bench.config import Chaos as ChaosConfig
from bench.loadclient import build_request
from bench.run_record import RunClock, write_results
from bench.server_process import Server, free_port
from bench.service import service_server
from bench.soak import measure_capacity
from bench.span_sink import SpanSink, without_inherited_otel

QUEUE_CAPACITY = 16  # small, so that the overload reaches the queue within a second
DRAIN_TIMEOUT_S = 8.0
EXIT_MARGIN_S = 5.0  # past the drain: stopping gRPC, flushing the last spans, the interpreter
SETTLE_WAIT_S = 20.0  # a lull waits at most this long for the requests in flight
FINAL_LOAD_S = 1.5  # good requests at capacity around SIGTERM; SIGTERM after FINAL_TERM_AT_S
FINAL_TERM_AT_S = 0.5


class Chaos:
    """One run on one event loop: the traffic, the repository changes with the card poller, the
    process samples, and SIGTERM at the end."""

    def __init__(
        self,
        server: Server,
        grpc_port: int,
        repo: Path,
        models: dict[str, Model],
        inputs: Inputs,
        cfg: ChaosConfig,
    ) -> None:
        assert server.proc is not None
        self.server, self.pid, self.port = server, server.proc.pid, server.port
        self.cfg = cfg
        self.traffic = Traffic(server.port, grpc_port, models, inputs)
        self.repository = Repository(
            server.port, self.pid, repo, models, lambda: self.traffic.in_overload
        )
        self.run_s = 0.0
        self.capacity = 0.0
        self.overload_windows: list[tuple[float, float]] = []
        self.series: list[ProcSample] = []
        self.settled: list[ProcSample] = []
        self.t0 = time.perf_counter()

    async def run(self) -> dict[str, Any]:
        """Calibrate, the cycles, then SIGTERM; -> the exit and what the server counted."""
        self.traffic.connect_grpc()
        self.t0 = time.perf_counter()
        stop = asyncio.Event()
        poller = asyncio.create_task(self.repository.poll_card(stop))
        sampler = asyncio.create_task(sample_series(self.pid, self.t0, self.series, stop))
        await asyncio.sleep(2 * CARD_POLL_S)
        self.capacity = await self.traffic.calibrate(self.cfg.calibrate_s)
        progress(f"capacity ~{self.capacity:.1f} images/s (the good mix, closed loop, 8 clients)")
        end = self.t0 + self.cfg.minutes * 60
        index = 0
        while time.perf_counter() < end - self.cfg.cycle_s / 2:
            await self.cycle(index)
            index += 1
        self.run_s = time.perf_counter() - self.t0
        stop.set()
        await asyncio.gather(poller, sampler)
        server_counts = await self.scrape_counts()
        return {**await self.terminate(), "server_counts": server_counts}

    async def cycle(self, index: int) -> None:
        """One cycle: traffic second by second (overload for ``overload_s`` of it), the cycle's
        repository change, then the lull and a settled sample."""
        cycle_s, overload_s = self.cfg.cycle_s, self.cfg.overload_s
        c0 = time.perf_counter()
        traffic_s = int(cycle_s - 3)
        ov0, ov1 = int(0.3 * cycle_s), int(0.3 * cycle_s + overload_s)
        swap_at = ov0 + 1 if index % 2 == 0 else min(traffic_s - 1, ov1 + 1)
        swap_task = None
        for second in range(traffic_s):
            self.traffic.in_overload = ov0 <= second < ov1
            start = c0 + second
            if second == ov0:
                self.overload_windows.append((start, start + ov1 - ov0))
            await asyncio.sleep(max(0.0, start - time.perf_counter()))
            self.traffic.schedule_second(second, start, self.capacity)
            if second == swap_at:
                swap_task = asyncio.create_task(self.repository.swap(index))
        self.traffic.in_overload = False
        await asyncio.sleep(max(0.0, c0 + traffic_s - time.perf_counter()))
        if swap_task is not None:
            await swap_task
        s = await self.settle()
        progress(
            f"cycle {index + 1} done at {s.t:.0f} s: {len(self.traffic.answers)} answers, "
            f"RSS {s.rss_mib:.1f} MiB, {s.fds} fds"
        )

    async def settle(self) -> ProcSample:
        """The lull: let what is in flight finish (at most SETTLE_WAIT_S), then read the process."""
        pending = self.traffic.pending
        deadline = time.perf_counter() + SETTLE_WAIT_S
        while pending and time.perf_counter() < deadline:
            await asyncio.wait(set(pending), timeout=deadline - time.perf_counter())
        await asyncio.sleep(0.5)
        sample = proc_sample(self.pid, self.t0)
        self.settled.append(sample)
        return sample

    async def terminate(self) -> dict[str, Any]:
        """The drain: good requests at capacity; SIGTERM partway through them."""
        traffic = self.traffic
        t_final = time.perf_counter()
        traffic.schedule_good(max(1, round(self.capacity * FINAL_LOAD_S)), t_final, FINAL_LOAD_S)
        await asyncio.sleep(FINAL_TERM_AT_S)
        traffic.t_term = time.perf_counter()
        assert self.server.proc is not None
        self.server.proc.send_signal(signal.SIGTERM)
        bound = DRAIN_TIMEOUT_S + EXIT_MARGIN_S
        try:
            rc = await asyncio.to_thread(self.server.proc.wait, bound + 30)
            exit_s: float | None = time.perf_counter() - traffic.t_term
        except subprocess.TimeoutExpired:
            rc, exit_s = None, None
        if traffic.pending:
            await asyncio.wait(set(traffic.pending), timeout=CLIENT_TIMEOUT_S + 5)
        await traffic.close_grpc()
        return {
            "exit_status": rc,
            "exit_s": None if exit_s is None else round(exit_s, 2),
            "exit_bound_s": bound,
        }

    async def scrape_counts(self) -> dict[str, Any]:
        """What the server counted, before SIGTERM: answers by status and code, 499s."""
        text = await metrics_text(self.port)
        return {
            "client_disconnected_499": metric_value(
                text, "swin_rejections_total", {"reason": "client_disconnected"}
            ),
            "model_loads": metric_by(text, "swin_model_loads_total", "outcome"),
            "http_by_status": metric_by(text, "swin_requests_total", "status"),
            "grpc_by_code": metric_by(text, "swin_grpc_requests_total", "code"),
            "rejections_by_reason": metric_by(text, "swin_rejections_total", "reason"),
        }


@dataclass
class Outcome:
    """A finished run and what surrounded it."""

    chaos: Chaos
    result: dict[str, Any]  # Chaos.run's: the exit, the server's counts
    classify_capacity: float
    server_env: dict[str, str]
    log_tail: str
    spans: dict[str, Any]  # SpanSink.summary()


def server_env(repo: Path, grpc_port: int, sink_endpoint: str) -> dict[str, str]:
    return {
        "SWIN_MODEL_REPOSITORY": str(repo),
        "SWIN_DEFAULT_MODEL": NAME,
        "SWIN_GRPC_PORT": str(grpc_port),
        "SWIN_PROVIDERS": "cpu",
        "SWIN_QUEUE_CAPACITY": str(QUEUE_CAPACITY),
        "SWIN_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "SWIN_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        "SWIN_LOG_LEVEL": "warning",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{sink_endpoint}/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def run_config(quick: bool, minutes: float | None) -> ChaosConfig:
    cfg = CHAOS.pick(quick)
    if minutes is not None:
        if minutes <= 0:
            raise SystemExit(f"--minutes wants a positive number, got {minutes}")
        cfg = dataclasses.replace(cfg, minutes=minutes)
    # A short run gets shorter cycles: several swaps, broken files and settled samples still.
    cycle_s = max(10.0, min(cfg.cycle_s, cfg.minutes * 60 / 8))
    overload_s = round(cfg.overload_s * cycle_s / cfg.cycle_s)
    return dataclasses.replace(cfg, cycle_s=cycle_s, overload_s=overload_s)


def serve_and_run(models: dict[str, Model], inputs: Inputs, cfg: ChaosConfig) -> Outcome:
    """A server on a fresh repository holding model A, tracing to a sink here: /classify's
    capacity alone, then the chaos run, then the spans."""
    sink = SpanSink()
    with (
        tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp,
        sink.running(),
        without_inherited_otel(),
    ):
        repo = Path(tmp)
        shutil.copy2(models["A"].path, repo / f"{NAME}.onnx")
        grpc_port = free_port()
        server = service_server(
            None, None, server_env(repo, grpc_port, sink.endpoint), "swin-serve, chaos"
        )
        server.inherit_settings = False
        server.start()
        try:
            server.wait_ready()
            progress(f"service ready on :{server.port} (gRPC :{grpc_port}), model A served")
            request = build_request(CLASSIFY, inputs.good["flower.jpg"], "image/jpeg")
            classify_capacity = asyncio.run(
                measure_capacity(server.port, request, cfg.calibrate_s, concurrency=8)
            )
            progress(f"/classify alone: ~{classify_capacity:.1f} images/s")
            chaos = Chaos(server, grpc_port, repo, models, inputs, cfg)
            result = asyncio.run(chaos.run())
            log_tail = server.tail(3000)
        finally:
            server.stop(timeout_s=5)
        time.sleep(1.0)  # the last export, sent at exit, is in
        spans = sink.summary()
    return Outcome(chaos, result, classify_capacity, server.env, log_tail, spans)


def main(out_dir: Path, *, quick: bool, minutes: float | None = None) -> int:
    cfg = run_config(quick, minutes)
    clock = RunClock()
    models = ensure_chaos_models()
    inputs = Inputs.build()
    compute_goldens(models, inputs.good)
    outcome = serve_and_run(models, inputs, cfg)
    meta = describe_run(outcome, models, cfg, quick=quick, clock=clock)
    results = build_results(outcome, meta)
    chaos = outcome.chaos
    results["checks"] = judge(
        results,
        chaos.traffic.answers,
        chaos.repository.observations,
        {m.digest: m.id for m in models.values()},
        chaos.repository.swaps,
        chaos.settled,
        chaos.run_s / 2,
        outcome.spans["spans"],
    )
    results["passed"] = all(c["ok"] for c in results["checks"])
    if not results["passed"]:
        results["server_log_tail"] = outcome.log_tail
    write_results(out_dir, "chaos", results, render_markdown(results))
    return 0 if results["passed"] else 1

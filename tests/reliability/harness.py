"""Runs the real server (``swin_serve.server.__main__.main``) with its ONNX engine wrapped, for tests.

Run as a module from the repository root (``python -m tests.reliability.harness``, as
tests/reliability/conftest.py does, with the root first on PYTHONPATH) with the usual ``SWIN_*``
settings. Its first line of output names the folder of the ``swin_serve`` package it imported, so a
test can check that the server runs this checkout's code. The wrapping is configured by
``HARNESS_*`` variables, which production code never reads:

- ``HARNESS_BATCH_DELAY_MS``: every model run also sleeps this long, so the server's capacity is
  known (max_batch_size images per delay) whatever the machine.
- ``HARNESS_FAIL_RUNS``: comma-separated indices of model runs after warm-up (0 = first) that
  raise an ordinary EngineError.
- ``HARNESS_FATAL_AT``: index of the run after warm-up that raises a fatal device error (the
  message ONNX Runtime gives for a CUDA illegal address).
- ``HARNESS_DECODE_GATE``: a file path. Decoding an image whose bytes hold ``SLOW_DECODE_MARK``
  (e.g. in a JPEG comment) first appends a line to ``<path>.started``, then blocks its decode
  thread until ``<path>`` exists: a decode as slow as the test wants, that no deadline can stop.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import swin_serve
import swin_serve.server.inference
from swin_serve.server.__main__ import main
from swin_serve.server.runtime.engine import EngineError, FatalEngineError, OnnxEngine
from swin_serve.server.settings import Settings


def _wrap(engine: OnnxEngine) -> OnnxEngine:
    delay_s = float(os.environ.get("HARNESS_BATCH_DELAY_MS", "0")) / 1e3
    fail_runs = {int(i) for i in os.environ.get("HARNESS_FAIL_RUNS", "").split(",") if i}
    fatal_at = int(os.environ.get("HARNESS_FATAL_AT", "-1"))
    real_run, real_warmup = engine.run, engine.warmup
    lock = threading.Lock()
    runs_after_warmup: list[int] = []  # a list so the closures can count
    warmed = threading.Event()

    def run(batch):
        if not warmed.is_set():
            return real_run(batch)
        with lock:
            index = len(runs_after_warmup)
            runs_after_warmup.append(len(batch))
        if delay_s:
            time.sleep(delay_s)
        if index == fatal_at:
            raise FatalEngineError(
                "fatal device error: CUDA error: an illegal memory access was encountered"
            )
        if index in fail_runs:
            raise EngineError(f"injected failure of run {index}")
        return real_run(batch)

    # The server warms up one batch size at a time, ending with its largest batch.
    largest = Settings().resolved_max_batch_size(on_gpu=engine.provider == "CUDAExecutionProvider")

    def warmup(batch_sizes):
        real_warmup(batch_sizes)
        if largest in batch_sizes:
            warmed.set()

    engine.run = run  # type: ignore[method-assign]
    engine.warmup = warmup  # type: ignore[method-assign]
    return engine


SLOW_DECODE_MARK = b"harness:slow-decode"
GATE_HANG_GUARD_S = 120.0  # a gate nobody opens: the decode ends, the test has failed by then


def _gate_decodes(gate: Path) -> None:
    real_decode = swin_serve.server.inference.decode_image

    def decode_image(data, spec, **limits):
        if SLOW_DECODE_MARK in data:
            with Path(f"{gate}.started").open("a") as started:
                started.write("decode started\n")
            deadline = time.monotonic() + GATE_HANG_GUARD_S
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # another process opens it: a file is the simplest gate
        return real_decode(data, spec, **limits)

    swin_serve.server.inference.decode_image = decode_image  # looked up at each request


if os.environ.get("HARNESS_DECODE_GATE"):
    _gate_decodes(Path(os.environ["HARNESS_DECODE_GATE"]))

_real_load = OnnxEngine.load
OnnxEngine.load = staticmethod(lambda settings, path=None: _wrap(_real_load(settings, path)))  # type: ignore[method-assign]

if __name__ == "__main__":
    # Read by tests/reliability/test_harness_tree.py: the tree this server really runs.
    print(f"harness: swin_serve imported from {os.path.dirname(swin_serve.__file__)}", flush=True)
    sys.exit(main())

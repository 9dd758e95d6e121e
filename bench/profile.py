"""Where the time goes: py-spy on the server under load, and the ONNX Runtime profiler on the engine.

- ``profile_engine``: ORT's own per-node trace of a few batch-8 runs, summed by operator type,
  plus the operator census of the served graph (to see which fusions ONNX Runtime applied).
- ``profile_service``: ``py-spy record`` (raw folded stacks) on ``python -m service`` while wrk
  holds 16 connections; every sampled stack is put in one bucket (decode, inference, response
  shaping/JSON, HTTP/asyncio, ...). py-spy sees Python threads only: ORT's own intra-op worker
  threads are native, so this is the share of the *Python* threads' busy time; the service's
  /metrics histograms (decode, queue wait, inference) give the per-request wall-clock split.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import progress

# First match wins, searched from the innermost frame outwards.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("inference (ORT session.run)", ("onnxruntime_inference_collection", "_infer (service")),
    ("batch stack/copy", ("np.stack", "stack (numpy", "ascontiguousarray")),
    ("decode + preprocess", ("decode_image", "load_rgb", "to_model_input", "PIL")),
    ("metrics", ("prometheus_client",)),
    (
        "response shaping + JSON",
        (
            "serialize_response",
            "jsonable_encoder",
            "json/encoder",
            "render (starlette",
            "render (fastapi",
            "pydantic",
            "softmax",
            "top_k",
            "postprocess",
        ),
    ),
    ("request body read", ("body (starlette", "read_image_bodies")),
    ("batcher loop", ("batcher.py",)),
    ("HTTP (uvicorn/h11/starlette)", ("uvicorn", "h11", "starlette", "fastapi", "httptools")),
    ("asyncio event loop", ("asyncio", "uvloop")),
    ("thread pool idle/handoff", ("concurrent/futures", "threading.py")),
)


def bucket_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # innermost first
        for name, needles in BUCKETS:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarise_folded(text: str) -> dict[str, Any]:
    """py-spy ``--format raw`` (folded stacks: ``frame;frame;... count``) -> samples per bucket."""
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[bucket_of(stack)] += int(n)
    total = sum(counts.values())
    return {
        "samples": total,
        "share": {k: round(v / total, 4) for k, v in counts.most_common()} if total else {},
    }


def op_census(path: Path) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in proto.graph.node).most_common())


def summarise_ort_trace(events: list[dict[str, Any]]) -> dict[str, Any]:
    """ORT profiler events -> time per operator type (node kernels only)."""
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            per_op[e.get("args", {}).get("op_name", "?")] += e.get("dur", 0)
    total = sum(per_op.values())
    return {
        "total_kernel_ms": round(total / 1e3, 2),
        "share": {k: round(v / total, 4) for k, v in per_op.most_common()} if total else {},
    }


def profile_engine(model: Path, threads: int, batch: int = 8, runs: int = 3) -> dict[str, Any]:
    from bench.engine import ort_session

    with tempfile.TemporaryDirectory(prefix="bench-ortprof-") as tmp:
        session = ort_session(model, threads, profile_prefix=str(Path(tmp) / "ort"))
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        names = [o.name for o in session.get_outputs()]
        feed = {session.get_inputs()[0].name: x}
        session.run(names, feed)  # warm-up, also profiled; dropped below by run index
        for _ in range(runs):
            session.run(names, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    # Keep only the timed runs: drop node events before the second model_run.
    starts = [e["ts"] for e in trace if e.get("name") == "model_run"]
    cutoff = sorted(starts)[1] - 1 if len(starts) > 1 else 0
    events = [e for e in trace if e.get("ts", 0) >= cutoff]
    return {
        "model": model.name,
        "batch": batch,
        "runs": runs,
        "intra_op_threads": threads,
        **summarise_ort_trace(events),
        "ops_in_file": op_census(model),
    }


def profile_service(server, script: Path, *, duration_s: float, loadgen_cpus) -> dict[str, Any]:
    """py-spy on a running ``server`` (bench.service.Server) while wrk holds 16 connections."""
    from bench.loadgen import run_wrk

    # pip puts py-spy next to the interpreter, which need not be on PATH (.venv/bin/python ...).
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if pyspy is None:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    with tempfile.TemporaryDirectory(prefix="bench-pyspy-") as tmp:
        out = Path(tmp) / "folded.txt"
        cmd = [pyspy, "record", "--pid", str(server.proc.pid), "--format", "raw", "-o", str(out)]
        cmd += ["--duration", f"{int(duration_s)}", "--rate", "200", "--nonblocking"]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        load = run_wrk(
            f"{server.base}/classify",
            script,
            connections=16,
            duration_s=duration_s,
            cpus=loadgen_cpus,
        )
        _, err = spy.communicate(timeout=duration_s + 60)
        if spy.returncode != 0 or not out.exists():
            return {"skipped": f"py-spy failed ({spy.returncode}): {err.strip()[-500:]}"}
        summary = summarise_folded(out.read_text())
    progress(f"py-spy: {summary['samples']} samples, {load['throughput_rps']:.1f} req/s")
    return {"tool": "py-spy record --rate 200 --nonblocking", "load": load, **summary}

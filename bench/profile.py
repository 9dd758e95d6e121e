"""Where the time goes: py-spy on the server under load, and the ONNX Runtime profiler on the engine.

- ``profile_engine``: ORT's own per-node trace of a few batch-8 runs, summed by operator type,
  plus the operator census of the served graph (to see which fusions ONNX Runtime applied).
- ``profile_service``: ``py-spy record`` (raw folded stacks) on ``swin-serve`` while wrk
  holds 16 connections; every sampled stack is put in one bucket (decode, inference, response
  shaping/JSON, HTTP/asyncio, ...). py-spy sees Python threads only: ORT's own intra-op worker
  threads are native, so this is the share of the *Python* threads' busy time; the service's
  /metrics histograms (decode, queue wait, inference) give the per-request wall-clock split.
"""

from __future__ import annotations

import collections
import functools
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import progress

INFERENCE = "inference (ORT session.run)"
BATCH_COPY = "batch stack/copy"
DECODE = "decode + preprocess"
METRICS = "metrics"
RESPONSE = "response shaping + JSON"
BODY = "request body read"
BATCHER = "batcher loop"
HTTP = "HTTP (uvicorn/h11/starlette)"
LOOP = "asyncio event loop"
THREADS = "thread pool idle/handoff"

# Keyed on the file a frame runs in, never on function names, which change with every refactor.
# py-spy prints a file relative to sys.path (``swin_serve/artifact/preprocess.py`` from an
# installed package) or absolute (an editable install, --full-filenames): a key matches either
# way. The most specific key wins; a file not listed is skipped and the frame that called it
# decides (so the routes, which both read requests and shape answers, count as what they call).
# The server's own files are named by module and keyed on their path inside the package, which
# the modules give: a moved file takes its key along, a renamed one fails here at import rather
# than leave a key that matches nothing.
SERVER_BUCKETS: dict[str, str] = {
    "swin_serve.server.runtime.engine": INFERENCE,
    "swin_serve.artifact.preprocess": DECODE,
    "swin_serve.server.observability.metrics": METRICS,
    "swin_serve.server.runtime.postprocess": RESPONSE,
    "swin_serve.server.http.schemas": RESPONSE,
    "swin_serve.server.runtime.batcher": BATCHER,
}
LIBRARY_BUCKETS: dict[str, str] = {
    "onnxruntime/": INFERENCE,
    "PIL/": DECODE,
    "prometheus_client/": METRICS,
    "json/": RESPONSE,
    "pydantic/": RESPONSE,
    "pydantic_core/": RESPONSE,
    "fastapi/encoders.py": RESPONSE,
    "starlette/responses.py": RESPONSE,
    "starlette/requests.py": BODY,
    "starlette/formparsers.py": BODY,
    "multipart/": BODY,
    "python_multipart/": BODY,
    "uvicorn/": HTTP,
    "h11/": HTTP,
    "httptools/": HTTP,
    "starlette/": HTTP,
    "fastapi/": HTTP,
    "asyncio/": LOOP,
    "uvloop/": LOOP,
    "concurrent/futures/": THREADS,
    "threading.py": THREADS,
    "queue.py": THREADS,
}


def package_path(module: str) -> str:
    """``module``'s file relative to the folder that holds its top-level package, e.g.
    ``swin_serve/artifact/preprocess.py``: how py-spy names it from an installed package."""
    top = importlib.import_module(module.partition(".")[0])
    root = Path(top.__file__).resolve().parent.parent
    return Path(importlib.import_module(module).__file__).resolve().relative_to(root).as_posix()


@functools.cache
def module_buckets() -> dict[str, str]:
    """Every key ``bucket_of`` knows (the server's files by package path, and the libraries'),
    the most specific first."""
    every = {**{package_path(m): b for m, b in SERVER_BUCKETS.items()}, **LIBRARY_BUCKETS}
    return {k: every[k] for k in sorted(every, key=len, reverse=True)}


# NumPy does the work of whoever calls it, so its frames take the caller's bucket; in the
# batcher, its one NumPy call stacks the images into a batch, which has a bucket of its own.
NUMPY = "numpy/"
NUMPY_CALLED_FROM = {BATCHER: BATCH_COPY}
_FRAME_FILE = re.compile(r"\(([^()]+?)(?::\d+)?\)$")  # "name (path/file.py:123)"


def _under(path: str, key: str) -> bool:
    return path.startswith(key) or f"/{key}" in path


def module_bucket(path: str) -> str | None:
    """The bucket of a source file, by the most specific ``module_buckets`` key it is under."""
    return next((b for k, b in module_buckets().items() if _under(path, k)), None)


def bucket_of(stack: str) -> str:
    """The bucket of a folded stack (``outer;...;inner``): that of its innermost listed file."""
    in_numpy = False
    for frame in reversed(stack.split(";")):  # innermost first
        match = _FRAME_FILE.search(frame)
        path = match.group(1) if match else ""
        if _under(path, NUMPY):
            in_numpy = True
        elif (bucket := module_bucket(path)) is not None:
            return NUMPY_CALLED_FROM.get(bucket, bucket) if in_numpy else bucket
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
    from bench.engine_throughput import ort_session, run_all

    with tempfile.TemporaryDirectory(prefix="bench-ortprof-") as tmp:
        session = ort_session(model, threads, profile_prefix=str(Path(tmp) / "ort"))
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        run_all(session, x)  # warm-up, also profiled; dropped below by run index
        for _ in range(runs):
            run_all(session, x)
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

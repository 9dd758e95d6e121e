"""Faults in the real server process: a failing model run, a fatal device error, a bad model file.

(In-process versions: tests/server/runtime/test_load_behaviour.py. Missing model and undecodable model
file exit codes and messages: tests/server/test_config.py.)
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import numpy_helper

from swin_serve.artifact.contract import MANIFEST_KEY
from tests.support.live_server import SERVE

# Loading, the golden self-check and exiting take seconds; a server still running after this
# long is one that did not refuse its model.
EXIT_WITHIN_S = 120


def test_a_failing_model_run_fails_only_its_batch(start_server, jpeg):
    # Batch size 1: the first run after warm-up fails, so exactly one request gets 500.
    server = start_server(max_batch_size=1, harness_fail_runs="0")
    first = httpx.post(f"{server.base}/classify", files={"file": jpeg()}, timeout=10)
    later = [
        httpx.post(f"{server.base}/classify", files={"file": jpeg(color=(i, 9, 9))}, timeout=10)
        for i in range(5)
    ]
    ready = httpx.get(f"{server.base}/readyz", timeout=5)
    assert first.status_code == 500 and first.json()["error"]["code"] == "inference_failed"
    assert [r.status_code for r in later] == [200] * 5
    assert ready.status_code == 200
    assert server.proc.poll() is None  # an ordinary run error never stops the process


def test_fatal_device_error_makes_readiness_fail_and_the_process_exit_70(start_server, jpeg):
    # Batches of 4 collected over 300 ms: the fatal run holds several requests at once.
    server = start_server(max_batch_size=4, max_batch_delay_ms=300, harness_fatal_at="0")
    url = f"{server.base}/classify"
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(httpx.post, url, files={"file": jpeg(color=(i, 0, 0))}, timeout=10)
            for i in range(4)
        ]
        responses = [f.result() for f in futures]
    # Readiness right after: 503, or no listener at all once shutdown began. Never 200.
    try:
        ready_status = httpx.get(f"{server.base}/readyz", timeout=2).status_code
    except httpx.TransportError:
        ready_status = None
    try:
        rc = server.proc.wait(timeout=60)  # catches a process that never exits, not a slow one
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not exit within 60 s of a fatal device error:\n{server.log()}")
    assert [r.status_code for r in responses] == [500] * 4, [r.text for r in responses]
    assert {r.json()["error"]["code"] for r in responses} == {"inference_failed"}
    assert ready_status in (503, None)
    assert rc == 70, server.log()
    assert "FATAL device error" in server.log()


def _truncated(source: Path, dest: Path) -> str:
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) // 2])  # a truncated protobuf
    return "cannot load ONNX model"


def _weights_changed(source: Path, dest: Path) -> str:
    # The head's weights scaled by 1.05 after export, the manifest and golden answers kept: a
    # file that loads, validates and serves plausible numbers, and is not the exported model.
    proto = onnx.load(source)
    head = next(i for i in proto.graph.initializer if "head.weight" in i.name)
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) * 1.05, head.name))
    onnx.save(proto, dest)
    return "the golden self-check failed (fp32 on CPUExecutionProvider): output 'logits'"


def _transform_changed(source: Path, dest: Path) -> str:
    # The manifest's resize filter changed after export, the golden image and its tensor kept:
    # what a transform bug or a Pillow that resamples differently looks like from the server.
    proto = onnx.load(source)
    entry = next(p for p in proto.metadata_props if p.key == MANIFEST_KEY)
    info = json.loads(entry.value)
    info["preprocess"]["interpolation"] = "bilinear"
    entry.value = json.dumps(info)
    onnx.save(proto, dest)
    return "the golden self-check failed: preprocessing: the stored PNG"


@pytest.mark.parametrize(
    "damage",
    [_truncated, _weights_changed, _transform_changed],
    ids=["corrupt", "tampered", "transform"],
)
def test_a_damaged_model_exits_3_without_ever_listening(
    start_server, tiny_model_path, tmp_path, damage
):
    damaged = tmp_path / "damaged.onnx"
    expected_message = damage(tiny_model_path, damaged)
    server = start_server(model_path=damaged, command=SERVE, wait=False)
    accepted = 0
    start = time.monotonic()
    # Poll the port for the whole life of the process: a half-alive server would accept.
    # Until the first connection it accepts, or a deadline: a server that took the damaged
    # file and serves fails here, with its output, rather than at pytest-timeout.
    while server.proc.poll() is None and not accepted and time.monotonic() < start + EXIT_WITHIN_S:
        try:
            httpx.get(f"{server.base}/healthz", timeout=0.5)
            accepted += 1
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    still_running = server.proc.poll() is None
    rc = server.stop()
    out = server.log()
    if still_running:
        pytest.fail(
            f"swin-serve on a damaged model ({damage.__name__}) was still running after "
            f"{time.monotonic() - start:.0f} s and had accepted {accepted} connections; waited "
            f"for exit code 3 with {expected_message!r}, within {EXIT_WITHIN_S} s and without "
            f"ever listening. Its output:\n{out}"
        )
    assert rc == 3, out
    assert expected_message in out and str(damaged) in out
    assert accepted == 0

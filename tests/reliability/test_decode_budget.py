"""Decode work is bounded, against the real server process: before a decode starts (a JPEG's scans,
counted from its markers) and while it runs (the request's deadline, a client that leaves, the
drain on SIGTERM), on /classify, v2 HTTP and gRPC.

A decode that no deadline can stop is made with the harness's decode gate (HARNESS_DECODE_GATE):
an image holding SLOW_MARK blocks its decode thread until the test creates the gate file, as a
long libjpeg call would. Every wait is bounded with a message; events are ordered by the gate and
by the harness's "started" file, never by sleeping.
"""

from __future__ import annotations

import base64
import io
import re
import signal
import socket
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from PIL import Image

from tests.support import free_port, metric
from tests.support.v2 import grpc_infer_image

SLOW_MARK = b"harness:slow-decode"  # tests/reliability/harness.py SLOW_DECODE_MARK
HANG_GUARD_S = 30.0  # any wait on the server: only a hung server takes this long
DEADLINE_MS = 500
# The answer comes from a timer on the event loop: allow this much past the deadline on a busy
# 2-core machine. Far below what the decode would take (for ever, until the gate opens).
LATE_S = 1.0
GRPC_DEADLINE_S = 1.5  # long enough for the call to reach its decode on a busy machine
DRAIN_S = 2.0
EXIT_MARGIN_S = 1.0  # docs/reliability.md: the process exits within SWIN_DRAIN_TIMEOUT_S + 1 s


def issue_scan_bomb() -> bytes:
    """Issue 27's file: 99 KB, 1006 scans over 4096x4096 pixels: 10 s of libjpeg work."""
    buf = io.BytesIO()
    Image.new("L", (4096, 4096), 128).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    last_scan, eoi = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:eoi] + data[last_scan:eoi] * 1000 + data[eoi:]


def jpeg(color=(120, 200, 40), comment: bytes = b"") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), color).save(buf, "JPEG", quality=90, comment=comment)
    return buf.getvalue()


def slow_jpeg() -> bytes:
    return jpeg(comment=SLOW_MARK)


def server_total_ms(resp: httpx.Response) -> float:
    match = re.search(r"total;dur=([\d.]+)", resp.headers["server-timing"])
    assert match, resp.headers
    return float(match.group(1))


def wait_until(condition, what: str, timeout_s: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.02)


def decodes_started(gate: Path) -> int:
    started = Path(f"{gate}.started")
    return len(started.read_text().splitlines()) if started.exists() else 0


def classify(server, data: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.base}/classify", files={"file": data}, headers=headers, timeout=HANG_GUARD_S
    )


def v2_infer(server, data: bytes) -> httpx.Response:
    name = httpx.get(f"{server.base}/v1/models", timeout=10).json()["name"]
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(data).decode()],
            }
        ]
    }
    return httpx.post(f"{server.base}/v2/models/{name}/infer", json=doc, timeout=HANG_GUARD_S)


def grpc_infer(server, data: bytes, timeout_s: float = HANG_GUARD_S):
    name = httpx.get(f"{server.base}/v1/models", timeout=10).json()["name"]
    return grpc_infer_image(server.grpc_address, name, data, timeout=timeout_s)


def error_of(resp: httpx.Response) -> dict:
    return resp.json()["error"]


@pytest.fixture
def grpc_server(start_server):
    def start(**settings):
        port = free_port()
        live = start_server(grpc_port=port, **settings)
        live.grpc_address = f"127.0.0.1:{port}"
        return live

    return start


def test_scan_bomb_is_refused_up_front_on_every_protocol_beside_normal_traffic(grpc_server):
    server = grpc_server()
    bomb = issue_scan_bomb()
    outcomes: dict[str, object] = {}

    def send(what: str, fn) -> None:
        try:
            outcomes[what] = fn()
        except grpc.RpcError as exc:
            outcomes[what] = exc

    senders = {
        "http bomb": lambda: classify(server, bomb),
        "v2 bomb": lambda: v2_infer(server, bomb),
        "grpc bomb": lambda: grpc_infer(server, bomb),
        **{f"normal {i}": (lambda i=i: classify(server, jpeg((i, 90, 90)))) for i in range(8)},
    }
    threads = [threading.Thread(target=send, args=item) for item in senders.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_S)
    assert set(outcomes) == set(senders), f"unanswered: {set(senders) - set(outcomes)}"

    http = outcomes["http bomb"]
    assert http.status_code == 413, http.text
    assert error_of(http)["code"] == "image_too_large"
    assert "SWIN_MAX_JPEG_SCANS" in error_of(http)["message"]
    # Refused from its markers, before libjpeg ran a scan: the server's own decode time for it
    # is a small part of the ten seconds its scans take (Server-Timing, the server's clock).
    decode_ms = float(re.search(r"decode;dur=([\d.]+)", http.headers["server-timing"]).group(1))
    assert decode_ms < 1000, http.headers["server-timing"]
    v2 = outcomes["v2 bomb"]
    assert v2.status_code == 413 and "SWIN_MAX_JPEG_SCANS" in v2.json()["error"], v2.text
    rpc = outcomes["grpc bomb"]
    assert isinstance(rpc, grpc.RpcError), rpc
    assert rpc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, rpc
    assert "SWIN_MAX_JPEG_SCANS" in rpc.details()
    # Normal requests are served meanwhile: a 200 is an answer within the server's own deadline
    # (SWIN_REQUEST_TIMEOUT_MS, 5 s), past which it would have answered 503.
    normal = [outcomes[k] for k in senders if k.startswith("normal")]
    assert [r.status_code for r in normal] == [200] * 8, [r.text[:200] for r in normal]


def test_a_slow_decode_is_answered_at_its_deadline_and_its_thread_does_not_starve_others(
    grpc_server, tmp_path
):
    gate = tmp_path / "gate"
    # One live decode thread, and room for two abandoned decodes beside it.
    server = grpc_server(decode_threads=1, max_abandoned_decodes=2, harness_decode_gate=gate)

    late = classify(server, slow_jpeg(), **{"X-Request-Timeout-Ms": str(DEADLINE_MS)})
    assert late.status_code == 503, late.text
    assert error_of(late)["code"] == "deadline_exceeded"
    assert "decoding" in error_of(late)["message"], late.text
    assert decodes_started(gate) == 1 and not gate.exists()  # answered while it still decodes
    total_ms = server_total_ms(late)
    assert DEADLINE_MS <= total_ms <= DEADLINE_MS + LATE_S * 1e3, total_ms

    # That decode still holds a thread, yet the one live slot is free: a normal image is served.
    assert classify(server, jpeg()).status_code == 200
    assert metric(server.metrics(), "swin_decodes_abandoned") == 1

    # A gRPC deadline abandons its decode too; the two abandoned decodes fill the room.
    with pytest.raises(grpc.RpcError) as rpc:
        grpc_infer(server, slow_jpeg(), timeout_s=GRPC_DEADLINE_S)
    assert rpc.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, rpc.value
    assert decodes_started(gate) == 2, "the gRPC call's decode never started"
    wait_until(
        lambda: httpx.get(f"{server.base}/readyz", timeout=5).status_code == 503,
        "readiness to go 503 with the abandoned decodes' room full",
    )
    refused = classify(server, jpeg())
    assert refused.status_code == 503 and error_of(refused)["code"] == "overloaded", refused.text
    assert "past their deadline" in error_of(refused)["message"]
    assert metric(server.metrics(), "swin_decodes_abandoned") == 2  # what an operator sees

    gate.touch()  # both abandoned decodes end
    wait_until(
        lambda: httpx.get(f"{server.base}/readyz", timeout=5).status_code == 200,
        "readiness to come back once the abandoned decodes ended",
    )
    assert classify(server, jpeg()).status_code == 200
    assert metric(server.metrics(), "swin_decodes_abandoned") == 0


def test_an_http_client_that_leaves_during_a_decode_is_logged_499(start_server, tmp_path):
    gate = tmp_path / "gate"
    server = start_server(harness_decode_gate=gate, log_level="info")
    body = slow_jpeg()
    head = (
        f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD_S) as sock:
        sock.sendall(head + body)
        wait_until(lambda: decodes_started(gate) == 1, "the decode to start")
    # The client has gone while the decode runs: counted and logged as 499, not as an answer.
    wait_until(lambda: "POST /classify 499" in server.log(), "the 499 access line")
    assert "POST /classify 503" not in server.log()
    gate.touch()
    assert classify(server, jpeg()).status_code == 200
    samples = server.metrics()
    assert samples[("swin_requests_total", (("endpoint", "/classify"), ("status", "499")))] == 1


def test_sigterm_during_a_decode_answers_draining_and_exits_within_the_drain_bound(
    start_server, tmp_path
):
    gate = tmp_path / "gate"  # never opened: the decode would run for the harness's 120 s guard
    server = start_server(harness_decode_gate=gate, drain_timeout_s=DRAIN_S, log_level="info")
    answers: list[httpx.Response] = []
    client = threading.Thread(target=lambda: answers.append(classify(server, slow_jpeg())))
    client.start()
    wait_until(lambda: decodes_started(gate) == 1, "the decode to start")

    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    rc = server.proc.wait(timeout=HANG_GUARD_S)  # a hang guard: the bound is asserted below
    exited_after = time.monotonic() - signalled
    client.join(HANG_GUARD_S)
    log = server.log()

    assert rc == 0, log
    assert exited_after <= DRAIN_S + EXIT_MARGIN_S, (exited_after, log)
    assert len(answers) == 1, "the request was never answered"
    assert answers[0].status_code == 503, answers[0].text
    assert answers[0].headers["content-type"] == "application/json"
    assert error_of(answers[0])["code"] == "draining"
    assert "drain budget spent: answered 1 requests still decoding with 503" in log, log
    assert "exiting with 1 abandoned decodes still running" in log, log
    assert "all requests finished" not in log, log

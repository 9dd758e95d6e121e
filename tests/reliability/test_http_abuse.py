"""HTTP abuse against the real server process, over raw sockets on 127.0.0.1.

One server for the module, with small limits so each bound is reached quickly:
64 KiB bodies, headers within 1.5 s, bodies within 2 s, 8 images per request.

Each timeout is asserted by what the server does, not by a stopwatch: the answer (408, or a
close) comes while the abusive client is still sending or still holding its request, and never
before the configured time. Waits are bounded only as hang guards, far above the timeouts.
"""

from __future__ import annotations

import io
import json
import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support import server_seconds

MAX_BODY = 64 * 1024
HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.0
EARLY_S = 0.1  # timers fire on the event loop's clock: allow them this much ahead of ours
HANG_GUARD_S = 15.0  # far past every timeout here: only a server that never answers hits it
TRICKLE_S = 0.1  # an abuser's pause between bytes
TRICKLE_BYTES = 150  # 15 s of trickling: a timeout that does not fire lets the client finish


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server(
        max_upload_bytes=MAX_BODY,
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        max_images_per_request=8,
    )


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, lower-cased headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def closed_by_peer(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closes ``sock`` (EOF or reset), or None if it stays open."""
    sock.settimeout(timeout)
    t0 = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - t0


def answer_waiting(sock: socket.socket, timeout: float) -> bool:
    """Whether the server has sent something (or closed) within ``timeout`` seconds."""
    return bool(select.select([sock], [], [], timeout)[0])


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def request_head(length: int | None, content_type: str = "image/jpeg", chunked: bool = False):
    lines = ["POST /classify HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def assert_served_quickly(server, jpeg) -> None:
    """A good request is still served, and did not wait behind the abuser: the server's own
    time for it stays below the body timeout that the abuse would otherwise have cost."""
    resp = httpx.post(f"{server.base}/classify", files={"file": jpeg()}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert server_seconds(resp) < BODY_TIMEOUT_S


def test_content_length_over_the_cap_is_413_before_any_body_is_read(server):
    with server.connect() as sock:
        sock.sendall(request_head(100 * 1024 * 1024))  # claims 100 MiB, sends nothing
        status, headers, body = read_response(sock)
        assert status == 413 and error_code(body) == "payload_too_large"
        assert headers["connection"] == "close"
        assert closed_by_peer(sock, 2) is not None


def test_chunked_body_over_the_cap_is_cut_off_while_streaming(server):
    sent = 0
    with server.connect() as sock:
        sock.sendall(request_head(None, chunked=True))
        chunk = b"\xff" * 4096
        try:
            while sent < 16 * MAX_BODY and not answer_waiting(sock, 0.01):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: that is the point
        status, headers, body = read_response(sock)
    assert status == 413 and error_code(body) == "payload_too_large"
    assert headers["connection"] == "close"
    # Answered once the cap was passed, long before the client was done (loopback buffers
    # absorb a few chunks more before the client sees the answer).
    assert sent <= 4 * MAX_BODY, sent


def test_content_length_that_understates_the_body(server, jpeg):
    """Claims 100 bytes, sends a whole JPEG: the server reads exactly 100 bytes as the image
    (400) and treats the rest as a malformed next request (uvicorn's plain 400), then closes."""
    image = jpeg()
    with server.connect() as sock:
        sock.sendall(request_head(100) + image)
        everything = read_until_closed(sock, 3)
    statuses = [int(part.split(b" ", 1)[0]) for part in everything.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [400, 400], everything[:300]
    assert b'"invalid_image"' in everything
    assert_served_quickly(server, jpeg)


def test_content_length_that_overstates_the_body_then_stalls_is_408(server, jpeg):
    with server.connect(timeout=HANG_GUARD_S) as sock:
        t0 = time.monotonic()
        sock.sendall(request_head(50_000) + jpeg()[:1000])
        assert_served_quickly(server, jpeg)  # while the staller holds its request
        # The client sends nothing more: only the server's body timer can end the request.
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - t0
        assert status == 408 and error_code(body) == "request_timeout"
        assert headers["connection"] == "close"
        assert elapsed >= BODY_TIMEOUT_S - EARLY_S  # not before the timeout
        assert closed_by_peer(sock, HANG_GUARD_S) is not None


def trickle(sock: socket.socket, byte: bytes) -> int:
    """Send ``byte`` every TRICKLE_S until the server answers or closes (or TRICKLE_BYTES are
    sent); returns how many were sent. Each byte resets any per-read timer."""
    sent = 0
    try:
        while sent < TRICKLE_BYTES and not answer_waiting(sock, TRICKLE_S):
            sock.sendall(byte)
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed by the server
    return sent


def test_a_body_trickled_byte_by_byte_is_cut_off_at_the_total_body_bound(server, jpeg):
    """A byte every 100 ms resets any per-read timeout; the bound is on the whole body."""
    result: dict = {}
    trickling = threading.Event()

    def abuse() -> None:
        with server.connect(timeout=HANG_GUARD_S) as sock:
            sock.sendall(request_head(50_000))
            t0 = time.monotonic()
            trickling.set()
            result["sent"] = trickle(sock, b"\xff")
            result["status"], _, body = read_response(sock)
            result["elapsed"] = time.monotonic() - t0
            result["code"] = error_code(body)

    thread = threading.Thread(target=abuse)
    thread.start()
    assert trickling.wait(HANG_GUARD_S)
    assert_served_quickly(server, jpeg)
    thread.join(timeout=HANG_GUARD_S + TRICKLE_BYTES * TRICKLE_S)
    assert result["status"] == 408 and result["code"] == "request_timeout"
    # Cut off while the client was still trickling (it would have gone on for 15 s), and not
    # before the bound.
    assert result["sent"] < TRICKLE_BYTES, result
    assert result["elapsed"] >= BODY_TIMEOUT_S - EARLY_S, result


@pytest.mark.parametrize("what", ["nothing", "trickled_headers", "idle_after_a_response"])
def test_slow_header_senders_are_disconnected_within_the_header_timeout(server, jpeg, what):
    with server.connect(timeout=HANG_GUARD_S) as sock:
        if what == "idle_after_a_response":
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[0] == 200
        t0 = time.monotonic()
        sent = 0
        if what == "trickled_headers":
            sock.sendall(b"POST /classify HTTP/1.1\r\n")
            sent = trickle(sock, b"X")  # a header byte every 100 ms
        elif what == "idle_after_a_response":
            sent = trickle(sock, b"G")  # keeps resetting uvicorn's own keep-alive timer
        # An idle connection is never closed by uvicorn alone, and a trickled one keeps
        # resetting its timers: any close here is the header deadline's.
        waited = closed_by_peer(sock, HANG_GUARD_S)
        elapsed = time.monotonic() - t0
        assert waited is not None, "connection still open"
        assert sent < TRICKLE_BYTES, "closed only once the client stopped trickling"
        assert elapsed >= HEADER_TIMEOUT_S - EARLY_S, elapsed  # not before the timeout
    assert_served_quickly(server, jpeg)


def test_hundreds_of_multipart_parts(server, jpeg):
    image = jpeg(size=(8, 8))
    files = [("file", image)] * 300
    many_files = httpx.post(f"{server.base}/classify", files=files, timeout=10)
    fields = {f"f{i}": "x" for i in range(300)}
    many_fields = httpx.post(
        f"{server.base}/classify", data=fields, files={"file": image}, timeout=10
    )
    assert many_files.status_code == 413
    assert many_files.json()["error"]["code"] in ("too_many_images", "payload_too_large")
    assert many_fields.status_code == 400 and many_fields.json()["error"]["code"] == "bad_request"


def test_one_huge_multipart_part_is_413(server):
    resp = httpx.post(
        f"{server.base}/classify", files={"file": b"\xff" * (4 * MAX_BODY)}, timeout=10
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("text/plain", 415, "unsupported_media_type"),
        ("application/json", 415, "unsupported_media_type"),
        ("application/octet-stream", 415, "unsupported_media_type"),
        ("application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ("multipart/form-data", 400, "bad_request"),  # no boundary
        ("multipart/form-data; boundary=zzz", 400, "bad_request"),  # boundary not in body
        (None, 415, "unsupported_media_type"),
    ],
)
def test_wrong_content_types(server, jpeg, content_type, status, code):
    headers = {"Content-Type": content_type} if content_type else {}
    resp = httpx.post(f"{server.base}/classify", content=jpeg(), headers=headers, timeout=10)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


SLOW_DECODE_MARK = b"harness:slow-decode"  # tests/reliability/harness.py
RAW = {"Content-Type": "image/jpeg"}


def jpeg_with_comment(comment: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 80), (120, 200, 40)).save(buf, "JPEG", quality=90, comment=comment)
    return buf.getvalue()


def wait_for_lines(path: Path, n: int, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not (path.exists() and len(path.read_text().splitlines()) >= n):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_concurrency_limit_is_a_json_503_and_uvicorns_backstop_is_documented(
    start_server, jpeg, tmp_path
):
    """Past max_concurrent_requests: our JSON 503 with Retry-After. Past max_connections open
    TCP connections: uvicorn's own plain-text 503 (the documented exception to the shape)."""
    gate = tmp_path / "gate"
    server = start_server(
        max_concurrent_requests=2,
        max_connections=6,
        max_batch_size=1,
        harness_decode_gate=gate,
    )
    url = f"{server.base}/classify"
    # Two requests hold both slots, their decodes gated (tests/reliability/harness.py); three more
    # are then refused at the door, before the gate opens.
    slow = jpeg_with_comment(SLOW_DECODE_MARK)
    held: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda: held.append(httpx.post(url, content=slow, headers=RAW)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    wait_for_lines(Path(f"{gate}.started"), 2, "both slow decodes to start")
    refused = [httpx.post(url, files={"file": jpeg()}, timeout=10) for _ in range(3)]
    gate.touch()
    for t in threads:
        t.join(timeout=HANG_GUARD_S)
    assert [r.status_code for r in held] == [200, 200], [r.text for r in held]
    for r in refused:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "overloaded"
        assert r.headers["Retry-After"] == "1"

    idle = [server.connect() for _ in range(6)]  # open connections that send nothing
    try:
        with server.connect() as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(sock)
        assert status == 503 and headers["content-type"].startswith("text/plain")
    finally:
        for sock in idle:
            sock.close()
    # Once the server has seen the idle connections close, it answers again (polled: how soon it
    # sees the closes is the machine's business).
    deadline = time.monotonic() + HANG_GUARD_S
    while (status := httpx.get(f"{server.base}/healthz", timeout=5).status_code) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def test_a_client_that_disconnects_mid_body_is_not_counted_as_a_server_error(server):
    before = server.metrics()

    def delta(after: dict, status: str) -> float:
        key = ("swin_requests_total", (("endpoint", "/classify"), ("status", status)))
        return after.get(key, 0.0) - before.get(key, 0.0)

    with server.connect() as sock:
        sock.sendall(request_head(50_000) + b"\xff" * 1000)
        # A request on another connection, answered: the server's loop has read our headers
        # and part of the body by now, so the request is in the app, waiting for the rest.
        assert httpx.get(f"{server.base}/healthz", timeout=HANG_GUARD_S).status_code == 200
    deadline = time.monotonic() + HANG_GUARD_S
    while not delta(after := server.metrics(), "499") and time.monotonic() < deadline:
        time.sleep(0.02)  # until the server has seen the disconnect and counted it

    assert delta(after, "499") == 1  # nginx's "client closed request": counted, never sent
    assert delta(after, "500") == 0

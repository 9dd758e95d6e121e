"""A stand-in OpenTelemetry collector for the benchmarks: an OTLP/HTTP trace receiver on the
loopback interface that decodes each export, as a collector must, counts its spans and keeps
nothing; and a block that keeps this shell's OTEL_* variables from the servers it starts."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def decode_export(body: bytes, encoding: str = "") -> ExportTraceServiceRequest:
    """The body of one OTLP/HTTP trace export (binary protobuf, compressed if
    OTEL_EXPORTER_OTLP_COMPRESSION says so); ValueError if it is none."""
    encoding = encoding.strip().lower()
    if encoding not in ("", "identity", "gzip", "deflate"):
        raise ValueError(f"Content-Encoding {encoding!r} is not gzip or deflate")
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        return ExportTraceServiceRequest.FromString(body)
    except (
        OSError,
        EOFError,
        zlib.error,
        DecodeError,
    ) as exc:  # gzip's errors are OSError, EOFError
        raise ValueError(
            f"not an ExportTraceServiceRequest ({encoding or 'identity'}): {exc}"
        ) from exc


class SpanSink:
    """An OTLP/HTTP trace receiver on 127.0.0.1 that counts what it gets: spans by name, server
    spans, span links and the exporting services (``service.name``). Answers each export as a
    collector does (200, an empty ExportTraceServiceResponse); thread-safe."""

    def __init__(self) -> None:
        self.spans: Counter[str] = Counter()
        self.server_spans = 0
        self.links = 0
        self.services: set[str] = set()
        self.exports = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None

    def record(self, request: ExportTraceServiceRequest) -> int:
        """Count one export's spans; returns how many it held."""
        n = 0
        with self._lock:
            self.exports += 1
            for resource_spans in request.resource_spans:
                for attribute in resource_spans.resource.attributes:
                    if attribute.key == "service.name":
                        self.services.add(attribute.value.string_value)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        n += 1
                        self.spans[span.name] += 1
                        self.links += len(span.links)
                        self.server_spans += span.kind == Span.SPAN_KIND_SERVER
        return n

    def wait_for(self, name: str, count: int, timeout_s: float) -> bool:
        """Block until ``count`` spans named ``name`` have arrived; False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.spans[name] >= count:
                    return True
            time.sleep(0.2)
        return False

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "spans": sum(self.spans.values()),
                "by_name": dict(self.spans.most_common()),
                "server_spans": self.server_spans,
                "links": self.links,
                "services": sorted(self.services),
                "exports": self.exports,
                "refused_exports": self.refused,
            }

    @property
    def endpoint(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT for it (the exporter appends /v1/traces)."""
        assert self._httpd is not None, "the sink is not running"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[SpanSink]:
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a collector

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path != "/v1/traces":
                    self._answer(404, b"", "text/plain")
                    return
                try:
                    request = decode_export(body, self.headers.get("Content-Encoding", ""))
                except ValueError as exc:
                    with sink._lock:
                        sink.refused += 1
                    self._answer(400, str(exc).encode(), "text/plain")
                    return
                sink.record(request)
                response = ExportTraceServiceResponse().SerializeToString()
                self._answer(200, response, "application/x-protobuf")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: one line per export otherwise
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        thread = threading.Thread(target=self._httpd.serve_forever, name="span-sink", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            thread.join(timeout=5)


@contextlib.contextmanager
def without_inherited_otel() -> Iterator[list[str]]:
    """The OTEL_* variables of this process are out of its environment (so of the servers')
    while the block runs; yields their names."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    for key in saved:
        del os.environ[key]
    try:
        yield sorted(saved)
    finally:
        os.environ.update(saved)

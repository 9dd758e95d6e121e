"""Log lines: text and JSON formats, the access log, and the trace ids that join them to spans."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from swin_serve.server.observability import tracing
from swin_serve.server.observability.logs import (
    ACCESS_LOGGER,
    UVICORN_LOGGERS,
    configure_logging,
    log_access,
)
from swin_serve.server.settings import Settings

TOUCHED = ("", *UVICORN_LOGGERS, ACCESS_LOGGER)


@pytest.fixture(autouse=True)
def restore_logging():
    """configure_logging changes process-wide state: put back what it touches."""
    saved = [
        (logging.getLogger(n), logging.getLogger(n).handlers[:], logging.getLogger(n).level)
        for n in TOUCHED
    ]
    flags = [(lg, lg.propagate, lg.disabled) for lg, _, _ in saved]
    yield
    for lg, handlers, level in saved:
        for handler in lg.handlers[:]:
            lg.removeHandler(handler)
        for handler in handlers:
            lg.addHandler(handler)
        lg.setLevel(level)
    for lg, propagate, disabled in flags:
        lg.propagate, lg.disabled = propagate, disabled


def configured(monkeypatch, **env: str) -> io.StringIO:
    """The server's logging, as ``SWIN_*`` variables ``env`` set it, writing to a buffer."""
    for name, value in env.items():
        monkeypatch.setenv(f"SWIN_{name.upper()}", value)
    buffer = io.StringIO()
    configure_logging(Settings(), stream=buffer)
    return buffer


def json_lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_parse_and_carry_level_logger_and_message(monkeypatch):
    buffer = configured(monkeypatch, log_format="json")
    logging.getLogger("service.test").warning("two\nlines: %s", "ok")
    logging.getLogger("uvicorn.error").info("Uvicorn running")
    first, second = json_lines(buffer)
    assert first["level"] == "WARNING" and first["logger"] == "service.test"
    assert first["message"] == "two\nlines: ok"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert "trace_id" not in first and "exception" not in first
    # uvicorn's own lines share the handler and its format.
    assert second["logger"] == "uvicorn.error" and second["message"] == "Uvicorn running"


def test_json_lines_include_the_exception(monkeypatch):
    buffer = configured(monkeypatch, log_format="json")
    try:
        raise ValueError("bad pixel")
    except ValueError:
        logging.getLogger("service.test").exception("decode failed")
    (line,) = json_lines(buffer)
    assert line["message"] == "decode failed" and line["level"] == "ERROR"
    assert "Traceback" in line["exception"] and "ValueError: bad pixel" in line["exception"]


def test_text_lines_keep_the_classic_format_and_append_the_ids(monkeypatch):
    buffer = configured(monkeypatch)
    logger = logging.getLogger("service.test")
    logger.info("plain")
    logger.info("joined", extra={"trace_id": "a" * 32, "span_id": "b" * 16})
    plain, joined = buffer.getvalue().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO service.test: plain", plain)
    assert joined.endswith(f"service.test: joined trace_id={'a' * 32} span_id={'b' * 16}")


def test_access_line_has_the_text_summary_and_the_json_fields(monkeypatch):
    text = configured(monkeypatch)
    log_access(protocol="http", method="POST", route="/classify", status=200, duration_s=0.01234)
    assert text.getvalue().rstrip().endswith(f"{ACCESS_LOGGER}: POST /classify 200 12.3 ms")

    as_json = configured(monkeypatch, log_format="json")
    log_access(
        protocol="grpc",
        method="ModelInfer",
        route="/inference.GRPCInferenceService/ModelInfer",
        status="OK",
        duration_s=0.5,
        model="swin_tiny",
    )
    (line,) = json_lines(as_json)
    assert line["logger"] == ACCESS_LOGGER and line["level"] == "INFO"
    expected = {
        "protocol": "grpc",
        "method": "ModelInfer",
        "route": "/inference.GRPCInferenceService/ModelInfer",
        "status": "OK",
        "duration_ms": 500.0,
        "model": "swin_tiny",
    }
    assert {k: line[k] for k in expected} == expected


def test_a_line_logged_in_a_span_carries_exactly_that_spans_ids(monkeypatch, spans):
    buffer = configured(monkeypatch, log_format="json")
    with tracing.tracer().start_as_current_span("POST /classify"):
        log_access(protocol="http", method="POST", route="/classify", status=200, duration_s=0.002)
    (span,) = spans.get_finished_spans()
    (line,) = json_lines(buffer)
    assert line["trace_id"] == format(span.context.trace_id, "032x")
    assert line["span_id"] == format(span.context.span_id, "016x")


def test_text_lines_in_a_span_end_with_its_ids(monkeypatch, spans):
    buffer = configured(monkeypatch)
    with tracing.tracer().start_as_current_span("step"):
        logging.getLogger("service.test").info("inside")
    logging.getLogger("service.test").info("after")
    (span,) = spans.get_finished_spans()
    inside, after = buffer.getvalue().splitlines()
    ids = f"trace_id={span.context.trace_id:032x} span_id={span.context.span_id:016x}"
    assert inside.endswith(f"inside {ids}")
    assert after.endswith("service.test: after")  # the span has ended


def test_no_ids_while_tracing_is_off(monkeypatch):
    assert tracing.tracer() is None
    buffer = configured(monkeypatch, log_format="json")
    log_access(protocol="http", method="GET", route="/v1/models", status=200, duration_s=0.001)
    (line,) = json_lines(buffer)
    assert "trace_id" not in line and "span_id" not in line


def test_access_log_can_be_turned_off(monkeypatch):
    buffer = configured(monkeypatch, access_log="false")
    log_access(protocol="http", method="POST", route="/classify", status=200, duration_s=0.01)
    logging.getLogger("service.test").info("others still log")
    assert buffer.getvalue().splitlines()[-1].endswith("others still log")
    assert ACCESS_LOGGER not in buffer.getvalue()


def test_access_log_never_raises(monkeypatch):
    buffer = configured(monkeypatch, log_format="json")
    log_access(protocol="http", method="POST", route="/x", status=200, duration_s=None)

    def broken():
        raise RuntimeError("no tracer state")

    monkeypatch.setattr(tracing, "log_ids", broken)  # the handler's filter calls it
    log_access(protocol="http", method="POST", route="/x", status=200, duration_s=0.01)
    assert buffer.getvalue() == ""


def test_configuring_twice_does_not_double_the_lines(monkeypatch):
    configured(monkeypatch)
    buffer = configured(monkeypatch)
    logging.getLogger("service.test").info("once")
    assert len(buffer.getvalue().splitlines()) == 1

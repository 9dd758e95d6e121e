"""The server's log lines: one format for our loggers and uvicorn's, the trace and span ids of the
current span on every line, and the access log (one line per answered request).

Text (the default) is the classic ``time LEVEL logger: message``, with `` trace_id=.. span_id=..``
appended while a span is current. ``SWIN_LOG_FORMAT=json`` writes one JSON object per line, for
log collectors: ``time`` (ISO 8601, UTC, ms), ``level``, ``logger``, ``message``, the ids, a log
call's structured ``fields`` (the access log's protocol, method, route, status, duration_ms and
model) and ``exception``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from swin_serve.server.observability import tracing
from swin_serve.server.settings import Settings

ACCESS_LOGGER = "swin_serve.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn's loggers; with log_config=None (uvicorn_server.py) uvicorn adds no handlers of its own.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")

_access = logging.getLogger(ACCESS_LOGGER)


class TraceIds(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` of the current span to a record that has none.

    It sits on the handler: a StreamHandler emits in the thread of the log call, so the current
    span is the one the line was logged under. A caller that logs after its span has ended passes
    the ids itself (``extra={"trace_id": ..., "span_id": ...}``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            ids = tracing.log_ids()
            record.trace_id, record.span_id = ids if ids else (None, None)
        return True


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the ids after the message (before any traceback, which follows it)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            return line
        return f"{line} trace_id={trace_id} span_id={getattr(record, 'span_id', None)}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a multi-line message or traceback stays inside its string."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "trace_id", None) is not None:
            entry["trace_id"] = record.trace_id
            entry["span_id"] = getattr(record, "span_id", None)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update((k, v) for k, v in fields.items() if k not in entry)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field the encoder does not know must not cost the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def _iso_utc(created: float) -> str:
    """``2026-12-02T10:41:07.123Z``: seconds since the epoch as ISO 8601 UTC, in ms."""
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Log everything (ours and uvicorn's) through one handler on the root logger, on ``stream``
    (default stderr), in ``settings.log_format`` at ``settings.log_level``; returns the handler.

    It replaces the root logger's handlers, as ``basicConfig(force=True)`` would, so that
    calling it twice does not print every line twice.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(TraceIds())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    _access.disabled = not settings.access_log
    return handler


def log_access(
    *,
    protocol: str,
    method: str,
    route: str,
    status: int | str,
    duration_s: float,
    model: str | None = None,
) -> None:
    """One INFO line on ``swin_serve.access`` for an answered request: ``POST /classify 200 12.3 ms``.

    ``route`` is the route template (``/v2/models/{name}/infer``), never the client's raw path:
    log lines and their fields stay bounded. Call it while the request's span is current, so that
    the line carries its ids.
    """
    if not _access.isEnabledFor(logging.INFO):
        return
    # Never raises: a log line must not fail the request it describes.
    with contextlib.suppress(Exception):
        duration_ms = duration_s * 1e3
        fields: dict[str, Any] = {
            "protocol": protocol,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(duration_ms, 3),
        }
        if model is not None:
            fields["model"] = model
        suffix = f" model={model}" if model is not None else ""
        extra: dict[str, Any] = {"fields": fields}
        ids = tracing.log_ids()  # on the record itself, whatever handler takes it
        if ids is not None:
            extra["trace_id"], extra["span_id"] = ids
        _access.info(
            "%s %s %s %.1f ms%s",
            method,
            route,
            status,
            duration_ms,
            suffix,
            extra=extra,
        )

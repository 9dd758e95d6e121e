"""uvicorn, configured and extended for production: connection limits, timeouts, drain, fatal exit.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and header bytes
(``h11_max_incomplete_event_size``), but not the *time* a client may take to send its request
line and headers: a client that opens a connection and trickles one header byte every few seconds
holds a connection slot forever (slowloris). ``GuardedH11Protocol`` adds that bound. The body's
time bound lives in ``http.middleware.BodyLimitMiddleware``, where it can answer a JSON 408.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from swin_serve.server.lifecycle import Lifecycle
from swin_serve.server.settings import Settings

EXIT_FATAL_DEVICE = 70  # EX_SOFTWARE

MAX_HEADER_BYTES = 16 * 1024  # h11_max_incomplete_event_size: request line + headers
BACKLOG = 256


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request's line and headers.

    The timer runs whenever the connection waits for a new request (after it opens, and after
    each response) and stops once h11 has parsed the headers. When it fires the connection is
    closed without a response: no request exists yet to answer. Any bytes the client sends do not
    restart it, unlike uvicorn's keep-alive timer, which a trickle of single bytes keeps resetting.
    """

    def __init__(self, *args, header_timeout_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_timer()  # headers complete: the body has its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request on this keep-alive connection gets a fresh header deadline; a
        # pipelined request that is already parsed has left IDLE and needs none.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request in time")
            self.transport.close()


def protocol_factory(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """A protocol class with the timeout bound: uvicorn instantiates ``config.http`` itself."""

    class ConfiguredH11Protocol(GuardedH11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, header_timeout_s=header_timeout_s, **kwargs)

    return ConfiguredH11Protocol


class DrainingServer(uvicorn.Server):
    """uvicorn, driven by the service's lifecycle: SIGTERM/SIGINT begins the drain (readiness 503
    at once), and a failed device ends the server, with EXIT_FATAL_DEVICE."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        lifecycle.on_fatal(self._shut_down)
        self._held_signal: int | None = None
        self._stopped = False

    def hold_signal(self, sig, frame) -> None:
        """SIGTERM/SIGINT's handler outside uvicorn's own. Before uvicorn listens, a stop signal
        is kept and acted on the moment it does, so a signal sent while the server starts is
        never lost. After uvicorn stopped, it re-raises the signal that stopped it into this
        handler, which then does nothing: a drained server exits 0."""
        if not self._stopped:
            self._held_signal = sig

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            if self._held_signal is not None:
                self.handle_exit(self._held_signal, None)
            try:
                yield
            finally:
                self._stopped = True

    def handle_exit(self, sig, frame) -> None:
        self.lifecycle.request_drain()  # safe in a signal handler
        super().handle_exit(sig, frame)

    def _shut_down(self, exc: BaseException) -> None:
        # As a signal would: uvicorn stops at its next tick, and a SIGINT during that shutdown
        # forces it, as after a signal.
        self.should_exit = True

    @property
    def exit_code(self) -> int:
        """0, or EXIT_FATAL_DEVICE once the device failed (the cause is already logged)."""
        return EXIT_FATAL_DEVICE if self.lifecycle.failed else 0


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration with every HTTP-level limit taken from ``settings``."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # h11 (not httptools): for h11_max_incomplete_event_size, a hard cap on header bytes, and
        # because GuardedH11Protocol extends it.
        http=protocol_factory(settings.header_timeout_s),
        lifespan="on",
        log_level=settings.log_level,
        # uvicorn's loggers go through the server's one handler and format (observability/logs.py),
        # and its access log stays off: swin_serve.access replaces it, with the route template and
        # the trace ids that uvicorn's line lacks.
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        # Past this many open connections (or running requests) uvicorn answers a plain-text 503
        # itself. It sits above max_concurrent_requests (enforced by the settings), so for
        # requests our JSON 503 fires first; only a flood of open connections reaches this.
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        backlog=BACKLOG,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        server_header=False,
        proxy_headers=False,
    )

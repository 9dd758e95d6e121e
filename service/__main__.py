"""``python -m service`` / ``swin-serve``: run the API under uvicorn with production limits.

Exit status: 0 after a clean drain (SIGTERM/SIGINT), 2 for invalid settings, 3 when the model
cannot be loaded, 70 after a fatal device error (so the orchestrator restarts the container).
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")

EXIT_BAD_SETTINGS = 2
EXIT_STARTUP_FAILED = 3
EXIT_FATAL_DEVICE = 70  # EX_SOFTWARE

# HTTP-level limits (see README, "Configuration"):
TIMEOUT_KEEP_ALIVE_S = 5  # idle keep-alive connections are closed after this
MAX_HEADER_BYTES = 16 * 1024  # h11_max_incomplete_event_size: request line + headers
BACKLOG = 256


class DrainingServer(uvicorn.Server):
    """uvicorn, plus: readiness flips to 503 the moment SIGTERM/SIGINT arrives, and a fatal
    device error ends the process with EXIT_FATAL_DEVICE."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.service_state = state
        self.exit_code = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Called from the signal handler; a flag flip is all that is safe (and all that is needed).
        self.service_state.begin_drain()
        super().handle_exit(sig, frame)

    def fatal(self, exc: BaseException) -> None:
        self.exit_code = EXIT_FATAL_DEVICE
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(
            f"swin-serve: invalid configuration (SWIN_* environment variables):\n{exc}",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server_ref: list[DrainingServer] = []
    app = create_app(settings, on_fatal=lambda exc: server_ref[0].fatal(exc))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="h11",  # for h11_max_incomplete_event_size, a hard cap on header bytes
        lifespan="on",
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_keep_alive=TIMEOUT_KEEP_ALIVE_S,
        # Past this many open connections + tasks uvicorn answers 503 itself: a backstop well
        # above what the queue admits, so the queue (with its JSON 503s) decides first.
        limit_concurrency=max(64, 4 * settings.queue_capacity),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        backlog=BACKLOG,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        server_header=False,
        proxy_headers=False,
    )
    server = DrainingServer(config, app.state.service)
    server_ref.append(server)
    _log_banner(settings)
    # uvicorn re-raises the signal that stopped it once it has shut down, which would end the
    # process with 128+15 even after a clean drain. Handlers installed here are the ones it
    # restores and re-raises into: they do nothing, so a drained server exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore_after_drain)
    server.run()
    if server.exit_code:
        return server.exit_code
    if not server.started:
        log.error("start-up failed (see above); exiting with status %d", EXIT_STARTUP_FAILED)
        return EXIT_STARTUP_FAILED
    return 0


def _ignore_after_drain(sig: int, frame: FrameType | None) -> None:
    log.debug("signal %d after shutdown: already drained", sig)


def _log_banner(settings: Settings) -> None:
    host = "localhost" if settings.host in ("0.0.0.0", "::", "127.0.0.1") else settings.host
    base = f"http://{host}:{settings.port}"
    log.info(
        "serving %s on %s - try:\n"
        "  curl -F file=@cat.jpg '%s/classify?top_k=5'\n"
        "  curl -F file=@cat.jpg -H 'Accept: application/x-npz' -o f.npz '%s/features?stages=embedding'\n"
        "  %s/docs  %s/v1/models  %s/readyz  %s/metrics",
        settings.model_path,
        base,
        base,
        base,
        base,
        base,
        base,
        base,
    )


if __name__ == "__main__":
    sys.exit(main())

"""``swin-serve`` / ``python -m swin_serve.server``: run the API under uvicorn with production
limits. It is configured by ``SWIN_*`` environment variables only; ``--help`` lists them.

Exit status: 0 after a clean drain (SIGTERM/SIGINT), 2 for invalid settings, 3 when the default
model cannot be loaded or a port cannot be bound, 70 after a fatal device error (so the
orchestrator restarts the container). SIGHUP looks at the model files again (see
docs/model-repository.md).
"""

from __future__ import annotations

import signal

# A publishing script may send SIGHUP the moment the server starts; by default it would end the
# process until the reload handler is installed, after the slow imports below.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from swin_serve.server.http.app import create_app  # noqa: E402
from swin_serve.server.observability.logs import configure_logging  # noqa: E402
from swin_serve.server.runtime.decoding import DecodePool  # noqa: E402
from swin_serve.server.settings import Settings  # noqa: E402
from swin_serve.server.uvicorn_server import (  # noqa: E402
    EXIT_FATAL_DEVICE,
    DrainingServer,
    uvicorn_config,
)

log = logging.getLogger("swin_serve.server")

EXIT_BAD_SETTINGS = 2
EXIT_STARTUP_FAILED = 3
__all__ = ["EXIT_BAD_SETTINGS", "EXIT_FATAL_DEVICE", "EXIT_STARTUP_FAILED", "main"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        return _help(args)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(
            f"swin-serve: invalid configuration (SWIN_* environment variables):\n{exc}",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    configure_logging(settings)
    app = create_app(settings)
    lifecycle = app.state.service.lifecycle
    server = DrainingServer(uvicorn_config(app, settings), lifecycle)
    lifecycle.on_ready(lambda: _log_banner(settings, app.state.service.grpc_port))
    # Until uvicorn installs its own handlers, a stop signal is held for it; after it stopped,
    # it re-raises the signal that stopped it into this one, which then does nothing, so a
    # drained server exits 0 (DrainingServer.hold_signal).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.hold_signal)
    signal.signal(signal.SIGHUP, lambda sig, frame: lifecycle.request_reload())
    server.run()
    status = _exit_status(server)
    _exit_now_if_decoding(app.state.service.decoder, status)
    return status


def _help(args: list[str]) -> int:
    """``--help``: the settings, each with its default; anything else is refused, since an
    argument the server ignored would look as if it had been taken."""
    lines = [
        "usage: swin-serve [--help]",
        "",
        "Serves the model(s) named by the environment (docs/configuration.md). Settings:",
    ]
    for name, field in Settings.model_fields.items():
        default = str(field.default) if isinstance(field.default, os.PathLike) else field.default
        lines.append(f"  SWIN_{name.upper():<28} default {default!r}")
    lines.append(
        "Exit status: 0 drained, 2 invalid settings, 3 start-up failed, 70 fatal device error."
    )
    asked = args in (["--help"], ["-h"])
    print("\n".join(lines), file=sys.stdout if asked else sys.stderr)
    if not asked:
        print(f"swin-serve: takes no arguments but --help, not {' '.join(args)!r}", file=sys.stderr)
    return 0 if asked else EXIT_BAD_SETTINGS


def _exit_status(server: DrainingServer) -> int:
    if server.exit_code:
        return server.exit_code
    if not server.started:
        log.error("start-up failed (see above); exiting with status %d", EXIT_STARTUP_FAILED)
        return EXIT_STARTUP_FAILED
    return 0


def _exit_now_if_decoding(decoder: DecodePool | None, status: int) -> None:
    """Exit at once while abandoned decodes still run: at a normal exit Python joins every
    worker thread, so a decode nobody waits for (its request long answered) would hold the
    process past its drain bound, for as long as the decode takes."""
    if decoder is None or not decoder.running:
        return
    log.warning("exiting with %d abandoned decodes still running", decoder.running)
    logging.shutdown()  # flush the log first: os._exit skips the interpreter's clean-up
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _log_banner(settings: Settings, grpc_port: int | None) -> None:
    host = "localhost" if settings.host in ("0.0.0.0", "::", "127.0.0.1") else settings.host
    base = f"http://{host}:{settings.port}"
    grpc = f"{host}:{grpc_port}" if grpc_port else "off (SWIN_GRPC_PORT=0)"
    served = settings.model_repository or settings.model_path
    # With API keys on, the examples carry the header a key goes in (never the key itself).
    key = " -H 'Authorization: Bearer $KEY'" if _keys_on(settings) else ""
    lines = [
        f"ready: serving {served} on {base} - try:",
        f"  {base}/  (the web page)",
        f"  curl{key} -F file=@samples/images/flower.jpg '{base}/classify?top_k=5'",
        f"  curl{key} -F file=@samples/images/flower.jpg -H 'Accept: application/x-npz' -o f.npz "
        f"'{base}/features?stages=embedding'",
        f"  {base}/docs  {base}/v1/models  {base}/readyz  {base}/metrics",
        "  kill -HUP <pid> (or SWIN_REPOSITORY_POLL_S): load added, changed and removed models",
        f"  Open Inference Protocol (KServe v2): {base}/v2 and gRPC {grpc}",
    ]
    if settings.host in ("0.0.0.0", "::"):
        lines.append(
            f"  bound to {settings.host}: every interface; from another machine use this "
            f"host's name or address for localhost (and see docs/production.md first)"
        )
    log.info("%s", "\n".join(lines))


def _keys_on(settings: Settings) -> bool:
    return settings.api_keys is not None or settings.api_keys_file is not None


if __name__ == "__main__":
    sys.exit(main())

"""The real server as the browser tests start it: small limits the page must show and enforce."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.live_server import start_server

# A small upload cap, so the 413 case needs only a 1.5 MB file.
MAX_UPLOAD_BYTES = 1_000_000
# Not the default (16), so the test can tell the model card shows live settings.
MAX_BATCH_SIZE = 8


@dataclass(frozen=True)
class Server:
    url: str
    max_batch_size: int
    max_upload_bytes: int


def serve_for_the_page(
    model_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The server with the settings below, then ``model_env`` (SWIN_* variables) on top."""
    with start_server(
        tmp_path_factory.mktemp("browser-server"),
        env=model_env,
        grpc_port=0,
        max_batch_size=MAX_BATCH_SIZE,
        max_upload_bytes=MAX_UPLOAD_BYTES,
    ) as live:
        yield Server(live.base, MAX_BATCH_SIZE, MAX_UPLOAD_BYTES)

"""The HTTP limits are settings, validated at start-up and handed to uvicorn as documented."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from swin_serve.server.settings import Settings
from swin_serve.server.uvicorn_server import GuardedH11Protocol, uvicorn_config


def test_limits_reach_uvicorn():
    settings = Settings(
        header_timeout_s=3,
        keep_alive_timeout_s=7,
        max_concurrent_requests=10,
        max_connections=99,
        drain_timeout_s=4,
    )
    config = uvicorn_config(object(), settings)
    assert config.limit_concurrency == 99
    assert config.timeout_keep_alive == 7
    assert config.timeout_graceful_shutdown == 4
    assert config.h11_max_incomplete_event_size == 16 * 1024
    assert issubclass(config.http, GuardedH11Protocol)


def test_connection_backstop_must_sit_above_the_request_limit():
    # Otherwise uvicorn's plain-text 503 would fire before our JSON one.
    with pytest.raises(ValidationError, match="max_connections"):
        Settings(max_concurrent_requests=100, max_connections=100)


@pytest.mark.parametrize("name", ["header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"])
def test_timeouts_must_be_positive(name):
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: 0})

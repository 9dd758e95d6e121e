"""Fixtures for the server tests, over the test doubles of tests/support/fakes.py.
tests/server/http/test_e2e.py uses the real tiny model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from swin_serve.artifact.contract import Manifest
from swin_serve.server.http.app import create_app
from swin_serve.server.observability import tracing
from tests.support.fakes import (
    FakeEngine,
    distinct_images,
    image_bytes,
    running,
    test_settings,
    tiny_manifest,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


# With --import-mode=importlib test modules cannot import this file, so helpers are fixtures.


@pytest.fixture
def make_engine() -> Callable[..., FakeEngine]:
    return FakeEngine


@pytest.fixture
def gated_engine(make_engine):
    """``(engine, release)``: a FakeEngine whose model runs all wait until ``release`` is set, so
    that the test, not the machine's speed, decides how long the model stays busy."""
    release = threading.Event()
    # FakeEngine asks ``fail`` at the end of each run whether to raise: waiting there holds it.
    engine = make_engine(fail=lambda index, batch: not release.wait(timeout=30))
    yield engine, release
    release.set()


@pytest.fixture
def make_app() -> Callable[..., FastAPI]:
    """``make_app(engine=None, on_fatal=None, **settings)``: an app on a FakeEngine by default."""

    def factory(engine: Any = None, on_fatal: Any = None, **overrides: Any) -> FastAPI:
        return create_app(
            test_settings(**overrides),
            engine if engine is not None else FakeEngine(),
            on_fatal=on_fatal,
        )

    return factory


@pytest.fixture
def serve() -> Callable[..., Any]:
    return running


@pytest.fixture
def png() -> Callable[..., bytes]:
    return image_bytes


@pytest.fixture
def pngs() -> Callable[[int], list[bytes]]:
    return distinct_images


@pytest.fixture
def manifest() -> Manifest:
    return tiny_manifest()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span sampled and kept in memory; off again after it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()
    provider.shutdown()

"""Fixtures for tests/deploy: the Dockerfile's stages, the compose files, the settings class, the metric
names and the dashboard (readers in tests/support/deploy_files.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.deploy_files import (
    ROOT,
    Stage,
    load_compose,
    merge,
    parse_dockerfile,
)


@pytest.fixture(scope="session")
def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse_dockerfile((ROOT / "Dockerfile").read_text())}


@pytest.fixture(scope="session")
def stage_order() -> list[str]:
    return [s.name for s in parse_dockerfile((ROOT / "Dockerfile").read_text())]


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_compose("docker-compose.yml")


@pytest.fixture(scope="session")
def compose_cpu(compose) -> dict[str, Any]:
    return merge(compose, load_compose("docker-compose.cpu.yml"))


# ---- the service's own modules -----------------------------------------------------------------


@pytest.fixture(scope="session")
def settings_cls():
    from swin_serve.server.settings import Settings

    return Settings


@pytest.fixture(scope="session")
def metric_names() -> set[str]:
    """Every series name the service exposes, from the metric families src/swin_serve/server/observability/metrics.py declares."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    from swin_serve.server.observability.metrics import Metrics

    registry = Metrics().registry
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads((ROOT / "deploy/grafana/dashboards/swin-serve.json").read_text())

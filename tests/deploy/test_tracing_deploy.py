"""Traces in the `monitoring` compose profile: Jaeger receives the service's spans over OTLP, and
Grafana links a latency bucket's exemplar to its trace.

Tracing stays off unless the user asks: the service's OTEL_* variables have no value in the
compose file, so Compose passes on the user's (shell or .env) and leaves the rest unset. No
container runs here (the images cannot be pulled): these read the files, as Compose and Grafana
would.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from swin_serve.server.observability import tracing
from swin_serve.server.observability.metrics import exemplar
from tests.deploy.test_docker_files import interpolate
from tests.deploy.test_monitoring import published

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "swin-serve"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources"
TRACING_PAGE = ROOT / "docs/tracing.md"
OTLP_HTTP, OTLP_GRPC, JAEGER_UI = "4318", "4317", "16686"


def container_env(environment: dict[str, Any], shell: dict[str, str]) -> dict[str, str]:
    """The container's environment from a compose ``environment`` mapping, as Compose builds it:
    a key with no value takes the shell's (or .env's) value, and is left out when that has none."""
    env = {}
    for key, value in interpolate(environment, shell).items():
        if value is None:
            if key in shell:
                env[key] = shell[key]
        else:
            env[key] = str(value)
    return env


def monitoring_services(compose) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "monitoring" in svc.get("profiles", [])
    }


def datasources() -> dict[str, dict[str, Any]]:
    """Every provisioned Grafana datasource, by uid."""
    sources = [
        source
        for path in sorted(DATASOURCES.glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    by_uid = {s["uid"]: s for s in sources}
    assert len(by_uid) == len(sources), "two datasources share a uid"
    return by_uid


def container_ports(svc: dict[str, Any]) -> set[str]:
    """The ports a service's container listens on for others: exposed or published."""
    published_ports = {str(p).split(":")[-1].split("/")[0] for p in svc.get("ports", [])}
    return published_ports | {str(p) for p in svc.get("expose", [])}


# ---- the trace backend -------------------------------------------------------------------------


def test_the_monitoring_profile_runs_a_pinned_jaeger_that_receives_otlp(compose):
    jaeger = compose["services"]["jaeger"]
    assert jaeger["profiles"] == ["monitoring"]
    # Jaeger v2 (the OpenTelemetry Collector based one), a release rather than a moving tag.
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"]), jaeger["image"]
    # Its receivers must listen beyond the container's own loopback to be reachable by swin-serve.
    assert jaeger["environment"]["JAEGER_LISTEN_HOST"] == "0.0.0.0"
    assert {OTLP_HTTP, OTLP_GRPC, JAEGER_UI} <= container_ports(jaeger)


def test_a_plain_compose_up_starts_no_trace_backend(compose):
    """The service does not depend on Jaeger: `docker compose up` without the profile would
    otherwise refuse to start (or start Jaeger with it)."""
    assert "jaeger" not in compose["services"][SERVICE].get("depends_on", [])


@pytest.mark.parametrize("everything", [{}, {"GRAFANA_HOST": "0.0.0.0", "JAEGER_HOST": "0.0.0.0"}])
def test_monitoring_ports_but_grafanas_are_published_on_the_loopback_interface_only(
    compose, everything
):
    """Prometheus's and Jaeger's UIs and Jaeger's OTLP receiver have no authentication."""
    services = monitoring_services(compose)
    assert {"prometheus", "grafana", "jaeger"} <= set(services)
    for name in services.keys() - {"grafana"}:
        assert {host for host, _, _ in published(compose, name, **everything)} == {"127.0.0.1"}
    ports = {(host_port, port) for _, host_port, port in published(compose, "jaeger")}
    # The UI, and OTLP/HTTP for a server run on the host; not gRPC, which a smoke run's HTTP/1.1
    # probe of every published port could not tell from a dead one.
    assert ports == {(JAEGER_UI, JAEGER_UI), (OTLP_HTTP, OTLP_HTTP)}


# ---- the service's OTEL_* variables --------------------------------------------------------------


def otel_keys(compose) -> list[str]:
    return [k for k in compose["services"][SERVICE]["environment"] if k.startswith("OTEL_")]


def test_the_service_passes_the_standard_otel_variables_on_with_no_value_of_its_own(compose):
    keys = otel_keys(compose)
    for key in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SERVICE_NAME",
        "OTEL_SDK_DISABLED",
    ):
        assert key in keys
    env = compose["services"][SERVICE]["environment"]
    # No value, not an empty one: the SDK does not read every empty variable as unset (an empty
    # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT would be taken as the URL).
    assert {k: env[k] for k in keys} == dict.fromkeys(keys)


def test_tracing_is_off_in_compose_unless_the_user_sets_an_endpoint(compose, compose_cpu):
    for config in (compose, compose_cpu):
        environment = config["services"][SERVICE]["environment"]
        env = container_env(environment, {})
        assert not [k for k in env if k.startswith("OTEL_")]
        assert not tracing.wanted(env)
        on = container_env(environment, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"})
        assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert tracing.wanted(on)
        off = container_env(
            environment,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318", "OTEL_SDK_DISABLED": "true"},
        )
        assert not tracing.wanted(off)


def documented_endpoints(host: str) -> list[urllib.parse.SplitResult]:
    """Every OTEL_EXPORTER_OTLP_ENDPOINT on ``host`` that the tracing page and compose file name."""
    text = TRACING_PAGE.read_text(encoding="utf-8") + (ROOT / "docker-compose.yml").read_text()
    found = re.findall(r"OTEL_EXPORTER_OTLP_ENDPOINT=(https?://[\w.-]+(?::\d+)?)", text)
    return [url for url in map(urllib.parse.urlsplit, found) if url.hostname == host]


def test_the_documented_endpoints_are_jaegers_otlp_http_receiver(compose):
    """The SDK's default protocol is http/protobuf, so an endpoint given without a protocol must
    be the OTLP/HTTP port (the SDK appends /v1/traces itself): on the compose network, and on
    the loopback port published for a server run on the host."""
    inside = documented_endpoints("jaeger")
    assert inside, f"{TRACING_PAGE.name} names no endpoint for the compose service"
    assert {str(url.port) for url in inside} == {OTLP_HTTP}
    assert OTLP_HTTP in container_ports(compose["services"]["jaeger"])
    on_host = {host_port: port for _, host_port, port in published(compose, "jaeger")}
    for url in documented_endpoints("127.0.0.1"):
        assert on_host.get(str(url.port)) == OTLP_HTTP, url.geturl()


def test_every_variable_compose_passes_on_is_on_the_tracing_page(compose):
    page = TRACING_PAGE.read_text(encoding="utf-8")
    missing = [k for k in otel_keys(compose) if k not in page]
    assert not missing, f"{TRACING_PAGE.name} does not mention {missing}"


# ---- exemplars: Prometheus keeps them, Grafana links them to Jaeger ------------------------------


def test_prometheus_keeps_exemplars_and_scrapes_openmetrics_first(compose):
    prometheus = compose["services"]["prometheus"]
    args = prometheus["command"]
    features = {
        f for a in args if a.startswith("--enable-feature=") for f in a.split("=", 1)[1].split(",")
    }
    assert "exemplar-storage" in features
    # A command replaces the image's arguments: its config file and storage must still be there.
    (config_file,) = [a.split("=", 1)[1] for a in args if a.startswith("--config.file=")]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"])
    assert mounts["./deploy/prometheus.yml"] == config_file
    assert "--storage.tsdb.path=/prometheus" in args
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == SERVICE]
    # Only OpenMetrics carries exemplars; Prometheus asks for the protocols in this order.
    assert job["scrape_protocols"][0].startswith("OpenMetricsText")


def test_grafana_has_a_jaeger_datasource_on_the_compose_jaeger(compose):
    (jaeger,) = [s for s in datasources().values() if s["type"] == "jaeger"]
    url = urllib.parse.urlsplit(jaeger["url"])
    assert url.hostname == "jaeger" and str(url.port) == JAEGER_UI
    assert JAEGER_UI in container_ports(compose["services"]["jaeger"])
    assert "jaeger" in compose["services"]["grafana"]["depends_on"]
    assert not jaeger.get("isDefault", False)  # the dashboard's queries stay on Prometheus


def test_the_prometheus_datasource_links_trace_id_exemplars_to_the_jaeger_datasource():
    sources = datasources()
    (prometheus,) = [s for s in sources.values() if s["type"] == "prometheus"]
    (link,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert sources[link["datasourceUid"]]["type"] == "jaeger"
    # The label Grafana reads the trace id from is the one the service's exemplars carry.
    labels = exemplar(("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"))
    assert labels is not None and labels[link["name"]] == "0af7651916cd43dd8448eb211c80319c"

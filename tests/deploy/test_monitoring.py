"""The `monitoring` compose profile: Prometheus scrapes the service, Grafana shows its metrics."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "swin-serve"
PROVISIONING = ROOT / "deploy/grafana/provisioning"


def queries(dashboard) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_prometheus_scrapes_the_services_metrics_endpoint(compose):
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == SERVICE]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    # Compose's network resolves service names; the port is the container's, not the host's.
    container_ports = {str(p).split(":")[-1] for p in compose["services"][SERVICE]["ports"]}
    assert targets == [f"{SERVICE}:{port}" for port in sorted(container_ports)]
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_grafana_datasource_is_the_compose_prometheus(compose, dashboard):
    (source,) = yaml.safe_load((PROVISIONING / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    used = {p["datasource"]["uid"] for p in dashboard["panels"]}
    used |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert used == {source["uid"]}


def test_grafana_loads_the_dashboard_from_the_mounted_folder(compose):
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards/swin-serve.yml").read_text())[
        "providers"
    ]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboard_has_the_panels_operators_ask_for(dashboard):
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("request rate", "latency percentiles", "batch size", "queue depth", "rejections"):
        assert topic in titles, f"no {topic!r} panel in: {titles}"
    latency = next(p for p in dashboard["panels"] if "latency" in p["title"].lower())
    assert {"p50", "p95", "p99"} <= {t["legendFormat"] for t in latency["targets"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_only_metrics_the_service_declares(dashboard, metric_names):
    used = {name for expr in queries(dashboard) for name in re.findall(r"\bswin_\w+", expr)}
    assert used, "the dashboard queries no swin_ metric"
    assert used <= metric_names, (
        f"not declared in service/metrics.py: {sorted(used - metric_names)}"
    )

"""The `monitoring` compose profile: Prometheus scrapes the service, Grafana shows its metrics.

Neither is open to the network by default: both publish on 127.0.0.1 only, and Grafana has no
anonymous access and refuses to start without an admin password of your own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_docker_files import MissingVariable, interpolate
from tests.support import skip_unless_ci

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
        f"not declared in src/swin_serve/server/observability/metrics.py: {sorted(used - metric_names)}"
    )


# ---- access: no default password, no anonymous access, loopback only ------------------------------


def grafana_start(compose, tmp_path: Path, password: str | None) -> subprocess.CompletedProcess:
    """Run Grafana's compose entrypoint as the container would, with `password` as
    GRAFANA_ADMIN_PASSWORD on the host and a stand-in for Grafana's own /run.sh."""
    env = {} if password is None else {"GRAFANA_ADMIN_PASSWORD": password}
    grafana = interpolate(compose["services"]["grafana"], env)
    run_sh = tmp_path / "run.sh"
    run_sh.write_text('#!/bin/sh\necho "grafana started as $GF_SECURITY_ADMIN_USER"\n')
    run_sh.chmod(0o755)
    entrypoint = [part.replace("/run.sh", str(run_sh)) for part in grafana["entrypoint"]]
    return subprocess.run(
        entrypoint,
        env={k: str(v) for k, v in grafana["environment"].items()},
        capture_output=True,
        text=True,
        timeout=10,
    )


@pytest.mark.parametrize("password", [None, "", "admin"])
def test_grafana_refuses_to_start_without_an_admin_password_of_your_own(
    compose, tmp_path, password
):
    result = grafana_start(compose, tmp_path, password)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr
    assert "grafana started" not in result.stdout


def test_grafana_starts_with_the_admin_password_from_the_environment(compose, tmp_path):
    result = grafana_start(compose, tmp_path, "correct horse battery staple")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "grafana started as admin"
    env = interpolate(
        compose["services"]["grafana"]["environment"], {"GRAFANA_ADMIN_PASSWORD": "pw"}
    )
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "pw"
    # Grafana's image starts /run.sh; the check must hand over to it, not replace it.
    assert compose["services"]["grafana"]["entrypoint"][-2].rstrip().endswith('exec /run.sh "$$@"')


def test_grafana_has_no_anonymous_access_and_no_sign_up(compose):
    env = compose["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env.get("GF_USERS_ALLOW_SIGN_UP", "false") == "false"
    # No password in the file: neither a literal nor a default.
    assert interpolate(env, {})["GF_SECURITY_ADMIN_PASSWORD"] == ""


def test_a_plain_compose_up_needs_no_monitoring_variable(compose, compose_cpu):
    """Compose interpolates every service, profile or not, before it filters by profile: a
    required ${VAR:?...} in a monitoring service would stop `docker compose up` too."""
    for config in (compose, compose_cpu):
        try:
            interpolate(config, {})
        except MissingVariable as exc:  # pragma: no cover - the failure message
            pytest.fail(f"docker compose up would fail without the variable: {exc}")


def published(compose, service: str, **env: str) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port."""
    out = []
    for port in interpolate(compose["services"][service]["ports"], env):
        parts = str(port).split(":")
        assert len(parts) == 3, f"{service} publishes {port!r} on every interface"
        out.append(tuple(parts))
    return out


@pytest.mark.parametrize("service", ["prometheus", "grafana"])
def test_monitoring_ports_are_published_on_the_loopback_interface_only(compose, service):
    assert {host for host, _, _ in published(compose, service)} == {"127.0.0.1"}


def test_only_grafana_which_asks_for_a_password_can_be_published_further(compose):
    assert published(compose, "grafana", GRAFANA_HOST="0.0.0.0") == [("0.0.0.0", "3000", "3000")]
    everything = {
        "GRAFANA_HOST": "0.0.0.0",
        "PROMETHEUS_HOST": "0.0.0.0",
        "MONITORING_HOST": "0.0.0.0",
    }
    assert published(compose, "prometheus", **everything) == [("127.0.0.1", "9090", "9090")]


# ---- PromQL, run by Prometheus's own promtool ---------------------------------------------------


def promtool() -> str:
    """Prometheus's rule tester; Debian's `prometheus` package ships it."""
    path = shutil.which("promtool")
    if path is None:
        skip_unless_ci(
            "promtool is not installed (Debian: apt-get install prometheus; .ci/run does)"
        )
    return path


def promtool_test(tmp_path: Path, rules: dict | None, tests: list[dict]) -> None:
    """Run ``promtool test rules`` on ``tests`` (with ``rules`` as the rule file); fail with its
    report."""
    files = []
    if rules is not None:
        (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
        files = ["rules.yml"]
    spec = {"rule_files": files, "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [promtool(), "test", "rules", "test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def documented_model_alerts() -> dict:
    page = (ROOT / "docs" / "model-repository.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```yaml\n(.*?)^```", page, re.S | re.M) if "alert:" in b]
    return yaml.safe_load(block)


def test_the_documented_model_alerts_fire_on_a_failed_load_and_a_model_serving_nothing(tmp_path):
    """Model a fails its first load (its series start at 1, which increase() would miss), model
    b's replacement is refused while b keeps serving, model c loads fine."""
    failed = {
        "summary": "a: load failed (the server's log says why)",
    }
    tests = [
        {
            "interval": "1m",
            "input_series": [
                {
                    "series": 'swin_model_loads_total{model="a",outcome="failed"}',
                    "values": "_x20 1x40",
                },
                {"series": 'swin_model_ready{model="a"}', "values": "_x20 0x40"},
                {"series": 'swin_model_loads_total{model="b",outcome="loaded"}', "values": "1x60"},
                {
                    "series": 'swin_model_loads_total{model="b",outcome="failed"}',
                    "values": "_x30 1x30",
                },
                {"series": 'swin_model_ready{model="b"}', "values": "1x60"},
                {"series": 'swin_model_loads_total{model="c",outcome="loaded"}', "values": "1x60"},
                {"series": 'swin_model_ready{model="c"}', "values": "1x60"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "22m",
                    "alertname": "SwinModelLoadRefused",
                    "exp_alerts": [
                        {
                            "exp_labels": {"model": "a", "outcome": "failed"},
                            "exp_annotations": failed,
                        }
                    ],
                },
                {"eval_time": "22m", "alertname": "SwinModelNotServing", "exp_alerts": []},
                {
                    "eval_time": "32m",
                    "alertname": "SwinModelLoadRefused",
                    "exp_alerts": [
                        {
                            "exp_labels": {"model": "a", "outcome": "failed"},
                            "exp_annotations": failed,
                        },
                        {
                            "exp_labels": {"model": "b", "outcome": "failed"},
                            "exp_annotations": {
                                "summary": "b: load failed (the server's log says why)"
                            },
                        },
                    ],
                },
                {
                    "eval_time": "32m",
                    "alertname": "SwinModelNotServing",
                    "exp_alerts": [
                        {
                            "exp_labels": {"model": "a"},
                            "exp_annotations": {
                                "summary": "a serves nothing: GET /v1/models/a says why"
                            },
                        }
                    ],
                },
                # Once past the window, a refused load is history; a model serving nothing is not.
                {"eval_time": "55m", "alertname": "SwinModelLoadRefused", "exp_alerts": []},
            ],
        }
    ]
    promtool_test(tmp_path, documented_model_alerts(), tests)


def test_every_dashboard_query_is_valid_promql(dashboard, tmp_path):
    """Grafana substitutes $__rate_interval; promtool then parses every query as a rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, expr in enumerate(queries(dashboard))
    ]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    done = subprocess.run(
        [promtool(), "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_sums_every_pipeline_metric_over_models(dashboard):
    """The pipeline metrics carry a `model` label: a panel without one in its legend must sum
    over it, or one server with several models draws a line per model under one name."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr, legend = target["expr"], target.get("legendFormat", "")
            if "{{model}}" in legend:
                assert re.search(r"by \([^)]*\bmodel\b", expr), expr
                continue
            for use in re.finditer(r"\b(swin_(?:queue|decode|inference|batch|images)\w*)", expr):
                before = expr[: use.start()]
                assert re.search(r"\b(sum|min|max|avg|count)\b", before), (
                    f"{panel['title']}: {expr}"
                )

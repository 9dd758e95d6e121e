"""The Kubernetes manifests (deploy/k8s): they render with kubectl's kustomize, every object
validates strictly against the Kubernetes API's own schema, and they keep what
docs/kubernetes.md promises (probes, drain, hardening, resources, spread, autoscaling)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import skip_unless_ci

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ADAPTER_RULES = K8S / "prometheus-adapter" / "rules.yaml"
OVERLAYS = ("cpu", "gpu")
# The oldest release the manifests need (the kubelet's preStop `sleep` action, beta and on by
# default from 1.30) and the newest whose schema kubernetes-validate ships.
OLDEST_KUBERNETES = "1.30.0"
NAME = "swin-serve"
GPU = "nvidia.com/gpu"
# The HPA compares its metric with the target within this ratio before it acts
# (kube-controller-manager --horizontal-pod-autoscaler-tolerance, 0.1 by default).
HPA_TOLERANCE = 0.1


# ---- rendering ----------------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        skip_unless_ci("kubectl is not installed (.ci/run installs Debian's kubernetes-client)")
    out = subprocess.run([path, "version", "--client"], capture_output=True, text=True).stdout
    match = re.search(r"Kustomize Version: v(\d+)\.", out)
    # Components (kind: Component) need kustomize 3.7; kubectl 1.21 and later embed v4 or newer.
    if match is None or int(match[1]) < 4:
        skip_unless_ci(f"this kubectl embeds no kustomize v4 or newer:\n{out}")
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def with_component(overlay: str, component: Path, tmp: Path) -> Path:
    """A kustomization of ``overlay`` plus ``component``, as a user writes it (kustomize takes
    only relative paths)."""
    rel = lambda p: os.path.relpath(p, tmp)  # noqa: E731
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [rel(K8S / "overlays" / overlay)],
                "components": [rel(component)],
            }
        )
    )
    return tmp


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    """Every way the manifests are meant to be built: base, overlays, overlays + component."""
    out = {"base": kustomize(K8S / "base")}
    for overlay in OVERLAYS:
        out[overlay] = kustomize(K8S / "overlays" / overlay)
        tmp = tmp_path_factory.mktemp(f"{overlay}-servicemonitor")
        out[f"{overlay}+servicemonitor"] = kustomize(
            with_component(overlay, K8S / "components" / "servicemonitor", tmp)
        )
    return out


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def pod_spec(objects) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects) -> dict[str, Any]:
    (c,) = pod_spec(objects)["containers"]
    return c


def env(objects) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(objects)["env"]}


def cpus(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def quantity(text: str) -> float:
    """A Kubernetes quantity (``460m``, ``16``, ``2Gi``) as a number."""
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if str(text).endswith(suffix):
            return float(str(text)[: -len(suffix)]) * factor
    return float(text)


# ---- they render, and validate against the API schema ---------------------------------------------


def test_every_overlay_renders_the_service_and_the_component_adds_only_a_servicemonitor(rendered):
    kinds = {
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for build in ("base", *OVERLAYS):
        assert sorted(o["kind"] for o in rendered[build]) == sorted(kinds), build
    for overlay in OVERLAYS:
        added = [o["kind"] for o in rendered[f"{overlay}+servicemonitor"]]
        assert sorted(added) == sorted([*kinds, "ServiceMonitor"])
    # Every object lands in the service's namespace (the ServiceMonitor too: it selects
    # Services of its own namespace).
    for build, objects in rendered.items():
        spaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
        assert spaces == {NAME}, build


@pytest.mark.parametrize("build", ["base", *OVERLAYS, *(f"{o}+servicemonitor" for o in OVERLAYS)])
def test_every_built_in_object_validates_strictly_against_the_kubernetes_api_schema(
    rendered, build
):
    import kubernetes_validate

    checked = 0
    for obj in rendered[build]:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a custom resource: test_the_servicemonitor_... checks it
        for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']} invalid for Kubernetes {version}: {exc}")
        checked += 1
    assert checked == 7


def test_strict_validation_catches_a_misspelt_field(rendered):
    """Guards the test above: strict mode refuses a field the API does not have."""
    import kubernetes_validate

    deployment = one(rendered["cpu"], "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, OLDEST_KUBERNETES, strict=True)
    del deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"]


def test_the_servicemonitor_is_what_the_prometheus_operator_accepts(rendered):
    """No schema for the CRD ships with kubernetes-validate: its standard parts (metadata, the
    label selector) are checked against the Kubernetes definitions they are, the rest against
    the fields of monitoring.coreos.com/v1 ServiceMonitor it uses."""
    import kubernetes_validate

    objects = rendered["cpu+servicemonitor"]
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    # The selector and metadata, validated as a Service's would be (same types).
    probe = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": monitor["metadata"],
        "spec": {"selector": monitor["spec"]["selector"]["matchLabels"]},
    }
    kubernetes_validate.validate(probe, OLDEST_KUBERNETES, strict=True)
    service = one(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    duration = re.compile(r"^(\d+(ms|s|m|h))+$")  # the CRD's pattern, in short
    assert duration.match(endpoint["interval"]) and duration.match(endpoint["scrapeTimeout"])


# ---- the pod: probes, drain, hardening ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_readyz_for_start_and_readiness_and_healthz_for_liveness(rendered, overlay):
    c = container(rendered[overlay])
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port.get(get["port"], get["port"]) == int(env(rendered[overlay])["SWIN_PORT"])
    # The start-up allowance covers a cold start (the server opens its port only after the
    # model is loaded and self-checked, then warms up): at least a minute.
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_prestop_pause_and_the_drain(rendered, overlay, settings_cls):
    spec, c = pod_spec(rendered[overlay]), container(rendered[overlay])
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(env(rendered[overlay])["SWIN_DRAIN_TIMEOUT_S"])
    assert 1 <= pause <= 15
    # The grace period runs from the start of preStop: the pause, then SIGTERM and the drain,
    # then a few seconds for the process to exit.
    assert spec["terminationGracePeriodSeconds"] >= pause + drain + 5
    settings_cls(drain_timeout_s=drain)  # a value the server accepts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_runs_unprivileged_on_a_read_only_root(rendered, overlay):
    spec, c = pod_spec(rendered[overlay]), container(rendered[overlay])
    pod, ctr = spec["securityContext"], c["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 10001  # the images' user
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert ctr["allowPrivilegeEscalation"] is False
    assert ctr["readOnlyRootFilesystem"] is True
    assert ctr.get("privileged", False) is False
    assert ctr["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    # The read-only root needs a writable /tmp (multipart uploads spill there).
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    namespace = one(rendered[overlay], "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_equal_limits_and_the_threads_fit_the_cpus(rendered, overlay, settings_cls):
    res = container(rendered[overlay])["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"] and key in res["limits"], key
    assert res["requests"] == res["limits"]  # the Guaranteed QoS class
    # Whole CPUs: under the static CPU manager policy they become the pod's cpuset, which is
    # what the server sizes the threads it is not told from.
    limit = cpus(res["limits"]["cpu"])
    assert limit == int(limit)
    # A thread knob set by hand fits what the CPU limit holds, and the settings validate.
    values = env(rendered[overlay])
    runs = int(values.get("SWIN_PARALLEL_BATCHES", 1))
    assert runs * int(values.get("SWIN_INTRA_OP_THREADS", 1)) <= limit
    assert int(values.get("SWIN_DECODE_THREADS", 1)) <= limit
    fields = {f"SWIN_{name.upper()}" for name in settings_cls.model_fields}
    assert set(values) <= fields, f"not a setting: {set(values) - fields}"
    settings_cls(**{k.removeprefix("SWIN_").lower(): v for k, v in values.items()})


def test_the_cpu_overlay_asks_for_no_gpu_and_serves_the_cpu_image(rendered):
    c = container(rendered["cpu"])
    assert c["image"] == f"{NAME}:cpu"
    for section in ("requests", "limits"):
        assert GPU not in c["resources"][section]
    assert env(rendered["cpu"])["SWIN_PROVIDERS"] == "cpu"


def test_the_gpu_overlay_asks_for_one_gpu_requires_cuda_and_batches_as_on_cuda(
    rendered, settings_cls
):
    c = container(rendered["gpu"])
    assert c["image"] == f"{NAME}:gpu"
    assert str(c["resources"]["limits"][GPU]) == "1"
    values = env(rendered["gpu"])
    assert values["SWIN_PROVIDERS"] == "cuda"
    defaults = settings_cls()
    assert int(values["SWIN_MAX_BATCH_SIZE"]) == defaults.resolved_max_batch_size(on_gpu=True)
    assert int(values["SWIN_PARALLEL_BATCHES"]) == defaults.resolved_parallel_batches(on_gpu=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_rollout_never_lowers_capacity(rendered, overlay):
    deployment = one(rendered[overlay], "Deployment")
    update = deployment["spec"]["strategy"]
    assert update["type"] == "RollingUpdate"
    assert update["rollingUpdate"]["maxUnavailable"] == 0
    assert update["rollingUpdate"]["maxSurge"] >= 1
    # The HPA owns the replica count: a value here would reset it on every apply.
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicas_spread_across_nodes_and_a_pdb_keeps_all_but_one(rendered, overlay):
    objects = rendered[overlay]
    spec = pod_spec(objects)
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    keys = {}
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        keys[constraint["topologyKey"]] = constraint["maxSkew"]
    assert keys.get("kubernetes.io/hostname") == 1
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    assert one(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_names_the_http_metrics_and_grpc_ports_of_the_pod(rendered, overlay):
    objects = rendered[overlay]
    service = one(objects, "Service")
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "metrics", "grpc"}
    # Each named container port is the one the server listens on, by its settings.
    values = env(objects)
    container_ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert container_ports == {
        "http": int(values["SWIN_PORT"]),
        "grpc": int(values["SWIN_GRPC_PORT"]),
    }
    # /metrics is served on the HTTP port: both names lead there.
    assert ports["http"]["targetPort"] == ports["metrics"]["targetPort"] == "http"
    assert ports["grpc"]["targetPort"] == "grpc"
    # gRPC is HTTP/2 without TLS: the value gateways and meshes read to route calls, not
    # connections (kube-proxy balances connections, which gRPC keeps open).
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    admitted = [p["port"] for rule in policy["ingress"] for p in rule["ports"]]
    assert sorted(admitted) == ["grpc", "http"]


# ---- autoscaling: the HPA reads what the adapter rule serves -------------------------------------


def adapter_rule() -> dict[str, Any]:
    (rule,) = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]
    return rule


def series_of(rule: dict[str, Any]) -> tuple[str, set[str]]:
    """The metric name and the label names of the rule's seriesQuery."""
    match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", rule["seriesQuery"])
    assert match, rule["seriesQuery"]
    return match[1], set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*!?=~?", match[2]))


def hpa_metric(objects) -> tuple[str, dict[str, Any]]:
    (metric,) = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"  # a per-pod average, not CPU
    return metric["pods"]["metric"]["name"], metric["pods"]["target"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_hpa_scales_the_deployment_on_the_metric_the_adapter_rule_serves(rendered, overlay):
    objects = rendered[overlay]
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": one(objects, "Deployment")["metadata"]["name"],
    }
    name, target = hpa_metric(objects)
    rule = adapter_rule()
    assert name == rule["name"]["as"]
    assert target["type"] == "AverageValue" and quantity(target["averageValue"]) > 0


def test_the_adapter_rule_reads_a_series_the_service_declares_per_pod(metric_names):
    rule = adapter_rule()
    series, labels = series_of(rule)
    assert series in metric_names, (
        f"{series} is not a series of src/swin_serve/server/observability/metrics.py"
    )
    assert re.search(rule["name"]["matches"], series)
    # namespace and pod are how the adapter ties a series to a pod; Prometheus adds both when
    # it scrapes (tests/server/observability/test_autoscaling_metric.py checks the service has neither).
    assert labels == {"namespace", "pod"}
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = rule["metricsQuery"]
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in query
    # A counter is read as a rate: seconds of waiting per second, the mean images queued
    # (what the query computes from it: the next test).
    assert series.endswith("_sum") and re.search(r"\brate\(<<\.Series>>", query)


def adapter_query(group_by: str, matchers: str) -> str:
    """The rule's metricsQuery as prometheus-adapter fills in its template."""
    rule = adapter_rule()
    series, _ = series_of(rule)
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def test_the_adapter_query_sums_a_pods_models_and_counts_a_pod_scraped_twice_once(tmp_path):
    """Pod p1 serves two models and is scraped by two jobs; p2 serves one. Each model queues
    at a steady rate (seconds of waiting per second = images waiting): the pod's value is the
    sum over its models, each counted once."""
    from tests.deploy.test_monitoring import promtool_test

    def series(pod: str, job: str, model: str, per_minute: int) -> dict[str, str]:
        labels = f'namespace="swin-serve",pod="{pod}",job="{job}",model="{model}"'
        return {
            "series": f"swin_queue_wait_seconds_sum{{{labels}}}",
            "values": f"0+{per_minute}x10",
        }

    query = adapter_query("pod", 'namespace="swin-serve",pod=~"p1|p2"')
    tests = [
        {
            "interval": "1m",
            "input_series": [
                series("p1", "kubernetes-pods", "swin_t", 60),
                series("p1", "servicemonitor", "swin_t", 60),
                series("p1", "kubernetes-pods", "swin_t.int8", 120),
                series("p1", "servicemonitor", "swin_t.int8", 120),
                series("p2", "kubernetes-pods", "swin_t", 30),
            ],
            "promql_expr_test": [
                {
                    "expr": query,
                    "eval_time": "10m",
                    "exp_samples": [
                        {"labels": '{pod="p1"}', "value": 3.0},
                        {"labels": '{pod="p2"}', "value": 0.5},
                    ],
                }
            ],
        }
    ]
    promtool_test(tmp_path, None, tests)


def test_the_cpu_hpa_target_is_the_capacity_models_queue_at_a_one_second_p99(rendered):
    from bench import capacity

    _, target = hpa_metric(rendered["cpu"])
    expected = capacity.hpa_target(capacity.load_replica(), capacity.HPA_P99_MS / 1e3)
    assert math.isclose(quantity(target["averageValue"]), expected, rel_tol=HPA_TOLERANCE), (
        f"the HPA targets {target['averageValue']}; bench/capacity.py gives {expected:.3f} "
        "from bench/results/results.json"
    )


# Settings of the deployment that say where and how long it listens, not how it serves: the
# benchmark's harness sets its own (a free port on the loopback interface, no gRPC), and ran on a
# machine whose `auto` provider is the CPU.
DEPLOYMENT_ONLY = {
    "SWIN_HOST",
    "SWIN_PORT",
    "SWIN_GRPC_PORT",
    "SWIN_LOG_LEVEL",
    "SWIN_DRAIN_TIMEOUT_S",
    "SWIN_MODEL_PATH",
}


def test_the_cpu_replica_runs_the_settings_the_capacity_was_measured_with(rendered):
    """The capacity table and the HPA's target come from one benchmarked server; the CPU pods run
    that server's settings, no more and no fewer, as results.json records them."""
    from bench.common import read_json
    from bench.targets import fp32_server

    results = read_json(ROOT / "bench" / "results" / "results.json")
    server = results["service"]["servers"][fp32_server(results)]
    benchmarked = {k: v for k, v in server["info"]["env"].items() if k not in DEPLOYMENT_ONLY}
    assert benchmarked.get("SWIN_PRECISION") == "fp32"  # what the capacity model sizes from
    for overlay in ("base", "cpu", "cpu+servicemonitor"):
        values = env(rendered[overlay])
        assert values.pop("SWIN_PROVIDERS") == "cpu"  # the cpu image has no other provider
        deployed = {k: v for k, v in values.items() if k not in DEPLOYMENT_ONLY}
        assert deployed == benchmarked, overlay


def test_the_gpu_hpa_target_is_below_one_full_batch_waiting(rendered):
    """At a full batch queued all the time the GPU runs back to back: the target leaves room."""
    _, target = hpa_metric(rendered["gpu"])
    batch = int(env(rendered["gpu"])["SWIN_MAX_BATCH_SIZE"])
    assert 0 < quantity(target["averageValue"]) < batch


# ---- KServe: the InferenceService ---------------------------------------------------------------

KSERVE = K8S / "kserve" / "inferenceservice.yaml"
# The fields KServe adds to a predictor's PodSpec (ComponentExtensionSpec, serving.kserve.io/v1beta1).
KSERVE_COMPONENT_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


@pytest.fixture(scope="module")
def inference_service() -> dict[str, Any]:
    return yaml.safe_load(KSERVE.read_text())


def predictor(isvc: dict[str, Any]) -> dict[str, Any]:
    (c,) = isvc["spec"]["predictor"]["containers"]
    return c


def predictor_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The pod KServe makes of the predictor: its PodSpec fields, less KServe's own."""
    spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k not in KSERVE_COMPONENT_FIELDS}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": NAME}, "spec": spec}


def test_the_inference_service_is_a_custom_predictor_that_speaks_v2(inference_service):
    assert inference_service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert inference_service["kind"] == "InferenceService"
    # A custom predictor is a PodSpec plus KServe's component fields, nothing else: in
    # particular no `protocolVersion`, which only a framework or `model` predictor has.
    assert set(inference_service["spec"]) == {"predictor"}
    assert set(inference_service["spec"]["predictor"]) <= KSERVE_COMPONENT_FIELDS | {
        "containers",
        "volumes",
    }
    c = predictor(inference_service)
    assert c["name"] == "kserve-container"  # the container KServe takes as the model server
    assert {e["name"]: e["value"] for e in c["env"]}["PROTOCOL"] == "v2"


def test_the_predictor_validates_strictly_as_a_pod(inference_service):
    import kubernetes_validate

    pod = predictor_pod(inference_service)
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"the predictor is no valid pod for Kubernetes {version}: {exc}")


def test_the_predictor_exposes_the_images_http_port_and_probes_v2_readiness(
    inference_service, stages, settings_cls
):
    from swin_serve.server.http.app import create_app
    from tests.deploy.test_docker_files import built, env_of

    c = predictor(inference_service)
    image_env = env_of(built(stages, "cpu"))
    # KServe routes to one port of the container: the HTTP one, where the image listens.
    (port,) = c["ports"]
    assert port["containerPort"] == int(image_env["SWIN_PORT"])
    probe = c["readinessProbe"]["httpGet"]
    assert probe["port"] == port["containerPort"]
    assert probe["path"] == "/v2/health/ready"
    assert probe["path"] in create_app(settings_cls(grpc_port=0)).openapi()["paths"]
    # Every other variable is a setting the server accepts.
    values = {e["name"]: e["value"] for e in c["env"] if e["name"] != "PROTOCOL"}
    fields = {f"SWIN_{name.upper()}" for name in settings_cls.model_fields}
    assert set(values) <= fields, f"not a setting: {set(values) - fields}"
    settings_cls(**{k.removeprefix("SWIN_").lower(): v for k, v in values.items()})


def test_the_predictor_runs_as_the_base_does(inference_service, rendered):
    """The same hardening, resources and settings as the CPU replica of the base."""
    c, base = predictor(inference_service), container(rendered["cpu"])
    assert c["image"].endswith(f"/{NAME}:cpu")  # the image the base's cpu overlay runs
    assert c["securityContext"].items() <= base["securityContext"].items()
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"] == base["resources"]
    values = {e["name"]: e["value"] for e in c["env"] if e["name"].startswith("SWIN_")}
    # The base's settings, less the ports and provider the image already has.
    base_values = {
        k: v
        for k, v in env(rendered["cpu"]).items()
        if k not in {"SWIN_HOST", "SWIN_PORT", "SWIN_GRPC_PORT", "SWIN_PROVIDERS"}
    }
    assert values == base_values
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in inference_service["spec"]["predictor"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def within(part: Any, whole: Any) -> bool:
    """Whether ``part`` is ``whole`` with some keys and list items left out."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            k in whole and within(v, whole[k]) for k, v in part.items()
        )
    if isinstance(part, list):
        return isinstance(whole, list) and all(any(within(p, w) for w in whole) for p in part)
    return part == whole


def test_the_readmes_inference_service_is_the_manifest_shortened(inference_service):
    readme = (ROOT / "README.md").read_text()
    (block,) = [
        b
        for b in re.findall(r"^```yaml\n(.*?)^```", readme, re.S | re.M)
        if "InferenceService" in b
    ]
    shown = yaml.safe_load(block)
    assert within(shown, inference_service)


# ---- the security scanner --------------------------------------------------------------------------


def test_checkov_skips_only_checks_it_justifies():
    config = (K8S / ".checkov.yaml").read_text()
    skipped = yaml.safe_load(config)["skip-check"]
    for check in skipped:
        # Each skipped check follows a comment of its own that says why.
        assert re.search(rf"(^\s*#.*\n)+\s*- {check}\s*$", config, re.M), check


def test_checkov_passes_on_the_rendered_manifests(rendered, tmp_path):
    """checkov cannot share the project's lock (it needs packaging < 24, which pytest 9 and
    build refuse): .ci/run installs it apart, pinned by deploy/k8s/checkov-requirements.txt."""
    checkov = os.environ.get("CHECKOV") or shutil.which("checkov")
    if checkov is None or not Path(checkov).is_file():
        skip_unless_ci(
            "checkov is not installed: set CHECKOV, or see deploy/k8s/checkov-requirements.txt"
        )
    for build in ("cpu+servicemonitor", "gpu+servicemonitor"):
        (tmp_path / f"{build}.yaml").write_text(yaml.safe_dump_all(rendered[build]))
    done = subprocess.run(
        [checkov, "--config-file", str(K8S / ".checkov.yaml"), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-5000:]
    assert re.search(r"Passed checks: [1-9]\d*, Failed checks: 0", done.stdout), done.stdout

"""Invariants of the Dockerfile, .dockerignore and compose files.

No container engine runs in the test suite (and the CUDA base image cannot be pulled here), so
these read the files and pin down what container-smoke cannot exercise: the GPU stage and the
GPU compose service. A podman-based smoke run (outside this suite) builds and runs the CPU target.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "swin-serve"
RUNTIMES = ("cpu", "gpu")
RUNTIME_CMD = ["python", "-m", "service"]


def requirements(*extras: str) -> list[str]:
    """What the Dockerfile installs for these extras (it runs the same script)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy/requirements.py"), *extras],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in out.split()]


def seconds(duration: str | int | float) -> float:
    """Compose duration ('1m30s', '45s', 30) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# ---- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_has_export_cpu_and_gpu_stages_with_gpu_the_default(stage_order):
    assert {"export", "cpu", "gpu"} <= set(stage_order)
    # `docker build .` and `make docker` build the last stage: that must be the GPU runtime.
    assert stage_order[-1] == "gpu"


def test_export_stage_takes_weights_and_an_overridable_cpu_torch_source(stages):
    export = stages["export"]
    assert export.base.startswith("python:3.11")
    args = dict(a.partition("=")[::2] for a in export.args("ARG"))
    assert args.get("WEIGHTS") == "official"
    assert args.get("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert "TORCH_FIND_LINKS" in args
    run = " ".join(export.args("RUN"))
    assert "$TORCH_INDEX_URL" in run and "$TORCH_FIND_LINKS" in run
    assert re.search(r"python -m export .*--checkpoint \"?\$WEIGHTS", run)
    assert "torch==2.13.0" in (ROOT / "pyproject.toml").read_text()
    assert "torch" in requirements("serve", "export")


def test_gpu_stage_uses_a_cuda_cudnn_runtime_base_matching_onnxruntime_gpu(stages):
    m = re.fullmatch(
        r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu(\d+)\.04", stages["gpu"].base
    )
    assert m, f"gpu base {stages['gpu'].base!r} is not an nvidia/cuda cudnn runtime image"
    # onnxruntime-gpu 1.31 wheels on PyPI are built for CUDA 13 + cuDNN 9 (build info
    # cuda_version 13.0); a CUDA 12 base would silently fall back to the CPU provider.
    assert m.group(1) == "13"
    # requires-python >= 3.11: Ubuntu 22.04's python3 is 3.10, 24.04's is 3.12.
    assert int(m.group(2)) >= 24


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_stages_never_install_torch(stages, stage):
    runtime = stages[stage]
    text = " ".join(v for _, v in runtime.instructions)
    assert "torch" not in text
    # Their dependencies come from requirements.py for their own extra, the project wheel
    # goes in with --no-deps, and only the wheel and the model come from the export stage.
    (extras,) = re.findall(r"requirements\.py ([\w ]+?) >", text)
    assert extras == ("serve" if stage == "cpu" else "gpu")
    assert re.search(r"pip install --no-deps /tmp/dist/\*\.whl", text)
    for copy in runtime.args("COPY"):
        if "--from=export" in copy:
            assert copy.split()[1] in ("/build/dist/", "/build/models/"), copy


@pytest.mark.parametrize("stage", ["export", *RUNTIMES])
def test_every_stage_installs_its_requirements_under_the_lock(stages, stage):
    runs = [v for kind, v in stages[stage].instructions if kind == "RUN"]
    installs = [
        cmd for run in runs for cmd in run.split("&&") if re.search(r"pip install\b.* -r ", cmd)
    ]
    assert installs, f"{stage} installs no requirements file"
    for cmd in installs:
        assert re.search(r"--constraint \S*requirements\.lock", cmd), cmd
    copies = " ".join(stages[stage].args("COPY"))
    assert "requirements.lock" in copies


def test_runtime_extras_are_torch_free_and_exclusive():
    cpu, gpu = requirements("serve"), requirements("gpu")
    assert "torch" not in cpu + gpu
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_stages_have_no_build_tools(stages, stage):
    runtime = stages[stage]
    assert "devel" not in runtime.base
    for run in runtime.args("RUN"):
        for tool in ("build-essential", "gcc", "g++", "make", "cmake", "git", "python3-dev"):
            assert not re.search(rf"(^|\s){re.escape(tool)}(\s|$)", run), (
                f"{tool} in {stage}: {run}"
            )


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_stages_run_as_a_non_root_user(stages, stage):
    kinds = [kw for kw, _ in stages[stage].instructions]
    users = stages[stage].args("USER")
    assert users, f"{stage} has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    # Nothing may switch back to root before the server starts.
    assert kinds.index("CMD") > len(kinds) - 1 - kinds[::-1].index("USER")


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_model_is_root_owned_and_read_only(stages, stage):
    # The export stage sets mode 0444; COPY --from keeps it and, without --chown, makes root the
    # owner. Nothing in the runtime stage may hand the model to the service user.
    assert re.search(r"chmod 0444 /build/models/\*", " ".join(stages["export"].args("RUN")))
    (copy,) = [c for c in stages[stage].args("COPY") if "/build/models/" in c]
    assert copy == "--from=export /build/models/ /app/models/"
    assert not any("/app/models" in run for run in stages[stage].args("RUN"))
    assert "SWIN_MODEL_PATH=/app/models/" in " ".join(stages[stage].args("ENV"))


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_cmd_is_exec_form_so_sigterm_reaches_the_server(stages, stage):
    (cmd,) = stages[stage].args("CMD")
    assert json.loads(cmd) == RUNTIME_CMD


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_listens_on_all_interfaces_port_8000(stages, stage):
    assert stages[stage].args("EXPOSE") == ["8000"]
    env = " ".join(stages[stage].args("ENV")).split()
    assert "SWIN_HOST=0.0.0.0" in env and "SWIN_PORT=8000" in env


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_healthcheck_probes_readyz_after_a_start_period(stages, stage):
    (check,) = stages[stage].args("HEALTHCHECK")
    assert re.search(r"--start-period=\d+s", check)
    cmd = json.loads(check[check.index("CMD") + 3 :])
    assert cmd[0] == "python" and "/readyz" in cmd[-1]


class _Probe(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_dockerfile_healthcheck_fails_while_not_ready(stages, status, healthy):
    """Runs the image's HEALTHCHECK command against a stand-in /readyz answering `status`."""
    server = http.server.HTTPServer(("127.0.0.1", 0), type("P", (_Probe,), {"status": status}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (check,) = stages["cpu"].args("HEALTHCHECK")
        cmd = json.loads(check[check.index("CMD") + 3 :])
        env = {**os.environ, "SWIN_PORT": str(server.server_port)}
        proc = subprocess.run([sys.executable, *cmd[1:]], env=env, capture_output=True, timeout=20)
    finally:
        server.shutdown()
    assert (proc.returncode == 0) is healthy


def test_dockerignore_sends_sources_and_wheels_but_not_local_state():
    patterns = [
        p.strip().rstrip("/")
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, p.removeprefix("**/")) or fnmatch.fnmatch(prefix, p)
            for p in patterns
            for prefix in prefixes
        )

    for path in (".venv/bin/python", "artefacts/x.onnx", ".git/HEAD", "service/__pycache__/a.pyc"):
        assert ignored(path), path
    for path in (
        "wheels/torch-2.13.0+cpu.whl",
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "deploy/requirements.py",
        "service/app.py",
        "export/__main__.py",
        "model/swin.py",
    ):
        assert not ignored(path), path
    assert (ROOT / "wheels").is_dir()  # COPY wheels/ needs the folder even when empty


# ---- compose ------------------------------------------------------------------------------------


def test_compose_builds_the_gpu_target_and_publishes_port_8000(compose):
    svc = compose["services"][SERVICE]
    assert svc["build"]["target"] == "gpu"
    assert any(str(p).split(":")[-1] == "8000" for p in svc["ports"])


def test_compose_reserves_nvidia_gpus(compose):
    devices = compose["services"][SERVICE]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_compose_healthcheck_probes_readyz_after_a_start_period(compose):
    check = compose["services"][SERVICE]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert "/readyz" in " ".join(check["test"])
    assert seconds(check["start_period"]) >= 10


def test_compose_restarts_the_service(compose):
    assert compose["services"][SERVICE]["restart"] in ("always", "unless-stopped", "on-failure")


def test_compose_grace_period_outlasts_the_drain(compose, settings_cls):
    svc = compose["services"][SERVICE]
    drain = float(svc["environment"].get("SWIN_DRAIN_TIMEOUT_S", settings_cls().drain_timeout_s))
    # Margin for the listener to close and the process to exit after the queue is empty.
    assert seconds(svc["stop_grace_period"]) >= drain + 5


def test_compose_environment_is_valid_service_settings(compose, settings_cls):
    env = compose["services"][SERVICE]["environment"]
    assert env["SWIN_HOST"] == "0.0.0.0"
    fields = {name.upper() for name in settings_cls.model_fields}
    unknown = [k for k in env if not k.startswith("SWIN_") or k[5:] not in fields]
    assert not unknown, f"not service settings: {unknown}"
    settings_cls(**{k[5:].lower(): v for k, v in env.items()})  # validates the values too


def test_compose_runs_the_model_read_only(compose):
    svc = compose["services"][SERVICE]
    model_mounts = [v for v in svc.get("volumes", []) if "/app/models" in str(v)]
    assert svc.get("read_only") is True or (
        model_mounts and all(str(v).endswith(":ro") for v in model_mounts)
    )


def test_cpu_override_builds_cpu_target_without_gpu_reservation(compose_cpu):
    svc = compose_cpu["services"][SERVICE]
    assert svc["build"]["target"] == "cpu"
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    assert not devices
    # Everything else (port, health check, grace period) is inherited, not re-declared.
    assert "/readyz" in " ".join(svc["healthcheck"]["test"]) and svc["stop_grace_period"]


def test_monitoring_profile_adds_prometheus_and_grafana_only_on_request(compose):
    services = compose["services"]
    assert "profiles" not in services[SERVICE]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"

"""Invariants of the Dockerfile, .dockerignore and compose files.

No container engine runs in the test suite (and no GPU is here), so these read the files and
pin down what container-smoke cannot exercise: the GPU stage and the GPU compose service. A podman-based smoke run (outside this suite) builds and runs the CPU target.
The export stage's RUN line is run for real, with a stand-in `python` that records its command
line and writes the files the exporter would.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.support import need_make
from tests.support.deploy_files import merge

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "swin-serve"
RUNTIMES = ("cpu", "gpu")  # the model baked in
SERVE_ONLY = ("cpu-runtime", "gpu-runtime")  # no model: an export is mounted at /models
RUNTIME_CMD = ["swin-serve"]
# Build argument of the export stage -> the exporter's option it becomes (switches take no value).
EXPORT_ARGS = {
    "VARIANT": "--variant",
    "WEIGHTS": "--checkpoint",
    "NUM_CLASSES": "--num-classes",
    "LABELS": "--labels",
    "IMG_SIZE": "--img-size",
    "FP16": "--fp16",
    "TRUST_CHECKPOINT": "--trust-checkpoint",
}
SWITCHES = ("FP16", "TRUST_CHECKPOINT")


def requirement_lines(*extras: str) -> list[str]:
    """What the Dockerfile installs for these extras (it runs the same script)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy/requirements.py"), *extras],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def requirements(*extras: str) -> list[str]:
    """The names of the packages requirement_lines() asks for."""
    return [
        re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower() for line in requirement_lines(*extras)
    ]


def seconds(duration: str | int | float) -> float:
    """Compose duration ('1m30s', '45s', 30) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def built(stages, name: str):
    """Stage `name` as the image it builds: its chain of FROM stages, root first, as one stage."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return dataclasses.replace(
        chain[-1], base=chain[0].base, instructions=[i for s in chain for i in s.instructions]
    )


def env_of(stage) -> dict[str, str]:
    """The stage's ENV values, later ones winning (values here hold no spaces)."""
    return dict(
        word.split("=", 1) for value in stage.args("ENV") for word in value.split() if "=" in word
    )


def depends_on(stages, name: str) -> set[str]:
    """Every stage that building `name` needs: FROM parents and COPY --from sources, transitively."""
    needed, todo = set(), [name]
    while todo:
        stage = stages[todo.pop()]
        refs = [stage.base, *re.findall(r"--from=(\S+)", " ".join(stage.args("COPY")))]
        for ref in refs:
            if ref in stages and ref not in needed:
                needed.add(ref)
                todo.append(ref)
    return needed


# ---- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_has_export_cpu_and_gpu_stages_with_gpu_the_default(stage_order):
    assert {"export", "cpu", "gpu", *SERVE_ONLY} <= set(stage_order)
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
    assert re.search(r"swin-export .*--checkpoint \"?\$WEIGHTS", run)
    # The optional model arguments default to empty: the exporter decides.
    for name in ("NUM_CLASSES", "LABELS", "IMG_SIZE", *SWITCHES):
        assert args.get(name) == "", name
    # A RUN sees (and is cached on) every ARG declared before it: the model's arguments come
    # after the dependency install, so another checkpoint reuses the torch layer.
    steps = export.instructions
    install = max(i for i, (kw, v) in enumerate(steps) if kw == "RUN" and "pip install" in v)
    for i, (kw, value) in enumerate(steps):
        if kw == "ARG" and value.partition("=")[0] in EXPORT_ARGS:
            assert i > install, value
    assert "torch==2.13.0" in (ROOT / "pyproject.toml").read_text()
    assert "torch" in requirements("serve", "export")


def test_gpu_stage_is_the_cpu_stages_python_with_cuda_from_the_gpu_extra(stages):
    # The lock is resolved for CPython 3.11: every image runs the Python it was resolved for.
    base = built(stages, "gpu").base
    assert base == built(stages, "cpu").base and base.startswith("python:3.11")
    # No CUDA base image: CUDA 13 and cuDNN 9 come as the wheels of onnxruntime-gpu's extras
    # (tests/deploy/test_lock.py pins them), which the server loads itself.
    ort = [Requirement(r) for r in requirement_lines("gpu") if r.startswith("onnxruntime-gpu")]
    assert [r.extras for r in ort] == [{"cuda", "cudnn"}]
    # Without the nvidia/cuda base, its settings for the NVIDIA Container Toolkit are the image's
    # own: a driver older than CUDA 13 stops the container, not just the CUDA provider.
    env = env_of(built(stages, "gpu"))
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    # where a device plugin mounts the driver without the toolkit's loader hook (GKE)
    assert "/usr/local/nvidia/lib64" in env["LD_LIBRARY_PATH"].split(":")
    assert "NVIDIA_REQUIRE_CUDA" not in env_of(built(stages, "cpu"))


@pytest.mark.parametrize("stage", RUNTIMES + SERVE_ONLY)
def test_runtime_stages_never_install_torch(stages, stage):
    runtime = built(stages, stage)
    text = " ".join(v for _, v in runtime.instructions)
    assert "torch" not in text
    # Their dependencies come from requirements.py for their own extra, the project wheel
    # goes in with --no-deps, and only the wheel (from the torch-free wheel stage) and the model
    # (from the export stage) come from other stages.
    (extras,) = re.findall(r"requirements\.py ([\w ]+?) >", text)
    assert extras == ("serve openvino" if stage.startswith("cpu") else "gpu")
    assert re.search(r"pip install --no-deps /tmp/dist/\*\.whl", text)
    for copy in runtime.args("COPY"):
        if "--from=" in copy:
            assert copy.split()[:2] in (
                ["--from=wheel", "/build/dist/"],
                ["--from=export", "/build/models/"],
            ), copy
    assert "torch" not in " ".join(stages["wheel"].args("RUN") + stages["wheel"].args("COPY"))


@pytest.mark.parametrize("stage", SERVE_ONLY)
def test_serve_only_images_need_no_export_stage_and_look_for_the_model_in_models(
    stages, stage, settings_cls
):
    # BuildKit builds only the stages a target needs: these never install torch nor export.
    assert "export" not in depends_on(stages, stage)
    assert "export" in depends_on(stages, stage.removesuffix("-runtime"))
    image = built(stages, stage)
    assert not any("/app/models" in c for c in image.args("COPY"))
    # The default is the file `make export` writes, so mounting artefacts/ at /models just works.
    path = env_of(image)["SWIN_MODEL_PATH"]
    assert path.startswith("/models/")
    assert Path(path).name == settings_cls.model_fields["model_path"].default.name


def test_wheel_stage_copies_every_package_and_file_the_wheel_needs(stages):
    """The runtime images get the project from this stage, which copies only what the wheel
    holds (not `COPY . .`: a checkpoint in the build context stays out of its layers)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copies = stages["wheel"].args("COPY")
    copied = {source.rstrip("/") for c in copies for source in c.split()[:-1]}
    find = project["tool"]["setuptools"]["packages"]["find"]
    needed = set(find["where"])
    needed |= {project["project"]["readme"], *project["project"]["license-files"]}
    needed |= {"pyproject.toml", "requirements.lock"}
    assert needed <= copied, needed - copied
    assert "." not in copied
    run = " ".join(stages["wheel"].args("RUN"))
    assert "pip wheel --no-deps --no-build-isolation -w /build/dist ." in run


@pytest.mark.parametrize("stage", ["export", *RUNTIMES, *SERVE_ONLY])
def test_every_stage_installs_its_requirements_under_the_lock(stages, stage):
    image = built(stages, stage)
    runs = [v for kind, v in image.instructions if kind == "RUN"]
    installs = [
        cmd for run in runs for cmd in run.split("&&") if re.search(r"pip install\b.* -r ", cmd)
    ]
    assert installs, f"{stage} installs no requirements file"
    for cmd in installs:
        assert re.search(r"--constraint \S*requirements\.lock", cmd), cmd
    copies = " ".join(image.args("COPY"))
    assert "requirements.lock" in copies


def test_every_pip_install_from_an_index_is_under_the_lock(stages):
    for name, stage in stages.items():
        for run in stage.args("RUN"):
            for cmd in run.split("&&"):
                if re.search(r"pip install\b", cmd) and "--no-deps /tmp/dist/" not in cmd:
                    assert re.search(r"--constraint \S*requirements\.lock", cmd), (name, cmd)


def test_runtime_extras_are_torch_free_and_exclusive():
    cpu, gpu = requirements("serve"), requirements("gpu")
    assert "torch" not in cpu + gpu
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


@pytest.mark.parametrize("stage", RUNTIMES + SERVE_ONLY)
def test_runtime_stages_have_no_build_tools(stages, stage):
    runtime = built(stages, stage)
    assert "devel" not in runtime.base
    for run in runtime.args("RUN"):
        for tool in ("build-essential", "gcc", "g++", "make", "cmake", "git", "python3-dev"):
            assert not re.search(rf"(^|\s){re.escape(tool)}(\s|$)", run), (
                f"{tool} in {stage}: {run}"
            )


@pytest.mark.parametrize("stage", RUNTIMES + SERVE_ONLY)
def test_runtime_stages_run_as_a_non_root_user(stages, stage):
    kinds = [kw for kw, _ in built(stages, stage).instructions]
    users = built(stages, stage).args("USER")
    assert users, f"{stage} has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    # Nothing may switch back to root before the server starts.
    assert kinds.index("CMD") > len(kinds) - 1 - kinds[::-1].index("USER")


@pytest.mark.parametrize("stage", RUNTIMES)
def test_runtime_model_is_root_owned_and_read_only(stages, stage):
    # The export stage sets mode 0444; COPY --from keeps it and, without --chown, makes root the
    # owner. Nothing in the runtime stage may hand the model to the service user.
    assert re.search(r"chmod 0444 /build/models/\*", " ".join(stages["export"].args("RUN")))
    (copy,) = [c for c in built(stages, stage).args("COPY") if "/build/models/" in c]
    assert copy == "--from=export /build/models/ /app/models/"
    assert not any("/app/models" in run for run in built(stages, stage).args("RUN"))
    assert "SWIN_MODEL_PATH=/app/models/" in " ".join(stages[stage].args("ENV"))
    assert env_of(built(stages, stage))["SWIN_MODEL_PATH"].startswith("/app/models/model")


@pytest.mark.parametrize("stage", RUNTIMES + SERVE_ONLY)
def test_runtime_cmd_is_exec_form_so_sigterm_reaches_the_server(stages, stage):
    (cmd,) = built(stages, stage).args("CMD")
    assert json.loads(cmd) == RUNTIME_CMD


@pytest.mark.parametrize("stage", RUNTIMES + SERVE_ONLY)
def test_runtime_listens_on_all_interfaces_http_8000_and_grpc_8001(stages, stage, settings_cls):
    env = env_of(built(stages, stage))
    assert env["SWIN_HOST"] == "0.0.0.0"
    assert env["SWIN_PORT"] == "8000" and env["SWIN_GRPC_PORT"] == "8001"
    # The image's ports are the ones it declares, and the settings accept them together.
    (exposed,) = built(stages, stage).args("EXPOSE")
    assert sorted(exposed.split()) == sorted([env["SWIN_PORT"], env["SWIN_GRPC_PORT"]])
    settings_cls(port=env["SWIN_PORT"], grpc_port=env["SWIN_GRPC_PORT"])


@pytest.mark.parametrize("stage", RUNTIMES + SERVE_ONLY)
def test_runtime_healthcheck_probes_readyz_after_a_start_period(stages, stage):
    (check,) = built(stages, stage).args("HEALTHCHECK")
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
        (check,) = built(stages, "cpu").args("HEALTHCHECK")
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

    # .env holds compose settings such as GRAFANA_ADMIN_PASSWORD: never in an image layer.
    for path in (
        ".venv/bin/python",
        "artefacts/x.onnx",
        ".git/HEAD",
        "src/swin_serve/server/__pycache__/a.pyc",
        ".env",
    ):
        assert ignored(path), path
    for path in (
        "wheels/torch-2.13.0+cpu.whl",
        "pyproject.toml",
        "requirements.lock",
        "README.md",
        "deploy/requirements.py",
        "src/swin_serve/server/http/app.py",
        "src/swin_serve/export/__main__.py",
        "src/swin_serve/model/swin.py",
        # WEIGHTS and LABELS: checkpoints and labels files kept in the project folder.
        "my.pth",
        "checkpoints/swin_base_finetuned.safetensors",
        "labels.txt",
    ):
        assert not ignored(path), path
    assert (ROOT / "wheels").is_dir()  # COPY wheels/ needs the folder even when empty


# ---- compose ------------------------------------------------------------------------------------


def test_compose_builds_the_gpu_target_and_publishes_port_8000(compose):
    svc = compose["services"][SERVICE]
    assert svc["build"]["target"] == "gpu"
    assert any(str(p).split(":")[-1] == "8000" for p in svc["ports"])


def published_container_ports(service: dict[str, Any]) -> set[str]:
    """The container ports a compose service publishes on the host (short port syntax)."""
    return {str(p).split(":")[-1].split("/")[0] for p in service.get("ports", [])}


def test_compose_serves_grpc_inside_its_network_and_publishes_only_http(compose, compose_cpu):
    for merged in (compose, compose_cpu):
        svc = merged["services"][SERVICE]
        env = svc["environment"]
        assert [str(p) for p in svc["expose"]] == [env["SWIN_GRPC_PORT"]]
        # The podman smoke run (shared/tools/container-smoke) curls /readyz on every published
        # port; a gRPC port answers no HTTP/1.1, so only the HTTP port is published by default.
        assert published_container_ports(svc) == {env["SWIN_PORT"]}


def test_the_documented_grpc_override_publishes_grpc_beside_http(compose, compose_cpu):
    """docs/deployment.md#grpc: its override, merged after the compose files, publishes both."""
    page = (ROOT / "docs" / "deployment.md").read_text()
    (snippet,) = [
        body
        for body in re.findall(r"^```yaml\n(.*?)^```", page, re.S | re.M)
        if "docker-compose.override.yml" in body
    ]
    override = yaml.safe_load(snippet)
    for base in (compose, compose_cpu):
        svc = interpolate(merge(base, override), {})["services"][SERVICE]
        env = svc["environment"]
        assert published_container_ports(svc) == {env["SWIN_PORT"], env["SWIN_GRPC_PORT"]}


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
    # OTEL_* variables are the OpenTelemetry SDK's (tests/deploy/test_tracing_deploy.py).
    environment = compose["services"][SERVICE]["environment"]
    env = {k: v for k, v in environment.items() if not k.startswith("OTEL_")}
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


# ---- the export stage's RUN line, run for real ----------------------------------------------------

# Stands in for python in the export stage: records `swin-export ...` and writes the files the
# exporter names after the variant (with the input size appended when one is given).
FAKE_EXPORTER = """#!{python}
import json, os, sys
from pathlib import Path
from typing import Any

args = sys.argv[1:]
Path(os.environ["EXPORT_ARGV"]).write_text(json.dumps(args))
opt = dict(zip(args, args[1:]))
name = opt["--variant"] + ("_" + opt["--img-size"] if "--img-size" in opt else "")
out = Path(opt["--out"])
out.mkdir(parents=True)
for stem in [name] + ([name + ".fp16"] if "--fp16" in args else []):
    for suffix in (".onnx", ".json"):
        (out / (stem + suffix)).write_text(stem)
"""


EXPORT_OUT = "/tmp/export"  # the exporter's --out in the export stage


def test_export_writes_outside_the_source_tree_and_serves_from_a_fresh_folder(stages):
    # The stage's WORKDIR /build holds the build context: an --out there would mix the model
    # with the sources.
    (run,) = [r for r in stages["export"].args("RUN") if "swin-export" in r]
    assert re.search(rf"swin-export .*--out {EXPORT_OUT}\b", run)
    assert "mkdir /build/models" in run  # fails if the context ever holds a models/ folder
    assert not (ROOT / "models").exists()


class ExportRun:
    """The export stage's `swin-export` RUN line in a sandbox: /build/ and the exporter's
    /tmp/export are temporary folders, the build context (the working directory) holds my.pth and
    labels.txt, and `swin-export` is FAKE_EXPORTER."""

    def __init__(self, stages, tmp: Path):
        (self.run,) = [r for r in stages["export"].args("RUN") if "swin-export" in r]
        self.defaults = dict(a.partition("=")[::2] for a in stages["export"].args("ARG"))
        self.build = tmp / "build"
        self.out = tmp / "out"
        self.context = tmp / "context"
        self.context.mkdir()
        (self.context / "my.pth").write_bytes(b"weights")
        (self.context / "labels.txt").write_text("cat\ndog\n")
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "swin-export").write_text(FAKE_EXPORTER.format(python=sys.executable))
        (bin_dir / "swin-export").chmod(0o755)
        self.path = f"{bin_dir}:{os.environ['PATH']}"
        self.argv_file = tmp / "argv.json"

    def __call__(self, **build_args: str) -> subprocess.CompletedProcess:
        """Run the line as Docker does: /bin/sh -c, with the build arguments in the environment."""
        self.argv_file.unlink(missing_ok=True)
        shutil.rmtree(self.build, ignore_errors=True)
        shutil.rmtree(self.out, ignore_errors=True)
        self.build.mkdir()
        env = {**self.defaults, **build_args, "PATH": self.path, "EXPORT_ARGV": str(self.argv_file)}
        return subprocess.run(
            ["/bin/sh", "-c", self.sandboxed(self.run)],
            cwd=self.context,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def sandboxed(self, line: str) -> str:
        return line.replace(EXPORT_OUT, str(self.out)).replace("/build/", f"{self.build}/")

    @property
    def argv(self) -> list[str] | None:
        """The exporter's arguments after `swin-export`, or None when it was not called."""
        if not self.argv_file.exists():
            return None
        return json.loads(self.argv_file.read_text())

    @property
    def served(self) -> dict[str, int]:
        """The files the runtime stages copy from /build/models/, with their modes."""
        return {f.name: f.stat().st_mode & 0o777 for f in (self.build / "models").iterdir()}


@pytest.fixture
def export_run(stages, tmp_path) -> ExportRun:
    return ExportRun(stages, tmp_path)


def option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_export_run_passes_only_the_variant_and_weights_by_default(export_run):
    result = export_run()
    assert result.returncode == 0, result.stderr
    assert export_run.argv == [
        "--variant",
        "swin_tiny_patch4_window7_224",
        "--checkpoint",
        "official",
        "--out",
        str(export_run.out),
    ]
    assert export_run.served == {"model.onnx": 0o444, "model.json": 0o444}


def test_export_run_passes_every_optional_argument_when_set(export_run):
    result = export_run(
        VARIANT="swin_base_patch4_window7_224",
        WEIGHTS="./my.pth",
        NUM_CLASSES="10",
        LABELS="labels.txt",
        IMG_SIZE="384",
        FP16="1",
        TRUST_CHECKPOINT="1",
    )
    assert result.returncode == 0, result.stderr
    argv = export_run.argv
    assert option(argv, "--variant") == "swin_base_patch4_window7_224"
    assert option(argv, "--checkpoint") == "./my.pth"
    assert option(argv, "--num-classes") == "10"
    assert option(argv, "--labels") == "labels.txt"
    assert option(argv, "--img-size") == "384"
    assert "--fp16" in argv and "--trust-checkpoint" in argv
    # NAME_384.onnx, NAME_384.fp16.onnx, ... are served under fixed names.
    assert export_run.served == {
        "model.onnx": 0o444,
        "model.json": 0o444,
        "model.fp16.onnx": 0o444,
        "model.fp16.json": 0o444,
    }


SAMPLE_VALUES = {"VARIANT": "swin_small_patch4_window7_224", "WEIGHTS": "./my.pth"}
SAMPLE_VALUES |= {"LABELS": "labels.txt", "NUM_CLASSES": "7", "IMG_SIZE": "256"}
SAMPLE_VALUES |= dict.fromkeys(SWITCHES, "1")


@pytest.mark.parametrize("name", list(EXPORT_ARGS))
def test_each_export_argument_adds_only_its_own_option(export_run, name):
    assert export_run(**{name: SAMPLE_VALUES[name]}).returncode == 0
    flags = {a for a in export_run.argv if a.startswith("--")}
    assert flags == {"--variant", "--checkpoint", "--out", EXPORT_ARGS[name]}
    if name not in SWITCHES:
        assert option(export_run.argv, EXPORT_ARGS[name]) == SAMPLE_VALUES[name]


def test_export_command_lines_are_ones_the_exporter_accepts(export_run):
    """The recorded command lines parse with the real exporter's parser (options and choices)."""
    from swin_serve.export.__main__ import build_parser

    parser = build_parser()
    for build_args in (
        {},
        {"VARIANT": "swin_base_patch4_window12_384", "WEIGHTS": "./my.pth", "NUM_CLASSES": "10"},
        {"LABELS": "labels.txt", "IMG_SIZE": "256", "FP16": "1", "TRUST_CHECKPOINT": "1"},
    ):
        assert export_run(**build_args).returncode == 0
        args = parser.parse_args(export_run.argv)
        assert args.variant == build_args.get("VARIANT", "swin_tiny_patch4_window7_224")
        assert args.fp16 is bool(build_args.get("FP16"))
        assert args.trust_checkpoint is bool(build_args.get("TRUST_CHECKPOINT"))
        # Unset: None, which lets the exporter take the checkpoint's head and the preset's size.
        assert args.num_classes == (
            int(build_args["NUM_CLASSES"]) if "NUM_CLASSES" in build_args else None
        )
        assert args.img_size == (int(build_args["IMG_SIZE"]) if "IMG_SIZE" in build_args else None)
        assert args.labels == (Path(build_args["LABELS"]) if "LABELS" in build_args else None)


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize("value", ["0", "true", "no"])
def test_export_switches_are_1_or_empty_and_anything_else_stops_the_build(
    export_run, switch, value
):
    result = export_run(**{switch: value})
    assert result.returncode != 0
    assert f"{switch}={value}" in result.stderr and "set it to 1" in result.stderr
    assert export_run.argv is None


@pytest.mark.parametrize(
    ("name", "value"), [("WEIGHTS", "./artefacts/my.pth"), ("LABELS", "artefacts/labels.txt")]
)
def test_a_path_outside_the_build_context_stops_the_build_with_a_hint(export_run, name, value):
    result = export_run(**{name: value})
    assert result.returncode != 0
    assert f"{name}={value}" in result.stderr and ".dockerignore" in result.stderr
    assert export_run.argv is None


@pytest.mark.parametrize("weights", ["official", "random", "auto", "https://example.com/w.pth"])
def test_named_and_remote_weights_are_left_to_the_exporter(export_run, weights):
    assert export_run(WEIGHTS=weights).returncode == 0
    assert option(export_run.argv, "--checkpoint") == weights


def test_export_run_fails_when_two_exported_files_would_be_served_under_one_name(export_run):
    # The renaming never overwrites: an export that wrote two models must fail the build.
    export_run.run = export_run.run.replace(
        "&& mkdir", f"&& touch {EXPORT_OUT}/other.onnx && mkdir", 1
    )
    result = export_run()
    assert result.returncode != 0
    assert "rmdir" in result.stderr


def expand(value: str, **env: str) -> str:
    """A Dockerfile ENV value with ${VAR} and ${VAR:+word} substituted, as the shell does it."""
    return subprocess.run(
        ["/bin/sh", "-c", f'printf %s "{value}"'], env=env, capture_output=True, text=True
    ).stdout


@pytest.mark.parametrize("stage", RUNTIMES)
@pytest.mark.parametrize(
    "build_args",
    [
        {},
        {"FP16": "1"},
        {"VARIANT": "swin_base_patch4_window12_384", "IMG_SIZE": "512", "FP16": "1"},
        {"VARIANT": "swin_small_patch4_window7_224", "NUM_CLASSES": "10"},
    ],
)
def test_runtime_serves_a_file_the_export_wrote_for_every_combination(
    stages, export_run, stage, build_args
):
    assert export_run(**build_args).returncode == 0
    image = built(stages, stage)
    declared = dict(a.partition("=")[::2] for a in image.args("ARG"))
    env = {k: build_args.get(k, default) for k, default in declared.items()}
    path = Path(expand(env_of(image)["SWIN_MODEL_PATH"], **env))
    assert path.parent == Path("/app/models")
    assert path.name in export_run.served
    # With FP16 the GPU image serves the float16 model; the CPU image keeps float32.
    fp16 = stage == "gpu" and bool(build_args.get("FP16"))
    assert path.name == ("model.fp16.onnx" if fp16 else "model.onnx")


@pytest.mark.parametrize("target", ["docker", "docker-cpu"])
def test_make_docker_passes_the_model_arguments_that_are_set(target):
    need_make()
    clean = {k: v for k, v in os.environ.items() if k not in EXPORT_ARGS and "MAKE" not in k}
    cmd = ["make", "-n", "--no-print-directory", target, "VARIANT=swin_base_patch4_window7_224"]
    out = subprocess.run(
        [*cmd, "WEIGHTS=./my.pth", "FP16=1"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--build-arg 'VARIANT=swin_base_patch4_window7_224'" in out
    assert "--build-arg 'WEIGHTS=./my.pth'" in out and "--build-arg 'FP16=1'" in out
    for unset in ("NUM_CLASSES", "LABELS", "IMG_SIZE", "TRUST_CHECKPOINT"):
        assert unset not in out


# ---- compose variable interpolation ---------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


class MissingVariable(Exception):
    """Compose refuses the file: a ${VAR:?message} or ${VAR?message} is unset."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """`value` (a compose file or any part of it) with ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error} and $$ substituted from `env`, as Compose does."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, word = m.group(1) or m.group(4), m.group(2), m.group(3)
        current = env.get(name)
        if op is None:
            return current or ""
        missing = not current if op.startswith(":") else current is None
        if not missing:
            return current
        if op.endswith("-"):
            return word
        raise MissingVariable(f"{name}: {word}")

    return _VARIABLE.sub(substitute, value)

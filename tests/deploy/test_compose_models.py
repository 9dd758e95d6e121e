"""Bring your own model through compose, without editing files.

Two ways: build arguments from the environment (or .env) reach the export in the image build, and
docker-compose.byo.yml serves an export made on the host, mounted read-only into a serve-only image.
Compose's variable interpolation is reproduced by `interpolate`, the export stage's RUN line is run
with a stand-in exporter (`ExportRun`), both from test_docker_files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_docker_files import (
    EXPORT_ARGS,
    SWITCHES,
    ExportRun,
    built,
    depends_on,
    env_of,
    interpolate,
    option,
)
from tests.support.deploy_files import load_compose, merge

SERVICE = "swin-serve"
BYO = "docker-compose.byo.yml"
MOUNT = "/models"  # where the byo service sees MODEL_DIR


@pytest.fixture
def export_run(stages, tmp_path) -> ExportRun:
    return ExportRun(stages, tmp_path)


@pytest.fixture(scope="module")
def compose_byo(compose) -> dict[str, Any]:
    return merge(compose, load_compose(BYO))


@pytest.fixture(scope="module")
def compose_cpu_byo(compose_cpu) -> dict[str, Any]:
    return merge(compose_cpu, load_compose(BYO))


def build_args(compose: dict[str, Any], **env: str) -> dict[str, str]:
    return interpolate(compose["services"][SERVICE]["build"]["args"], env)


# ---- build arguments: the model baked into the image ---------------------------------------------


def test_compose_passes_every_export_argument_and_only_arguments_the_export_stage_declares(
    compose, stages
):
    passed = set(compose["services"][SERVICE]["build"]["args"])
    declared = {a.partition("=")[0] for a in stages["export"].args("ARG")}
    assert passed <= declared, f"not declared by the export stage: {passed - declared}"
    assert set(EXPORT_ARGS) <= passed, f"compose does not pass {set(EXPORT_ARGS) - passed}"


def test_compose_defaults_build_what_the_dockerfile_builds_alone(compose, stages):
    defaults = dict(a.partition("=")[::2] for a in stages["export"].args("ARG"))
    for name, value in build_args(compose).items():
        assert value == defaults[name], name


@pytest.mark.parametrize("override", ["base", "cpu"])
def test_a_fine_tuned_swin_b_from_the_environment_reaches_the_export(request, export_run, override):
    """VARIANT=swin_base_patch4_window7_224 WEIGHTS=./my.pth docker compose build."""
    compose = request.getfixturevalue("compose" if override == "base" else "compose_cpu")
    args = build_args(compose, VARIANT="swin_base_patch4_window7_224", WEIGHTS="./my.pth")
    result = export_run(**args)
    assert result.returncode == 0, result.stderr
    argv = export_run.argv
    assert option(argv, "--variant") == "swin_base_patch4_window7_224"
    assert option(argv, "--checkpoint") == "./my.pth"
    # Unset optional arguments reach the build empty, and the exporter sees no option for them:
    # the head size comes from the checkpoint.
    for name in ("NUM_CLASSES", "LABELS", "IMG_SIZE", *SWITCHES):
        assert args[name] == ""
        assert EXPORT_ARGS[name] not in argv
    assert set(export_run.served) == {"model.onnx", "model.json"}


def test_every_model_variable_of_the_environment_reaches_the_export(compose, export_run):
    env = {
        "VARIANT": "swin_small_patch4_window7_224",
        "WEIGHTS": "./my.pth",
        "NUM_CLASSES": "37",
        "LABELS": "labels.txt",
        "IMG_SIZE": "288",
        "FP16": "1",
        "TRUST_CHECKPOINT": "1",
    }
    result = export_run(**build_args(compose, **env))
    assert result.returncode == 0, result.stderr
    argv = export_run.argv
    for name, flag in EXPORT_ARGS.items():
        assert flag in argv, name
        if name not in SWITCHES:
            assert option(argv, flag) == env[name]
    assert "model.fp16.onnx" in export_run.served


def test_torch_source_reaches_the_pip_install_not_the_export(compose, stages):
    args = build_args(compose, TORCH_INDEX_URL="")
    assert args["TORCH_INDEX_URL"] == ""  # set but empty: only wheels/ (see wheels/README.md)
    assert build_args(compose)["TORCH_INDEX_URL"].startswith("https://")
    (install,) = [r for r in stages["export"].args("RUN") if "-r /tmp/requirements.txt" in r]
    assert '${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}' in install


# ---- docker-compose.byo.yml: an export made on the host, mounted read-only ------------------------


def byo_service(compose: dict[str, Any], **env: str) -> dict[str, Any]:
    return interpolate(compose["services"][SERVICE], env)


def test_byo_builds_the_serve_only_gpu_image_by_default(compose_byo, stages):
    svc = byo_service(compose_byo)
    assert svc["build"]["target"] == "gpu-runtime" and svc["image"] == "swin-serve:gpu-runtime"
    assert "export" not in depends_on(stages, svc["build"]["target"])
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" for d in devices)


def test_byo_on_a_cpu_host_builds_the_serve_only_cpu_image_without_gpu_reservation(
    compose_cpu_byo, stages
):
    svc = byo_service(compose_cpu_byo, RUNTIME="cpu")
    assert svc["build"]["target"] == "cpu-runtime" and svc["image"] == "swin-serve:cpu-runtime"
    assert "export" not in depends_on(stages, svc["build"]["target"])
    assert not svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")


@pytest.mark.parametrize("runtime", ["cpu", "gpu"])
def test_byo_targets_exist_and_serve_from_the_mount(compose_byo, stages, runtime):
    target = byo_service(compose_byo, RUNTIME=runtime)["build"]["target"]
    assert target in stages
    assert env_of(built(stages, target))["SWIN_MODEL_PATH"].startswith(MOUNT + "/")


def mounts(svc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (host path, mode) of the service's bind mounts."""
    out = {}
    for volume in svc.get("volumes", []):
        host, container, *mode = volume.split(":")
        out[container] = (host, mode[0] if mode else "rw")
    return out


def test_byo_mounts_artefacts_read_only_and_serves_the_file_make_export_writes(
    compose_byo, settings_cls
):
    svc = byo_service(compose_byo)
    assert mounts(svc) == {MOUNT: ("./artefacts", "ro")}
    path = Path(svc["environment"]["SWIN_MODEL_PATH"])
    assert path.parent == Path(MOUNT)
    # `make export` (and `make serve`) write the default variant to artefacts/ under this name.
    assert path.name == settings_cls.model_fields["model_path"].default.name
    assert Path(settings_cls.model_fields["model_path"].default).parent == Path("artefacts")


def test_byo_folder_and_file_come_from_the_environment(compose_byo):
    svc = byo_service(
        compose_byo, MODEL_DIR="/srv/models", MODEL_FILE="swin_base_patch4_window7_224.fp16.onnx"
    )
    assert mounts(svc) == {MOUNT: ("/srv/models", "ro")}
    assert svc["environment"]["SWIN_MODEL_PATH"] == (
        f"{MOUNT}/swin_base_patch4_window7_224.fp16.onnx"
    )


def test_byo_keeps_the_hardening_and_probes_of_the_service(compose_byo, compose):
    svc, base = byo_service(compose_byo), byo_service(compose)
    assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]
    for key in ("healthcheck", "stop_grace_period", "restart", "ports"):
        assert svc[key] == base[key], key


def test_byo_environment_is_valid_service_settings(compose_byo, settings_cls):
    env = byo_service(compose_byo, MODEL_FILE="x.onnx")["environment"]
    settings = settings_cls(**{k[5:].lower(): v for k, v in env.items()})
    assert settings.model_path == Path(MOUNT) / "x.onnx"


def test_a_missing_byo_model_stops_the_service_with_a_message_naming_the_setting(
    compose_byo, settings_cls
):
    import swin_serve.server.runtime.engine as engine

    env = byo_service(compose_byo, MODEL_DIR="/nonexistent")["environment"]
    settings = settings_cls(**{k[5:].lower(): v for k, v in env.items()})
    with pytest.raises(
        engine.ModelLoadError, match=r"model file not found: /models/.*SWIN_MODEL_PATH"
    ):
        engine.OnnxEngine.load(settings)

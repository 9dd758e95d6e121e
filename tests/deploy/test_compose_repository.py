"""docker-compose.repository.yml: a folder of models, mounted read-only into a serve-only image.

The environment the server sees is built as the container builds it: the image's ENV, then
compose's `environment:`; the settings are read from it as the server reads them, from real
environment variables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swin_serve.server.repository.files import model_name, scan
from tests.deploy.test_compose_models import mounts
from tests.deploy.test_docker_files import built, depends_on, env_of, interpolate
from tests.support.deploy_files import ROOT, SERVICE, load_compose, merge

REPOSITORY = "docker-compose.repository.yml"
MOUNT = "/models"
PAGE = ROOT / "docs" / "model-repository.md"


@pytest.fixture(scope="module")
def compose_repo(compose) -> dict[str, Any]:
    return merge(compose, load_compose(REPOSITORY))


@pytest.fixture(scope="module")
def compose_cpu_repo(compose_cpu) -> dict[str, Any]:
    return merge(compose_cpu, load_compose(REPOSITORY))


def service(compose: dict[str, Any], **env: str) -> dict[str, Any]:
    return interpolate(compose["services"][SERVICE], env)


def container_env(stages, svc: dict[str, Any]) -> dict[str, str]:
    """What the server's process sees: the image's ENV, then compose's environment."""
    return {**env_of(built(stages, svc["build"]["target"])), **svc["environment"]}


def settings_from(monkeypatch, settings_cls, env: dict[str, str]):
    """Settings read from the process environment ``env``, as the server reads them."""
    for name in [k for k in os.environ if k.startswith("SWIN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return settings_cls()


def test_the_repository_is_mounted_read_only_from_where_make_export_writes(
    compose_repo, settings_cls
):
    svc = service(compose_repo)
    assert mounts(svc) == {MOUNT: ("./artefacts", "ro")}
    assert Path(settings_cls.model_fields["model_path"].default).parent == Path("artefacts")
    assert svc["environment"]["SWIN_MODEL_REPOSITORY"] == MOUNT


def test_the_folder_and_the_default_model_come_from_the_environment(compose_repo):
    svc = service(compose_repo, MODEL_DIR="/srv/models", DEFAULT_MODEL="swin_b.int8")
    assert mounts(svc) == {MOUNT: ("/srv/models", "ro")}
    assert svc["environment"]["SWIN_DEFAULT_MODEL"] == "swin_b.int8"


def test_the_default_model_is_the_file_make_export_writes(compose_repo, settings_cls):
    default = service(compose_repo)["environment"]["SWIN_DEFAULT_MODEL"]
    assert f"{default}.onnx" == settings_cls.model_fields["model_path"].default.name


@pytest.mark.parametrize("runtime", ["cpu", "gpu"])
def test_the_server_sees_the_repository_over_the_images_model_path(
    compose_repo, stages, settings_cls, monkeypatch, runtime
):
    svc = service(compose_repo, RUNTIME=runtime)
    env = container_env(stages, svc)
    assert "SWIN_MODEL_PATH" in env  # the image's, which the repository takes over from
    settings = settings_from(monkeypatch, settings_cls, env)
    assert settings.model_repository == Path(MOUNT)
    assert settings.default_model == "swin_tiny_patch4_window7_224"
    assert settings.host == "0.0.0.0"


def test_the_container_runs_the_images_own_server(compose_repo, stages):
    # The image's CMD: the server is PID 1, so `docker compose kill -s HUP` and the SIGTERM of
    # `docker compose stop` reach it.
    svc = service(compose_repo)
    assert "command" not in svc and "entrypoint" not in svc
    (cmd,) = built(stages, svc["build"]["target"]).args("CMD")
    assert cmd == '["swin-serve"]'


def test_it_builds_the_serve_only_images_with_the_gpu_reserved_by_default(
    compose_repo, compose_cpu_repo, stages
):
    gpu = service(compose_repo)
    assert gpu["build"]["target"] == "gpu-runtime" and gpu["image"] == "swin-serve:gpu-runtime"
    assert any(
        d["driver"] == "nvidia" for d in gpu["deploy"]["resources"]["reservations"]["devices"]
    )
    cpu = service(compose_cpu_repo, RUNTIME="cpu")
    assert cpu["build"]["target"] == "cpu-runtime" and cpu["image"] == "swin-serve:cpu-runtime"
    assert not cpu.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    for svc in (gpu, cpu):
        assert "export" not in depends_on(stages, svc["build"]["target"])


def test_it_keeps_the_hardening_and_probes_of_the_service(compose_repo, compose):
    svc, base = service(compose_repo), service(compose)
    assert svc["read_only"] is True and svc["tmpfs"] == ["/tmp"]
    for key in ("healthcheck", "stop_grace_period", "restart", "ports", "expose"):
        assert svc[key] == base[key], key
    assert "/readyz" in " ".join(svc["healthcheck"]["test"])


# ---- the documented way to publish a model --------------------------------------------------------

PUBLISH = re.compile(r"cp (\S+) (\S+) && mv (\S+) (\S+)")


def publish_commands() -> list[re.Match]:
    found = []
    for path in (ROOT / REPOSITORY, PAGE):
        text = path.read_text(encoding="utf-8").replace("\\\n#", "").replace("\\\n", "")
        found += list(PUBLISH.finditer(text))
    return found


def test_the_documented_publish_command_is_in_the_compose_file_and_the_page():
    assert len(publish_commands()) >= 2


@pytest.mark.parametrize("match", publish_commands(), ids=lambda m: m[0][:60])
def test_the_documented_publish_command_never_shows_a_half_written_model(match, tmp_path):
    """The copy goes to a name the server skips, in the same folder (a rename within one
    filesystem is atomic); only the rename gives it a model name."""
    _source, temp, moved, target = match.groups()
    assert temp == moved
    temp, target = Path(temp), Path(target)
    assert temp.parent == target.parent
    assert model_name(temp) is None and model_name(target) is not None
    # Run the command itself, with a `cp` that records what a scan of the folder sees the
    # moment the copy is written, before the `mv`.
    (tmp_path / "new.onnx").write_bytes(b"onnx")
    (tmp_path / temp.parent).mkdir(parents=True)
    seen = tmp_path / "seen_after_cp.json"
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "cp").write_text(
        "#!/bin/sh\n"
        f'{shutil.which("cp")} "$@" || exit $?\n'
        f"exec {sys.executable} -c 'import json, sys, pathlib; from swin_serve.server.repository.files import scan; "
        f'json.dump(sorted(scan(pathlib.Path(sys.argv[1])).stamps), open(sys.argv[2], "w"))\' '
        f"{tmp_path / temp.parent} {seen}\n"
    )
    (shim / "cp").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        ["sh", "-c", match[0]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(seen.read_text()) == []  # written, but under a name the server skips
    assert (tmp_path / target).read_bytes() == b"onnx" and not (tmp_path / temp).exists()
    assert set(scan(tmp_path / target.parent).stamps) == {model_name(target)}

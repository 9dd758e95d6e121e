"""The two README commands, the Makefile behind them, and CI calling the same test command."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import need_make

ROOT = Path(__file__).resolve().parents[2]


def commands(script: str) -> list[str]:
    lines = (line.strip() for line in script.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_opens_with_exactly_make_serve_and_make_test():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```[a-z]*\n(.*?)```", readme, re.S)
    assert first_block, "README has no code block"
    assert commands(first_block.group(1)) == ["make serve", "make test"]


def test_ci_runs_the_readme_test_command_and_stops_on_failure():
    ci = ROOT / ".ci/run"
    assert ci.stat().st_mode & stat.S_IXUSR, ".ci/run is not executable"
    lines = commands(ci.read_text())
    assert "set -euo pipefail" in lines
    assert lines[-1] == "make test"


FAKE_PYTHON = """#!/bin/sh
# Stands in for .venv/bin/python: records what make asked of it. The lock's constraints are
# computed for real (stdlib only); everything else, pip included, only leaves a line.
case "$*" in *requirements.py\\ --constraints*) exec python3 "$@";; esac
echo "$*" >> "$(dirname "$0")/../../calls.log"
"""
# Stands in for the console scripts the install puts beside it (swin-serve, swin-export).
FAKE_SCRIPT = """#!/bin/sh
echo "$(basename "$0")${*:+ $*}" >> "$(dirname "$0")/../../calls.log"
"""


def fake_venv(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    for name, text in (
        ("python", FAKE_PYTHON),
        ("swin-serve", FAKE_SCRIPT),
        ("swin-export", FAKE_SCRIPT),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A copy of the Makefile, pyproject.toml, the lock and its installer, with a fake venv
    python (and console scripts) that log their calls (and so answers yes when asked for a local torch wheel)."""
    for name in (
        "Makefile",
        "pyproject.toml",
        "requirements.lock",
        "deploy/install-locked",
        "deploy/requirements.py",
        "deploy/torch-source",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    fake_venv(tmp_path / ".venv/bin")
    (tmp_path / "artefacts").mkdir()
    (tmp_path / "artefacts/swin_tiny_patch4_window7_224.onnx").touch()
    return tmp_path


# Variables the Makefile reads; an outer `make test PYTEST_ARGS=...` passes them down too.
MAKE_INPUTS = (
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "PYTHON",
    "PYTEST_ARGS",
    "VARIANT",
    "CHECKPOINT",
    "EXPORT_ARGS",
    "TORCH_INDEX_URL",
    "SWIN_PORT",
    "SWIN_MODEL_PATH",
    "SWIN_PROVIDERS",
    "GPU",
    "FP16",
)


def make(cwd: Path, *targets: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in MAKE_INPUTS}
    return subprocess.run(
        ["make", "--no-print-directory", *targets],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )


def calls(sandbox: Path) -> list[str]:
    log = sandbox / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def install(sandbox: Path, extras: str) -> list[str]:
    """The calls deploy/install-locked makes: everything under the lock, torch's CPU build
    (found locally: the fake python says yes), then the search for strays."""
    lock = re.escape(f"{sandbox}/requirements.lock")
    constraint = r"--constraint /\S+"  # a temporary file with the lock's pins
    (torch,) = re.findall(r"^torch==\S+", (ROOT / "requirements.lock").read_text(), re.M)
    probe = [re.escape(f"-m pip install -q --dry-run --no-deps --no-index {torch}")]
    return [
        *(probe if "export" in extras else []),
        rf"-m pip install -q {constraint} pip setuptools",
        rf"-m pip install {constraint} --no-build-isolation -e {re.escape(f'{sandbox}[{extras}]')}",
        rf"{re.escape(str(sandbox))}/deploy/requirements.py --strays {lock}",
    ]


def matches(got: list[str], patterns: list[str]) -> bool:
    return len(got) == len(patterns) and all(
        re.fullmatch(p, g) for p, g in zip(patterns, got, strict=True)
    )


def test_make_test_installs_once_and_again_only_when_pyproject_or_the_lock_changes(sandbox):
    need_make()
    assert make(sandbox, "test").returncode == 0
    assert matches(calls(sandbox), [*install(sandbox, "serve,openvino,export,dev"), "-m pytest"])
    assert make(sandbox, "test").returncode == 0
    assert calls(sandbox) == ["-m pytest"]
    # The dev install covers serve: no second install, and no export (the model exists).
    assert make(sandbox, "serve").returncode == 0
    assert calls(sandbox) == ["swin-serve"]
    # The benchmark tools come on top, once.
    assert make(sandbox, "bench").returncode == 0
    assert make(sandbox, "bench").returncode == 0
    assert matches(
        calls(sandbox),
        [*install(sandbox, "serve,openvino,export,dev,bench"), "-m bench", "-m bench"],
    )
    assert make(sandbox, "test").returncode == 0
    assert calls(sandbox) == ["-m pytest"]
    for changed in ("pyproject.toml", "requirements.lock"):
        with (sandbox / changed).open("a") as f:
            f.write("\n# changed\n")
        assert make(sandbox, "test").returncode == 0
        assert matches(
            calls(sandbox), [*install(sandbox, "serve,openvino,export,dev"), "-m pytest"]
        ), changed


def test_make_serve_exports_the_default_model_only_when_missing(sandbox):
    need_make()
    (sandbox / "artefacts/swin_tiny_patch4_window7_224.onnx").unlink()
    result = make(sandbox, "serve")
    assert result.returncode == 0, result.stderr
    assert matches(
        calls(sandbox),
        [
            *install(sandbox, "serve,openvino,export"),
            re.escape(
                "swin-export --variant swin_tiny_patch4_window7_224 --checkpoint auto --out artefacts/"
            ),
            "swin-serve",
        ],
    )
    # The URLs come from the server once it is ready (src/swin_serve/server/__main__.py), not before it loads.
    assert "the server logs its URLs once it is ready" in result.stdout


def test_make_serve_gpu_installs_the_cuda_build_apart_and_requires_cuda(sandbox):
    need_make()
    fake_venv(sandbox / ".venv-gpu/bin")
    # An fp32 model without its fp16 twin may be the user's fine-tune: never re-export over it.
    refused = make(sandbox, "serve", GPU="1", FP16="1")
    assert refused.returncode != 0 and "EXPORT_ARGS=--fp16" in refused.stderr
    assert matches(calls(sandbox), install(sandbox, "gpu,export"))  # and nothing after it
    (sandbox / "artefacts/swin_tiny_patch4_window7_224.onnx").unlink()
    result = make(sandbox, "serve", GPU="1", FP16="1")
    assert result.returncode == 0, result.stderr
    assert matches(
        calls(sandbox),
        [
            re.escape(
                "swin-export --variant swin_tiny_patch4_window7_224 --checkpoint auto "
                "--out artefacts/ --fp16"
            ),
            "swin-serve",
        ],
    )
    assert "GPU and FP16 are 1 or empty" in make(sandbox, "serve", FP16="0").stderr
    assert "GPU=1 is for `make serve`" in make(sandbox, "test", GPU="1").stderr
    dry = make(sandbox, "-n", "serve", GPU="1", FP16="1").stdout
    assert "SWIN_PROVIDERS=${SWIN_PROVIDERS:-cuda}" in dry
    assert (
        "SWIN_MODEL_PATH=${SWIN_MODEL_PATH:-artefacts/swin_tiny_patch4_window7_224.fp16.onnx}"
        in dry
    )


def test_make_refuses_an_old_python_with_a_clear_message(tmp_path):
    need_make()
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.12"\nexit 1\n')
    old.chmod(0o755)
    result = make(tmp_path, "test", PYTHON=str(old))
    assert result.returncode != 0
    assert "Python 3.11 or newer is needed" in result.stderr and "3.10.12" in result.stderr
    assert not (tmp_path / ".venv").exists()


def test_make_help_lists_the_everyday_targets():
    need_make()
    out = make(ROOT, "help").stdout
    for target in (
        "serve",
        "test",
        "export",
        "lint",
        "format",
        "lock",
        "bench",
        "soak",
        "docker",
        "clean",
    ):
        assert re.search(rf"make {target}\b", out), f"make {target} missing from help"


def test_make_serve_finds_the_file_an_export_at_another_input_size_writes(sandbox):
    """The exporter names a model built at another size NAME_SIZE.onnx: make serve looks there,
    so it serves the user's export instead of exporting (random) weights of its own."""
    need_make()
    variables = {"VARIANT": "swin_micro_patch4_window4_64", "IMG_SIZE": "128"}
    assert make(sandbox, "serve", **variables).returncode == 0
    assert matches(
        calls(sandbox)[-2:],
        [
            re.escape(
                "swin-export --variant swin_micro_patch4_window4_64 --checkpoint auto "
                "--out artefacts/ --img-size 128"
            ),
            "swin-serve",
        ],
    )
    (sandbox / "artefacts/swin_micro_patch4_window4_64_128.onnx").touch()
    result = make(sandbox, "serve", **variables)
    assert calls(sandbox) == ["swin-serve"]  # found: no export
    assert "Loading artefacts/swin_micro_patch4_window4_64_128.onnx" in result.stdout

"""requirements.lock agrees with pyproject.toml, and this environment was installed from it."""

from __future__ import annotations

import re
import sys
import tomllib
import types
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"

sys.path.insert(0, str(ROOT / "deploy"))
from requirements import dependency_digest, locked_digest, strays  # noqa: E402


def locked() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if match:
            pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_lock_was_made_from_this_pyproject():
    assert locked_digest(LOCK) == dependency_digest(ROOT / "pyproject.toml"), (
        "pyproject.toml's dependencies changed since requirements.lock was made: run `make lock` "
        "and commit the lock with the change"
    )


def test_every_requirement_is_pinned_within_its_range():
    pins = locked()
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements.lock: run `make lock`"
        # A local label (torch's +cpu) names a build, not a release: compare the release.
        release = Version(pins[name].public)
        assert req.specifier.contains(release, prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {req}"
        )


def requirers() -> dict[str, set[str]]:
    """{package: the locked packages (swin-serve: pyproject.toml) that require it}, from the
    lock's `# via` notes."""
    via: dict[str, set[str]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==", line):
            current = canonicalize_name(match[1])
            via[current] = set()
        elif current and (match := re.match(r"^\s+#\s+(?:via\s+)?(?!via$)([\w.-]+)", line)):
            via[current].add(canonicalize_name(match[1]))
    return via


def installed_for(*extras: str) -> set[str]:
    """The locked packages an install of the project with `extras` brings: its requirements and
    everything they require, by the lock's `# via` notes."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    found, todo = set(), [canonicalize_name(Requirement(r).name) for r in reqs]
    needed_by: dict[str, set[str]] = {}
    for name, parents in requirers().items():
        for parent in parents:
            needed_by.setdefault(parent, set()).add(name)
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += needed_by.get(name, ())
    return found


def test_torch_is_locked_to_its_cpu_build():
    # PyPI's plain torch wheel pulls several GB of CUDA libraries into a CPU-only install.
    assert locked()["torch"].local == "cpu"


def test_cuda_libraries_are_locked_for_the_gpu_install_and_kept_out_of_the_cpu_ones():
    cuda = {name for name in locked() if name.startswith("nvidia-")}
    # What onnxruntime-gpu's CUDA provider loads: the CUDA runtime, cuBLAS, cuRAND, cuFFT, cuDNN.
    needed = {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand", "nvidia-cufft"}
    assert needed | {"nvidia-cudnn-cu13"} <= cuda, "run `make lock`"
    assert cuda <= installed_for("gpu")
    for cpu in (("serve", "openvino", "export", "dev", "bench"), ("serve", "openvino")):
        assert not cuda & installed_for(*cpu), cpu
    # CUDA 13 throughout: the major release onnxruntime-gpu from PyPI is built for.
    assert locked()["nvidia-cuda-runtime"].major == locked()["nvidia-cublas"].major == 13


def test_cuda_libraries_are_strays_only_without_onnxruntime_gpu(monkeypatch):
    import requirements

    pins = {n: str(v) for n, v in locked().items()}
    cuda = sorted(n for n in pins if n.startswith("nvidia-"))

    def environment(*names: str):
        dists = [types.SimpleNamespace(metadata={"Name": n}, version=pins[n]) for n in names]
        monkeypatch.setattr(requirements.importlib.metadata, "distributions", lambda: dists)

    environment("onnxruntime-gpu", "numpy", *cuda)
    assert strays(LOCK) == []
    environment("onnxruntime", "numpy", *cuda)
    assert strays(LOCK) == cuda


def test_this_environment_was_installed_from_the_lock():
    found = strays(LOCK)
    assert not found, (
        "installed but not as locked: run `rm .venv/.installed-* && make test` to reinstall "
        f"(which removes them), or `make lock` if pyproject.toml changed: {found}"
    )

"""requirements.lock agrees with pyproject.toml, and this environment was installed from it."""

from __future__ import annotations

import re
import sys
import tomllib
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


def test_torch_is_locked_to_its_cpu_build():
    # PyPI's plain torch wheel pulls several GB of CUDA libraries into a CPU-only install.
    assert locked()["torch"].local == "cpu"
    assert not [name for name in locked() if name.startswith("nvidia-")]


def test_this_environment_was_installed_from_the_lock():
    found = strays(LOCK)
    assert not found, (
        "installed but not as locked: run `rm .venv/.installed-* && make test` to reinstall "
        f"(which removes them), or `make lock` if pyproject.toml changed: {found}"
    )

"""pyproject.toml's requirements, and the digest that ties requirements.lock to them.

    python deploy/requirements.py EXTRA ...          the base dependencies plus those extras
    python deploy/requirements.py --stamp LOCK       write the digest line into LOCK (make lock)
    python deploy/requirements.py --constraints LOCK LOCK's pins as this platform installs them
    python deploy/requirements.py --strays LOCK      installed packages LOCK does not name (or
                                                     CUDA's, without onnxruntime-gpu)

The Dockerfile installs the printed requirements, constrained by requirements.lock, before it
copies the source, so the heavy layers (torch, onnxruntime) stay cached across code changes.
pyproject.toml says what the project needs; the lock says which exact release of everything,
transitive packages included, is installed. The digest covers every dependency table, so a
test can tell when pyproject.toml changed and `make lock` was not run.
"""

import hashlib
import importlib.metadata
import json
import platform
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGEST_PREFIX = "# pyproject.toml dependencies sha256: "
PROJECT = "swin-serve"
# CUDA's and cuDNN's libraries, as NVIDIA's wheels, and the one package that loads them.
CUDA_LIBRARIES = "nvidia-"
GPU_RUNTIME = "onnxruntime-gpu"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")


def _project(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text())["project"]


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = _project(pyproject)
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += optional[extra]
    return reqs


def dependency_digest(pyproject: Path) -> str:
    project = _project(pyproject)
    tables = {
        key: project.get(key)
        for key in ("requires-python", "dependencies", "optional-dependencies")
    }
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def locked_digest(lock: Path) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line.removeprefix(DIGEST_PREFIX).strip()
    return None


def stamp(lock: Path, pyproject: Path) -> None:
    lines = [ln for ln in lock.read_text().splitlines() if not ln.startswith(DIGEST_PREFIX)]
    lines.insert(0, DIGEST_PREFIX + dependency_digest(pyproject))
    lock.write_text("\n".join(lines) + "\n")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_pins(lock: Path) -> dict[str, str]:
    """{name: version} as this platform installs them. The lock is resolved for Linux x86_64,
    where torch is its +cpu build; elsewhere PyPI's torch of that release is a CPU build with
    no local label (macOS, Linux aarch64)."""
    on_lock_platform = platform.system() == "Linux" and platform.machine() == "x86_64"
    pins = {}
    for line in lock.read_text().splitlines():
        if match := _PIN.match(line):
            name, version = canonical(match[1]), match[2]
            pins[name] = version if on_lock_platform else version.split("+")[0]
    return pins


def strays(lock: Path) -> list[str]:
    """Installed distributions the lock does not name at their installed version, and CUDA's
    libraries (nvidia-*) where onnxruntime-gpu is not installed. The lock pins those for the
    `gpu` extra, which alone needs them: in a CPU environment they are gigabytes for nothing."""
    pins = platform_pins(lock)
    installed = [
        (canonical(dist.metadata["Name"]), dist.version)
        for dist in importlib.metadata.distributions()
    ]
    gpu = any(name == GPU_RUNTIME for name, _ in installed)
    found = set()
    for name, version in installed:
        unused = name.startswith(CUDA_LIBRARIES) and not gpu
        if name != PROJECT and (pins.get(name) != version or unused):
            found.add(name)
    return sorted(found)


if __name__ == "__main__":
    command, args = sys.argv[1:2], sys.argv[2:]
    if command == ["--stamp"]:
        stamp(Path(args[0]), ROOT / "pyproject.toml")
    elif command == ["--constraints"]:
        print("\n".join(f"{n}=={v}" for n, v in platform_pins(Path(args[0])).items()))
    elif command == ["--strays"]:
        print(" ".join(strays(Path(args[0]))))
    else:
        print("\n".join(requirements(ROOT / "pyproject.toml", sys.argv[1:])))

"""pyproject.toml's requirements, and the digest that ties requirements.lock to them.

    python deploy/requirements.py EXTRA ...        the base dependencies plus those extras
    python deploy/requirements.py --stamp LOCK     write the digest line into LOCK (make lock)

The Dockerfile installs the printed requirements, constrained by requirements.lock, before it
copies the source, so the heavy layers (torch, onnxruntime) stay cached across code changes.
pyproject.toml says what the project needs; the lock says which exact release of everything,
transitive packages included, is installed. The digest covers every dependency table, so a
test can tell when pyproject.toml changed and `make lock` was not run.
"""

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGEST_PREFIX = "# pyproject.toml dependencies sha256: "


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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stamp"]:
        stamp(Path(sys.argv[2]), ROOT / "pyproject.toml")
    else:
        print("\n".join(requirements(ROOT / "pyproject.toml", sys.argv[1:])))

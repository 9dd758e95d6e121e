"""Print the requirements of pyproject.toml's base dependencies plus the given extras.

    python deploy/requirements.py EXTRA ...

The Dockerfile installs these before copying the source, so the heavy layers (torch,
onnxruntime) stay cached across code changes while pyproject.toml remains the only place
where dependencies are pinned.
"""

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += optional[extra]
    return reqs


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(requirements(root / "pyproject.toml", sys.argv[1:])))

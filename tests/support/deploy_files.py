"""Readers for the deployment files: the Dockerfile's stages, and compose files merged as
compose merges them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "swin-serve"  # the compose service that runs the server


# ---- Dockerfile -------------------------------------------------------------------------------


@dataclass
class Stage:
    """One build stage: its base image, name and (keyword, arguments) instructions."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [value for kw, value in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Split a Dockerfile into stages. Joins continuation lines and drops comments, as Docker does."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif stages:  # ARGs before the first FROM only feed FROM lines
            stages[-1].instructions.append((keyword, value))
    return stages


# ---- compose ------------------------------------------------------------------------------------


class Reset:
    """Compose's `!reset` tag: the key is deleted from the merged file."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load_compose(name: str) -> dict[str, Any]:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def merge(base: Any, override: Any) -> Any:
    """Compose's merge: mappings recurse, sequences append, scalars replace, `!reset` deletes.

    Appending is why an override cannot drop the GPU reservation with `devices: []`.
    """
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Reset):
            merged.pop(key, None)
        else:
            merged[key] = merge(base.get(key), value)
    return merged

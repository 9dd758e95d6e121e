"""The package's layers import one way: ``server`` and ``export`` stand on ``artifact`` (and
``export`` on ``model``), and never on each other; inside the server, ``observability`` <
``runtime`` < ``repository`` < the data plane and the transports. Nothing in the package imports
the checkout's ``bench`` or ``tests``.

Read from the source with ``ast``, so an import inside a function counts as much as one at the
top, and nothing is imported to find out.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "swin_serve"

# Each layer, and the layers (of swin_serve) it may import besides its own.
MAY_IMPORT = {
    "model": set(),
    "artifact": set(),
    "export": {"model", "artifact"},
    "server": {"artifact"},
}
# Inside the server: each lower package, and the server modules it may import besides its own.
SERVER_MAY_IMPORT = {
    "observability": {"errors", "settings"},
    "runtime": {"errors", "settings", "observability"},
    "repository": {"errors", "settings", "observability", "runtime"},
}
TORCH_WORLD = {"torch", "torchvision", "timm", "transformers", "safetensors"}
# Packages a layer must never import, and why; the checkout's own folders for every layer.
FORBIDDEN = {
    "model": {"onnx", "onnxruntime", "fastapi", "numpy", "PIL"},  # the model code is torch only
    "artifact": TORCH_WORLD | {"fastapi", "starlette", "uvicorn", "grpc"},  # both sides load it
    "export": {"fastapi", "starlette", "uvicorn", "grpc"},
    "server": TORCH_WORLD,  # no torch to serve
}
NEVER = {"bench", "tests"}  # outside the wheel


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(path: Path) -> list[str]:
    parts = module_name(path).split(".")
    layer = parts[1]
    wrong = []
    for name in sorted(imports(path)):
        top, _, rest = name.partition(".")
        if top == "swin_serve":
            wrong += _across_layers(layer, rest)
            if layer == "server" and len(parts) > 3:
                wrong += _inside_server(parts[2], rest)
        elif top in FORBIDDEN[layer] | NEVER:
            wrong.append(f"{name} (swin_serve.{layer} never imports {top})")
    return wrong


def _across_layers(layer: str, imported: str) -> list[str]:
    other = imported.partition(".")[0]
    if other and other in MAY_IMPORT and other != layer and other not in MAY_IMPORT[layer]:
        return [f"swin_serve.{imported} (swin_serve.{layer} may not import swin_serve.{other})"]
    return []


def _inside_server(package: str, imported: str) -> list[str]:
    layer, _, rest = imported.partition(".")
    other = rest.partition(".")[0]
    allowed = SERVER_MAY_IMPORT.get(package)
    if layer != "server" or allowed is None or not other or other in allowed | {package}:
        return []
    return [f"swin_serve.{imported} (server.{package} may not import server.{other})"]


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_imports_only_the_layers_below_it(path):
    assert not violations(path), "\n".join(violations(path))


def test_every_module_belongs_to_a_layer():
    layers = {module_name(p).split(".")[1] for p in SOURCES}
    assert layers == set(MAY_IMPORT), layers
    assert len(SOURCES) > 50  # the walk found the tree


def test_the_check_fails_on_an_import_against_the_direction(tmp_path, monkeypatch):
    """The control: the same walk flags an exporter that imports the server, relatively or not,
    and an artifact module that imports torch inside a function."""
    fake = tmp_path / "swin_serve"
    for layer, code in {
        "export": "from ..server.runtime import engine\nimport swin_serve.server.settings\n",
        "artifact": "def f():\n    import torch\n",
        "server": "from swin_serve.artifact import contract\n",
        "server/runtime": "from swin_serve.server.repository import files\nimport bench.common\n",
        "server/repository": "from swin_serve.server.runtime import engine\n",
    }.items():
        (fake / layer).mkdir(parents=True)
        (fake / layer / "bad.py").write_text(code)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations(fake / "export" / "bad.py") == [
        "swin_serve.server.runtime (swin_serve.export may not import swin_serve.server)",
        "swin_serve.server.runtime.engine (swin_serve.export may not import swin_serve.server)",
        "swin_serve.server.settings (swin_serve.export may not import swin_serve.server)",
    ]
    assert violations(fake / "artifact" / "bad.py") == [
        "torch (swin_serve.artifact never imports torch)"
    ]
    assert violations(fake / "server" / "bad.py") == []
    assert violations(fake / "server" / "runtime" / "bad.py") == [
        "bench.common (swin_serve.server never imports bench)",
        "swin_serve.server.repository (server.runtime may not import server.repository)",
        "swin_serve.server.repository.files (server.runtime may not import server.repository)",
    ]
    assert violations(fake / "server" / "repository" / "bad.py") == []

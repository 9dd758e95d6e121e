"""docs/configuration.md names every environment variable the code reads, and `make help` every
variable the Makefile takes.

The variables are found in the source, not listed by hand: an AST scan of ``src/swin_serve`` for
``os.environ.get(...)``, ``os.getenv(...)``, ``environ[...]`` and the ``Mapping`` parameters
named ``environ`` that stand for it, with a module-level string constant followed to its value.
The ``SWIN_*`` settings are the table ``tests/deploy/test_readme.py`` checks.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from tests.support import need_make

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "swin_serve"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def _constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }


def _is_environ(node: ast.expr) -> bool:
    """``os.environ`` or a name ``environ`` (the functions that take the environment as one)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _key(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def variables_read(source: str) -> set[str]:
    tree = ast.parse(source)
    constants = _constants(tree)
    found = set()
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
            getter = node.func
            if (getter.attr == "get" and _is_environ(getter.value)) or getter.attr == "getenv":
                key = _key(node.args[0], constants)
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = _key(node.slice, constants)
        if key:
            found.add(key)
    return found


def documented() -> set[str]:
    page = CONFIGURATION.read_text(encoding="utf-8")
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", page, flags=re.M))


def test_every_variable_the_code_reads_is_in_the_configuration_reference():
    read = set()
    for path in PACKAGE.rglob("*.py"):
        read |= variables_read(path.read_text(encoding="utf-8"))
    # The scan finds what it should: the download cache, the CUDA device mask, OTEL_*.
    assert {"SWIN_CACHE_DIR", "CUDA_VISIBLE_DEVICES", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= read
    missing = sorted(read - documented())
    assert not missing, f"docs/configuration.md has no row for {missing}"


def test_the_scan_follows_constants_and_the_environ_parameter():
    code = (
        'import os\nCACHE = "A_CACHE"\n'
        "def f(environ):\n    return environ.get('B') or environ['C']\n"
        "x = os.environ.get(CACHE) or os.getenv('D') or os.environ['E'] or {}.get('NOT')\n"
    )
    assert variables_read(code) == {"A_CACHE", "B", "C", "D", "E"}


def _make_help(**variables: str) -> str:
    assignments = [f"{name}={value}" for name, value in variables.items()]
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "help", *assignments],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def test_make_help_lists_every_variable_the_makefile_takes():
    need_make()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    taken = set(re.findall(r"^([A-Z][A-Z0-9_]*) \?=", makefile, flags=re.M))
    build_args = re.search(r"^DOCKER_MODEL_ARGS := (.+)$", makefile, flags=re.M)
    assert build_args, "the docker targets' build arguments are no longer one list"
    taken |= set(build_args.group(1).split())
    assert {"GPU", "FP16", "VARIANT", "CHECKPOINT", "EXPORT_ARGS", "WEIGHTS", "LABELS"} <= taken
    listed = set(re.findall(r"^  ([A-Z][A-Z0-9_]*)=", _make_help(), flags=re.M))
    assert not taken - listed, f"make help does not list {sorted(taken - listed)}"


def test_make_help_shows_a_value_as_it_is():
    need_make()
    value = """--labels "my file.txt" it's `touch /tmp/never`"""  # ($ is make's own)
    (line,) = [x for x in _make_help(EXPORT_ARGS=value).splitlines() if "EXPORT_ARGS=" in x]
    assert f"EXPORT_ARGS={value} " in line

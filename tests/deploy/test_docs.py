"""The README stays short and every page it leads to is reachable: links resolve, files exist,
the error table is the code's, and the README's clients import only what they say they need."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

from swin_serve.server.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted([README, ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
README_MAX_CHARS = 15_000

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the text may hold inline code, not nested brackets.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)


def _prose(text: str) -> str:
    """The Markdown without its code: fenced blocks and inline code spans removed."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _code_blocks(text: str, lang: str | None = None) -> list[str]:
    blocks = re.findall(r"^```([\w-]*)\n(.*?)^```", text, re.S | re.M)
    return [body for kind, body in blocks if lang is None or kind == lang]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: its text, lower-cased, without punctuation, spaces as -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = github_anchor(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(page: Path) -> list[str]:
    targets = LINK.findall(_prose(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def test_readme_is_at_most_15000_characters():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= README_MAX_CHARS, f"README.md is {size} characters; move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_headings():
    """Guards the checks above against passing because they found nothing to check."""
    links = relative_links(README)
    assert "docs/configuration.md" in links and "docs/api.md" in links
    assert "overloaded-or-deadline_exceeded" in anchors(ROOT / "docs" / "troubleshooting.md")
    assert github_anchor("The model (`model/`)") == "the-model-model"


def test_readme_links_every_page_under_docs():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"pages the README does not link: {unlinked}"


def test_every_file_the_readme_examples_use_exists():
    code = "\n".join(_code_blocks(README.read_text(encoding="utf-8")))
    paths = set(re.findall(r"\bsamples/[\w./-]*\w", code))
    assert "samples/images/flower.jpg" in paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())  # a file, or a HF folder
    assert not missing, f"the README's examples use files that are not in the repository: {missing}"


def imported_modules(code: str) -> set[str]:
    """The top-level modules ``code`` imports; parsing it also proves it is valid Python."""
    tree = ast.parse(code)
    return {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }


def readme_python(uses_tritonclient: bool) -> str:
    """The README's Python example with (the Open Inference Protocol's) or without
    (the plain client's) Triton's client; there is one of each."""
    blocks = _code_blocks(README.read_text(encoding="utf-8"), "python")
    (block,) = [b for b in blocks if ("tritonclient" in b) is uses_tritonclient]
    return block


def test_the_readme_client_needs_only_the_standard_library_and_numpy():
    modules = imported_modules(readme_python(uses_tritonclient=False))
    assert modules - set(sys.stdlib_module_names) == {"numpy"}


def test_the_readme_v2_example_needs_only_numpy_and_tritonclient():
    """What `pip install "tritonclient[http,grpc]"` (which brings numpy) provides."""
    modules = imported_modules(readme_python(uses_tritonclient=True))
    assert modules - set(sys.stdlib_module_names) == {"numpy", "tritonclient"}


def test_the_error_table_lists_every_error_code_with_its_status():
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d{3})[^|]* \| `([a-z_]+)` \|", page, flags=re.M)
    documented = {code: int(status) for status, code in rows}
    assert len(documented) == len(rows), "an error code is listed twice"
    assert documented == {code.value: code.status for code in ErrorCode}


def test_the_error_table_gives_the_retry_after_of_every_retryable_code():
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| 503 \+ `Retry-After: (\d+)` \| `([a-z_]+)` \|", page, flags=re.M)
    expected = {c.value: c.retry_after_s for c in ErrorCode if c.retry_after_s is not None}
    assert {code: int(seconds) for seconds, code in rows} == expected


def test_the_architecture_page_names_every_module_of_the_package():
    """docs/architecture.md walks the package layer by layer; a module it does not name is a
    module a newcomer cannot place."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "src" / "swin_serve"
    modules = [p for p in package.rglob("*.py") if not p.name.startswith("__")]
    assert len(modules) > 50
    unnamed = sorted(str(p.relative_to(package)) for p in modules if f"`{p.name}`" not in page)
    assert not unnamed, f"docs/architecture.md does not name: {unnamed}"


def test_the_version_is_the_changelogs_latest_entry():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    entries = re.findall(r"^## (\d+\.\d+\.\d+) - \d{4}-\d{2}-\d{2}$", changelog, flags=re.M)
    assert len(entries) >= 5, entries
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert entries[0] == version, (
        f"pyproject.toml says {version}, CHANGELOG.md's latest {entries[0]}"
    )
    assert entries == sorted(entries, key=lambda v: tuple(map(int, v.split("."))), reverse=True)
    # What the server says it is: the OpenAPI document and the v2 server metadata.
    import swin_serve
    from swin_serve.server.http.app import create_app
    from swin_serve.server.v2.model import server_metadata

    assert swin_serve.__version__ == version
    assert create_app().openapi()["info"]["version"] == version
    assert server_metadata()["version"] == version

"""A real ``swin-serve`` process on a free port, and headless Debian Chromium driven by
Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.page_server import Server, serve_for_the_page
from tests.support import settle, skip_unless_ci

# As in ../.library/env/machines/python.md: without the background-networking flags Chromium
# keeps trying hosts this machine cannot reach.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server, started as a subprocess and ready (``/readyz`` 200)."""
    yield from serve_for_the_page({"SWIN_MODEL_PATH": str(tiny_model_path)}, tmp_path_factory)


@pytest.fixture(scope="module")
def int8_server(tiny_variants, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on a float32 model served from the int8 file beside it."""
    folder = tmp_path_factory.mktemp("browser-int8")
    model = folder / "micro.onnx"
    shutil.copy(tiny_variants.model_path, model)
    shutil.copy(tiny_variants.files["int8"], folder / "micro.int8.onnx")
    yield from serve_for_the_page(
        {"SWIN_MODEL_PATH": str(model), "SWIN_PRECISION": "int8"}, tmp_path_factory
    )


@pytest.fixture(scope="module")
def repository_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real server on a repository of two models, ``swin_a`` (the default) and ``swin_b``."""
    repo = tmp_path_factory.mktemp("browser-repository")
    for name in ("swin_a", "swin_b"):
        settle(shutil.copy(tiny_model_path, repo / f"{name}.onnx"))
    env = {"SWIN_MODEL_REPOSITORY": str(repo), "SWIN_DEFAULT_MODEL": "swin_a"}
    yield from serve_for_the_page(env, tmp_path_factory)


def _chromium_path() -> str:
    path = (
        os.environ.get("SWIN_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not path:
        skip_unless_ci(
            "Chromium is not installed (Debian: apt-get install chromium chromium-driver; "
            ".ci/run does this), or point SWIN_CHROMIUM at a Chromium binary"
        )
    return path


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        skip_unless_ci("playwright is not installed: make test installs it")
    executable = _chromium_path()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; errors if the page threw or logged a console error.

    Chromium itself logs "Failed to load resource ... status of 4xx" for every API error
    response; the error tests provoke those on purpose and check what the page shows instead.
    """
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    page.set_default_timeout(30_000)
    yield page
    context.close()
    unexpected = [p for p in problems if "the server responded with a status of 4" not in p]
    assert not unexpected, unexpected


@pytest.fixture
def screenshot_dirs(tmp_path: Path) -> list[Path]:
    """Where screenshots go: pytest's tmp dir, and $SWIN_SCREENSHOT_DIR when set."""
    dirs = [tmp_path]
    if extra := os.environ.get("SWIN_SCREENSHOT_DIR"):
        Path(extra).mkdir(parents=True, exist_ok=True)
        dirs.append(Path(extra))
    return dirs

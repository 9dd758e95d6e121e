"""A real ``swin-serve`` process on a free port, and headless Debian Chromium driven by
Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, skip_unless_ci, wait_for_readyz

ROOT = Path(__file__).resolve().parents[2]
# A small upload cap, so the 413 case needs only a 1.5 MB file.
MAX_UPLOAD_BYTES = 1_000_000
# Not the default (16), so the test can tell the model card shows live settings.
MAX_BATCH_SIZE = 8

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


@dataclass(frozen=True)
class Server:
    url: str
    max_batch_size: int
    max_upload_bytes: int


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server, started as a subprocess and ready (``/readyz`` 200)."""
    yield from _serve({"SWIN_MODEL_PATH": str(tiny_model_path)}, tmp_path_factory)


@pytest.fixture(scope="module")
def int8_server(tiny_variants, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on a float32 model served from the int8 file beside it."""
    folder = tmp_path_factory.mktemp("browser-int8")
    model = folder / "micro.onnx"
    shutil.copy(tiny_variants.model_path, model)
    shutil.copy(tiny_variants.files["int8"], folder / "micro.int8.onnx")
    yield from _serve({"SWIN_MODEL_PATH": str(model), "SWIN_PRECISION": "int8"}, tmp_path_factory)


@pytest.fixture(scope="module")
def repository_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real server on a repository of two models, ``swin_a`` (the default) and ``swin_b``."""
    repo = tmp_path_factory.mktemp("browser-repository")
    for name in ("swin_a", "swin_b"):
        shutil.copy(tiny_model_path, repo / f"{name}.onnx")
        past = time.time() - 60  # settled: not a file still being copied
        os.utime(repo / f"{name}.onnx", (past, past))
    env = {"SWIN_MODEL_REPOSITORY": str(repo), "SWIN_DEFAULT_MODEL": "swin_a"}
    yield from _serve(env, tmp_path_factory)


def _serve(model_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    env = {
        **os.environ,
        **model_env,
        "SWIN_HOST": "127.0.0.1",
        "SWIN_PORT": str(port),
        "SWIN_GRPC_PORT": "0",
        "SWIN_PROVIDERS": "cpu",
        "SWIN_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
        "SWIN_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "SWIN_LOG_LEVEL": "warning",
    }
    log_path = tmp_path_factory.mktemp("browser-server") / "server.log"
    with log_path.open("w+b") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swin_serve.server"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_readyz(url, proc, 90, lambda: log.seek(0) or log.read().decode())
            yield Server(url, MAX_BATCH_SIZE, MAX_UPLOAD_BYTES)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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

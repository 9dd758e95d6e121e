"""The web page on a server with API keys (SWIN_API_KEYS): the page itself loads without a key,
asks for one on the API's 401, and sends the one it is given with every API call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.page_server import Server, serve_for_the_page

KEY = "page-test-key-0123456789abcdef"


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


@pytest.fixture(scope="module")
def keyed_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {"SWIN_MODEL_PATH": str(tiny_model_path), "SWIN_API_KEYS": KEY}
    yield from serve_for_the_page(env, tmp_path_factory)


def test_the_page_asks_for_a_key_and_sends_it(page, keyed_server, images_dir):
    url = keyed_server.url
    assert httpx.get(f"{url}/v1/models").status_code == 401  # the API is protected
    page.goto(f"{url}/")
    form = page.locator("#key-form")
    expect(form).to_be_visible()
    expect(page.locator("#model-summary")).to_contain_text("API key")

    page.fill("#key-input", "not-the-key-0123456789")
    page.click("#key-form button")
    expect(page.locator("#key-title")).to_contain_text("did not accept")
    assert page.evaluate("sessionStorage.getItem('swin-api-key')") is None

    page.fill("#key-input", KEY)
    page.click("#key-form button")
    expect(form).to_be_hidden()
    expect(page.locator("#model-summary")).to_contain_text("swin_micro_patch4_window4_64")
    page.set_input_files("#file-input", images_dir / "flower.jpg")
    expect(page.locator("#predictions li")).to_have_count(5)
    expect(page.locator("#heatmaps canvas[data-ready]")).to_have_count(4)

    # Kept for the tab: a reload asks no more.
    page.reload()
    expect(page.locator("#model-summary")).to_contain_text("swin_micro_patch4_window4_64")
    expect(form).to_be_hidden()

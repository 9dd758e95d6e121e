"""The web page at ``/``, end to end: headless Chromium against the real server process serving
the tiny exported model (random weights)."""

from __future__ import annotations

import base64
import io
import itertools
import re
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def test_page_and_assets_are_served_from_the_package(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200, (
        "GET / is not the web page: src/swin_serve/server/http/app.py must include swin_serve.server.http.ui.router"
    )
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert httpx.get(f"{server.url}{src}").status_code == 200, src
    # No CDN: every script and stylesheet is local.
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text)
    missing = httpx.get(f"{server.url}/static/..%2fui.py")
    assert missing.status_code == 404 and "error" in missing.json()


def test_flower_shows_top5_bars_heatmaps_model_card_and_timing(
    page, server, images_dir, screenshot_dirs
):
    flower = images_dir / "flower.jpg"
    # Ten, not five: with random weights neighbouring scores nearly tie, so a prediction batched
    # with the page's /features request may swap two of them by a rounding error.
    answer = httpx.post(
        f"{server.url}/classify?top_k=10", files={"file": ("flower.jpg", flower.read_bytes())}
    ).json()["results"][0]["predictions"]
    score_of = {p["label"]: p["score"] for p in answer}

    response = page.goto(f"{server.url}/")
    assert response is not None and response.ok
    # The model card comes from /v1/models, with the live settings and the random-weights banner.
    expect(page.locator("#model-summary")).to_contain_text("swin_micro_patch4_window4_64")
    expect(page.locator("#random-banner")).to_be_visible()
    # ... with the export command that works for this preset (the micro one has no official weights)
    expect(page.locator("#random-advice")).to_contain_text(
        "swin-export --variant swin_micro_patch4_window4_64 --checkpoint PATH"
    )
    card = page.locator("#model-card")
    expect(card).to_contain_text("CPUExecutionProvider")
    expect(card).to_contain_text("fp32 on onnxruntime · SWIN_PRECISION=fp32")
    expect(card).to_contain_text("CPU layout")
    expect(card).to_contain_text("random")
    expect(card).to_contain_text("shipped ImageNet-1k names")  # where the class names came from
    expect(card).to_contain_text(f"up to {server.max_batch_size} images per run")

    page.set_input_files("#file-input", flower)

    expect(page.locator("#predictions li")).to_have_count(5)
    expect(page.locator("#heatmaps canvas[data-ready]")).to_have_count(4)
    expect(page.locator("#error")).to_be_hidden()
    labels = page.locator("#predictions .label").all_inner_texts()
    scores = page.locator("#predictions .score").all_inner_texts()
    for label, shown, p in zip(labels, scores, answer, strict=False):
        assert label in score_of, (label, answer)
        assert score_of[label] == pytest.approx(p["score"], abs=1e-6), (labels, answer)
        assert shown.endswith("%")
        if not shown.startswith("<"):
            assert float(shown[:-1]) == pytest.approx(p["score"] * 100, abs=0.051)

    # Each heatmap is drawn over the photo: with the overlay's opacity at 0 all four canvases
    # show the same (non-blank) photo, and with the overlay on they all differ.
    overlaid = _canvas_pixels(page)
    for a, b in itertools.pairwise(overlaid):
        assert np.abs(a - b).mean() > 2
    page.locator("#opacity").fill("0")
    photo_only = _canvas_pixels(page)
    assert photo_only[0].std() > 10
    for a, b in itertools.pairwise(photo_only):
        assert np.array_equal(a, b)
    page.locator("#opacity").fill("0.6")

    # Timing from each response's Server-Timing header: both requests ran through a batch.
    rows = page.locator("#timing tbody tr")
    expect(rows).to_have_count(2)
    for i in range(2):
        cells = rows.nth(i).locator("td").all_inner_texts()
        decode, queue, inference, batch, total, round_trip = cells
        for value in (decode, queue, inference, total, round_trip):
            assert re.fullmatch(r"\d+\.\d", value), cells
        assert 1 <= int(batch) <= server.max_batch_size
        assert float(inference) > 0

    shot = screenshot_dirs[0] / "web-page.png"
    page.screenshot(path=shot, full_page=True)
    for directory in screenshot_dirs[1:]:
        shutil.copy(shot, directory / shot.name)


@pytest.mark.parametrize(
    ("upload", "words"),
    [
        ("broken.png", "could not be read as an image"),
        ({"name": "report.pdf", "mimeType": "application/pdf"}, "file type is not supported"),
        ({"name": "huge.jpg", "mimeType": "image/jpeg"}, "too large"),
    ],
    ids=["400-broken-png", "415-pdf", "413-huge"],
)
def test_api_errors_are_shown_in_plain_words(page, server, images_dir, upload, words):
    if isinstance(upload, str):
        upload = images_dir / upload
    elif upload["name"].endswith(".pdf"):
        upload = {**upload, "buffer": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n%%EOF\n"}
    else:
        upload = {
            **upload,
            "buffer": b"\xff\xd8\xff\xe0" + bytes(server.max_upload_bytes + 500_000),
        }
    page.goto(f"{server.url}/")
    expect(page.locator("#model-card dt")).not_to_have_count(0)

    page.set_input_files("#file-input", upload)

    error = page.locator("#error")
    expect(error).to_be_visible()
    text = page.locator("#error-text").inner_text()
    assert words in text
    assert "{" not in text and "error" not in text.lower(), "raw API output shown"
    expect(page.locator("#predictions li")).to_have_count(0)
    expect(page.locator("#heatmaps canvas[data-ready]")).to_have_count(0)

    # The page recovers: a good image, dropped on the drop zone this time, clears the error.
    photo = base64.b64encode((images_dir / "hopper.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "hopper.jpg", {type: "image/jpeg"}));
            return transfer;
        }""",
        photo,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#predictions li")).to_have_count(5)
    expect(error).to_be_hidden()


def _canvas_pixels(page) -> list[np.ndarray]:
    """What each heatmap canvas holds (not a screenshot, which resamples), as float RGB."""
    urls = page.locator("#heatmaps canvas").evaluate_all("cs => cs.map((c) => c.toDataURL())")
    return [
        np.asarray(
            Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"),
            dtype=np.float32,
        )
        for url in urls
    ]


def test_with_several_models_the_page_offers_each_and_runs_the_chosen_one(
    page, repository_server, images_dir
):
    page.goto(f"{repository_server.url}/")
    picker = page.locator("#model-select")
    expect(picker).to_be_visible()
    expect(picker.locator("option")).to_have_count(2)
    expect(picker).to_have_value("swin_a")  # the default model comes first

    picker.select_option("swin_b")
    expect(page.locator("#model-card dt")).not_to_have_count(0)
    with page.expect_response(lambda r: r.url.endswith("/classify?top_k=5")) as answer:
        page.set_input_files("#file-input", images_dir / "flower.jpg")
    assert answer.value.url.endswith("/v1/models/swin_b/classify?top_k=5")
    assert answer.value.json()["model"] == "swin_b"
    expect(page.locator("#predictions li")).to_have_count(5)
    expect(page.locator("#error")).to_be_hidden()


def test_with_one_model_the_page_shows_no_picker(page, server):
    page.goto(f"{server.url}/")
    expect(page.locator("#model-card dt")).not_to_have_count(0)
    expect(page.locator("#model-picker")).to_be_hidden()


def test_a_reduced_precision_is_flagged_on_the_card(page, int8_server, server):
    """The model card says what runs, what the file holds and why, and flags it when they
    differ; the same card at fp32 is not flagged."""
    page.goto(f"{int8_server.url}/")
    row = page.locator("#model-card dd").nth(1)  # after Variant
    expect(row).to_contain_text("int8 on onnxruntime (exported fp32) · SWIN_PRECISION=int8")
    expect(row).to_have_class("warn")
    page.goto(f"{server.url}/")
    row = page.locator("#model-card dd").nth(1)
    expect(row).to_contain_text("fp32 on onnxruntime")
    expect(row).not_to_have_class("warn")

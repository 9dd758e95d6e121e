"""Your own fine-tuned Swin, end to end: a HuggingFace folder or a timm checkpoint with its own
classes is exported without a head-size flag, served, and /classify answers with its names."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from swin_serve.export import manifest
from swin_serve.server.http.app import create_app
from swin_serve.server.settings import Settings
from tests.export.test_labels import FLOWERS, export, fine_tune
from tests.model.test_checkpoint import to_hf, to_timm

pytestmark = pytest.mark.anyio


async def classify_labels(model_path: str, images_dir, serve) -> set[str]:
    app = create_app(Settings(model_path=model_path, providers="cpu"))
    photo = (images_dir / "hopper.jpg").read_bytes()
    async with serve(app) as client:
        card = (await client.get("/v1/models")).json()
        response = await client.post(
            f"/classify?top_k={card['num_classes']}",
            content=photo,
            headers={"Content-Type": "image/jpeg"},
        )
    assert response.status_code == 200, response.text
    return {p["label"] for p in response.json()["results"][0]["predictions"]}


async def test_a_huggingface_fine_tune_exports_its_head_and_names_without_flags(
    tmp_path, images_dir, serve
):
    folder = tmp_path / "hf-flowers"
    folder.mkdir()
    safetensors.torch.save_file(to_hf(fine_tune(5), 4), folder / "model.safetensors")
    config = {"model_type": "swin", "num_labels": 5, "id2label": dict(enumerate(FLOWERS))}
    (folder / "config.json").write_text(json.dumps(config))

    rc, model_path = export(tmp_path, "--checkpoint", str(folder))

    assert rc == 0
    info = manifest.read(model_path)
    assert info.labels == FLOWERS and info.num_classes == 5
    assert info.labels_source == "the checkpoint's config.json (id2label)"
    assert await classify_labels(model_path, images_dir, serve) == set(FLOWERS)


async def test_a_timm_checkpoint_takes_its_names_from_a_labels_file(tmp_path, images_dir, serve):
    checkpoint = tmp_path / "timm-3.pth"
    torch.save(to_timm(fine_tune(3)), checkpoint)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")

    rc, model_path = export(tmp_path, "--checkpoint", str(checkpoint), "--labels", str(labels))

    assert rc == 0
    assert manifest.read(model_path).labels == ("cat", "dog", "bird")
    assert await classify_labels(model_path, images_dir, serve) == {"cat", "dog", "bird"}

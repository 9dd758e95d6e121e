"""A genuinely trained model, end to end: `samples/digits/model`, a HuggingFace fine-tune with its
own `preprocessor_config.json`, exported with no transform flags and served by a real
``python -m service`` process, answers what transformers answers.

- held-out accuracy through /classify, the Open Inference Protocol over HTTP and gRPC equals
  transformers' own (its model and its image processor) to within one image, and the int8 file's
  to within one point;
- on real photos, the served logits point where transformers' do (cosine >= 0.9999);
- the same checkpoint forced through the old fixed rule loses accuracy (why the transform must
  travel with the checkpoint).

The harness is bench/fine_tune.py, which `python -m bench fine-tune` runs to write the figures
the docs quote.
"""

from __future__ import annotations

import io
import json

import grpc
import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from PIL import Image

from bench import fine_tune
from service.v2 import messages

PHOTOS = ["flower.jpg", "flower2.jpg", "hopper.jpg", "hopper.png", "hopper.webp"]


@pytest.fixture(scope="module")
def heldout() -> tuple[list[bytes], np.ndarray]:
    return fine_tune.heldout()


@pytest.fixture(scope="module")
def reference(heldout) -> int:
    return fine_tune.reference_correct(*heldout)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repo = tmp_path_factory.mktemp("digits") / "repository"
    manifests = fine_tune.export_repository(repo)
    with fine_tune.serving(repo) as server:
        yield manifests, server


def test_the_committed_checkpoint_is_genuinely_trained(reference, heldout):
    images, _ = heldout
    recorded = json.loads((fine_tune.DIGITS / "accuracy.json").read_text())
    # Recorded on the training machine; another CPU's float rounding may flip a near-tie.
    assert len(images) == recorded["n"] and abs(reference - recorded["correct"]) <= 1
    assert reference / len(images) >= 0.9  # ten classes: chance is 0.1


def test_exported_with_no_flags_it_carries_transformers_transform(served):
    manifests, server = served
    spec, source = manifests["hf"].preprocess, manifests["hf"].preprocessing_source
    assert source == "the checkpoint's preprocessor_config.json (transformers)"
    assert (spec.resize_mode, spec.resize_shorter, spec.crop_size) == ("squash", 128, 128)
    assert spec.interpolation == "bilinear" and spec.mean == spec.std == (0.5, 0.5, 0.5)
    card = httpx.get(f"{server.base}/v1/models/{fine_tune.MODELS['hf']}", timeout=10).json()
    assert card["preprocessing_source"] == source
    assert card["preprocess"]["resize_mode"] == "squash"
    assert card["self_check"]["preprocess"]["status"] == "passed"
    meta = httpx.get(f"{server.base}/v2/models/{fine_tune.MODELS['hf']}", timeout=10).json()
    assert meta["parameters"]["preprocessing_source"] == source
    with grpc.insecure_channel(server.info["grpc"]) as channel:
        call = channel.unary_unary(
            f"/{messages.SERVICE}/ModelMetadata",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.response_type("ModelMetadata").FromString,
        )
        reply = call(messages.request_type("ModelMetadata")(name=fine_tune.MODELS["hf"]))
    assert reply.parameters["preprocessing_source"].string_param == source


def test_classify_accuracy_equals_transformers_within_one_image(served, heldout, reference):
    _, server = served
    correct = fine_tune.classify_correct(server.base, fine_tune.MODELS["hf"], *heldout)
    assert abs(correct - reference) <= 1, (correct, reference)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_v2_accuracy_equals_transformers_within_one_image(served, heldout, reference, kind):
    _, server = served
    address = server.base.removeprefix("http://") if kind == "http" else server.info["grpc"]
    correct = fine_tune.v2_correct(kind, address, fine_tune.MODELS["hf"], *heldout)
    assert abs(correct - reference) <= 1, (kind, correct, reference)


def test_the_int8_file_is_within_one_point(served, heldout, reference):
    _, server = served
    correct = fine_tune.classify_correct(server.base, fine_tune.MODELS["int8"], *heldout)
    assert abs(correct - reference) <= 0.01 * len(heldout[0]), (correct, reference)


def test_the_old_fixed_rule_loses_accuracy(served, heldout, reference):
    _, server = served
    correct = fine_tune.classify_correct(server.base, fine_tune.MODELS["old_rule"], *heldout)
    assert correct < reference - 0.1 * len(heldout[0]), (correct, reference)


def served_logits(server, model: str, photo: bytes) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.base.removeprefix("http://"))
    try:
        tensor = httpclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
        result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("logits")])
        return result.as_numpy("logits")[0].astype(np.float64)
    finally:
        client.close()


def transformers_logits(photo: bytes) -> np.ndarray:
    from transformers import AutoImageProcessor, SwinForImageClassification

    model = SwinForImageClassification.from_pretrained(fine_tune.CHECKPOINT).eval()
    processor = AutoImageProcessor.from_pretrained(fine_tune.CHECKPOINT)
    rgb = Image.open(io.BytesIO(photo)).convert("RGB")
    with torch.inference_mode():
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        return model(pixel_values=pixels).logits[0].double().numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_on_real_photos_the_served_logits_are_transformers(served, images_dir):
    """Photos small enough not to be JPEG-drafted and without EXIF rotation, so both sides see
    the same decoded pixels; the old rule, on the same photos, is measurably elsewhere."""
    _, server = served
    ours, old = [], []
    for name in PHOTOS:
        photo = (images_dir / name).read_bytes()
        theirs = transformers_logits(photo)
        ours.append(cosine(served_logits(server, fine_tune.MODELS["hf"], photo), theirs))
        old.append(cosine(served_logits(server, fine_tune.MODELS["old_rule"], photo), theirs))
    assert min(ours) >= 0.9999, dict(zip(PHOTOS, ours, strict=True))
    assert min(old) < 0.99, dict(zip(PHOTOS, old, strict=True))


def test_the_figures_the_docs_quote_are_the_generated_ones(reference):
    """README and docs/export.md quote bench/results/fine_tune.json, which must still be what
    this checkpoint gives."""
    results = json.loads((fine_tune.RESULTS_DIR / "fine_tune.json").read_text())["results"]
    correct, n = results["correct"], results["images"]
    assert abs(correct["transformers"] - reference) <= 1
    for page in (fine_tune.ROOT / "README.md", fine_tune.ROOT / "docs" / "export.md"):
        text = " ".join(page.read_text(encoding="utf-8").split())
        assert f"right on {correct['classify']} of {n} held-out images" in text, page
        assert f"and on {correct['old_rule']} through" in text, page

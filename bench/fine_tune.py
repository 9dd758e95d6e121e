"""``python -m bench fine-tune``: a genuinely trained model's accuracy through every served path.

The model is ``samples/digits/model``, a HuggingFace fine-tune (transformers'
``SwinForImageClassification``, the micro preset at 128 px) trained on scikit-learn's digits
with a ``ViTImageProcessor`` (squash to 128 x 128, bilinear, mean = std = 0.5). Its held-out
images are rendered from ``samples/digits/heldout.npz``. It is exported twice: with no transform
flags (the exporter reads the checkpoint's ``preprocessor_config.json``; with ``--int8`` too),
and without that file, which gives the fixed rule every model used to get (shorter side to
S / 0.875, bicubic, ImageNet mean and std). One server serves all three from a model repository.

Accuracy, in correct images out of the held-out set, from: transformers itself (the reference),
``/v1/models/{name}/classify``, the Open Inference Protocol over HTTP and over gRPC (Triton's
clients, ``image`` input, top-1 classification), the int8 file, and the old rule. Writes
``fine_tune.json`` and ``fine_tune.md``; tests/service/test_digits_fine_tune.py asserts on the
same functions.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, ROOT, machine_info, progress, write_json

DIGITS = ROOT / "samples" / "digits"
CHECKPOINT = DIGITS / "model"
VARIANT, SIZE = "swin_micro_patch4_window4_64", 128
MODELS = {"hf": "digits", "int8": "digits.int8", "old_rule": "digits_old_rule"}
V2_BATCH = 16  # SWIN_MAX_IMAGES_PER_REQUEST, by default


def heldout() -> tuple[list[bytes], np.ndarray]:
    """The held-out images as PNG files, and their labels."""
    # samples/digits/render.py (NumPy and Pillow only) is the training script's own renderer.
    spec = importlib.util.spec_from_file_location("digits_render", DIGITS / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    render = module.render
    data = np.load(DIGITS / "heldout.npz")
    images = []
    for digit, offset in zip(data["digits"], data["offsets"], strict=True):
        buffer = io.BytesIO()
        render(digit, offset).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images, data["labels"].astype(int)


def reference_correct(images: list[bytes], labels: np.ndarray) -> int:
    """Correct answers of transformers' own model and image processor: the user's framework."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, SwinForImageClassification

    model = SwinForImageClassification.from_pretrained(CHECKPOINT).eval()
    processor = AutoImageProcessor.from_pretrained(CHECKPOINT)
    rgb = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    with torch.inference_mode():
        pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        predicted = model(pixel_values=pixels).logits.argmax(-1).numpy()
    return int((predicted == labels).sum())


def export_repository(repo: Path) -> dict[str, Any]:
    """The three artefacts under their repository names; returns each one's manifest."""
    from export.pipeline import ExportOptions, Progress, run_export

    # The same weights without their preprocessor_config.json get the official rule at 128 px:
    # the shorter side to int(256 / 224 * 128) = 146 = int(128 / 0.875), a centre crop, bicubic,
    # ImageNet mean and std, which is the fixed rule every model used to get.
    bare = repo.parent / ".weights-without-their-transform"
    shutil.copytree(CHECKPOINT, bare, ignore=shutil.ignore_patterns("preprocessor_config.json"))
    repo.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for key, checkpoint, int8 in (("hf", CHECKPOINT, True), ("old_rule", bare, False)):
        out = repo.parent / f".export-{key}"
        options = ExportOptions(
            variant=VARIANT,
            checkpoint=str(checkpoint),
            img_size=SIZE,
            out_dir=out,
            int8=int8,
            parity_batch_sizes=(1, 3),
        )
        result = run_export(options, Progress())
        shutil.copy(result.model_path, repo / f"{MODELS[key]}.onnx")
        manifests[key] = result.manifest
        if int8:
            shutil.copy(result.files["int8"], repo / f"{MODELS['int8']}.onnx")
    return manifests


@contextmanager
def serving(repo: Path) -> Iterator[Any]:
    """``python -m service`` on the repository, HTTP and gRPC on free ports, ready."""
    from bench.server import Server, free_port

    grpc_port = free_port()
    env = {
        "SWIN_MODEL_REPOSITORY": str(repo),
        "SWIN_DEFAULT_MODEL": MODELS["hf"],
        "SWIN_PROVIDERS": "cpu",
        "SWIN_GRPC_PORT": str(grpc_port),
        "SWIN_HOST": "127.0.0.1",
        "SWIN_LOG_LEVEL": "warning",
    }
    port = free_port()
    server = Server(
        "fine-tune",
        "swin-serve",
        [sys.executable, "-m", "service"],
        {**env, "SWIN_PORT": str(port)},
        port,
        inherit_settings=False,
    )
    server.start()
    try:
        server.wait_ready(timeout_s=180)
        server.info["grpc"] = f"127.0.0.1:{grpc_port}"
        yield server
    finally:
        server.stop()


def classify_correct(base: str, model: str, images: list[bytes], labels: np.ndarray) -> int:
    """Correct top-1 answers of ``/v1/models/{model}/classify``, one image per request."""
    import httpx

    correct = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        for image, label in zip(images, labels, strict=True):
            response = client.post(
                f"/v1/models/{model}/classify?top_k=1",
                content=image,
                headers={"Content-Type": "image/png"},
            )
            response.raise_for_status()
            top = response.json()["results"][0]["predictions"][0]
            correct += int(top["index"] == label)
    return correct


def v2_correct(kind: str, address: str, model: str, images: list[bytes], labels: np.ndarray) -> int:
    """Correct top-1 answers over the Open Inference Protocol (``kind`` "http" or "grpc"), the
    ``image`` input in batches, the ``logits`` output's classification extension."""
    if kind == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    client = client_module.InferenceServerClient(address)
    correct = 0
    try:
        for start in range(0, len(images), V2_BATCH):
            batch = np.array(images[start : start + V2_BATCH], dtype=np.object_)
            tensor = client_module.InferInput("image", [len(batch)], "BYTES")
            tensor.set_data_from_numpy(batch)
            wanted = [client_module.InferRequestedOutput("logits", class_count=1)]
            result = client.infer(model, [tensor], outputs=wanted)
            top = result.as_numpy("logits").reshape(len(batch))
            indices = [int(entry.decode().split(":")[1]) for entry in top]
            correct += int((np.array(indices) == labels[start : start + V2_BATCH]).sum())
    finally:
        client.close()
    return correct


def measure(work: Path) -> dict[str, Any]:
    images, labels = heldout()
    progress(f"transformers on {len(images)} held-out images")
    results: dict[str, Any] = {"images": len(images), "correct": {}}
    correct = results["correct"]
    correct["transformers"] = reference_correct(images, labels)
    progress("exporting with no flags (+ int8), and without the transform (the old fixed rule)")
    manifests = export_repository(work / "repository")
    results["preprocessing"] = {
        key: {"source": m.preprocessing_source, "transform": m.preprocess.describe()}
        for key, m in manifests.items()
    }
    with serving(work / "repository") as server:
        http, grpc = server.base.removeprefix("http://"), server.info["grpc"]
        progress("serving: /classify, v2 HTTP, v2 gRPC, int8, old rule")
        correct["classify"] = classify_correct(server.base, MODELS["hf"], images, labels)
        correct["v2_http"] = v2_correct("http", http, MODELS["hf"], images, labels)
        correct["v2_grpc"] = v2_correct("grpc", grpc, MODELS["hf"], images, labels)
        correct["int8"] = classify_correct(server.base, MODELS["int8"], images, labels)
        correct["old_rule"] = classify_correct(server.base, MODELS["old_rule"], images, labels)
    return results


def markdown(report: dict[str, Any]) -> str:
    n = report["results"]["images"]
    rows = [
        ("transformers (SwinForImageClassification + its image processor)", "transformers"),
        ("served, /classify", "classify"),
        ("served, Open Inference Protocol over HTTP", "v2_http"),
        ("served, Open Inference Protocol over gRPC", "v2_grpc"),
        ("served, the --int8 file", "int8"),
        (
            "served through the old fixed rule (crop_pct 0.875, bicubic, ImageNet mean/std)",
            "old_rule",
        ),
    ]
    correct = report["results"]["correct"]
    lines = [
        "# A real fine-tune through every served path",
        "",
        f"Generated by `python -m bench fine-tune` on {report['machine']['cpu_model']}. "
        f"`samples/digits` (Swin micro at 128 px, trained on scikit-learn's digits), {n} held-out "
        "images.",
        "",
        "| path | correct | accuracy |",
        "|---|---:|---:|",
        *(f"| {label} | {correct[key]} | {correct[key] / n:.1%} |" for label, key in rows),
        "",
        "Transforms: "
        + "; ".join(
            f"{key}: {p['transform']} (from {p['source']})"
            for key, p in report["results"]["preprocessing"].items()
        ),
        "",
    ]
    return "\n".join(lines)


def main(work: Path | None = None) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-fine-tune-") as tmp:
        results = measure(work or Path(tmp))
    report = {"machine": machine_info(), "results": results}
    write_json(RESULTS_DIR / "fine_tune.json", report)
    (RESULTS_DIR / "fine_tune.md").write_text(markdown(report))
    print(markdown(report))
    return 0

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
clients, ``image`` input, top-1 classification), the int8 file, and the old rule.

Precision fidelity, all through the served paths: the float32 model at fp32 (ONNX Runtime), at
bf16 (a second server, SWIN_PRECISION=bf16: OpenVINO) and the int8 file. For each, the held-out
accuracy and its top-1 disagreements with fp32 (``/classify``, one image per request); on the
sample photos, the logits' cosine with fp32's and with transformers', and the cosine of each
unpooled stage map (``/features``) with fp32's. On a CPU without native bfloat16 the server would
refuse bf16, so the run records why instead.

Writes ``fine_tune.json`` and ``fine_tune.md``; tests/server/test_digits_fine_tune.py asserts
on the same functions, and docs/benchmarks.md quotes ``fidelity_markdown`` of the json.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, ROOT, describe_cpu, machine_info, progress, write_json

DIGITS = ROOT / "samples" / "digits"
CHECKPOINT = DIGITS / "model"
VARIANT, SIZE = "swin_micro_patch4_window4_64", 128
MODELS = {"hf": "digits", "int8": "digits.int8", "old_rule": "digits_old_rule"}
V2_BATCH = 16  # SWIN_MAX_IMAGES_PER_REQUEST, by default
# Small enough not to be JPEG-drafted and without EXIF rotation, so that transformers and the
# server decode the same pixels.
PHOTOS = ("flower.jpg", "flower2.jpg", "hopper.jpg", "hopper.png", "hopper.webp")
STAGES = ("stage1", "stage2", "stage3", "stage4")
# Each precision's model, and what its card must say runs: (model, precision, engine). fp32 and
# int8 are on the SWIN_PRECISION=fp32 server, bf16 on a SWIN_PRECISION=bf16 one.
SERVED_AT = {
    "fp32": (MODELS["hf"], "fp32", "onnxruntime"),
    "bf16": (MODELS["hf"], "bf16", "openvino"),
    "int8": (MODELS["int8"], "int8", "onnxruntime"),
}


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
    from swin_serve.export.pipeline import ExportOptions, Progress, run_export

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
def serving(repo: Path, precision: str = "fp32") -> Iterator[Any]:
    """``swin-serve`` on the repository at SWIN_PRECISION=``precision``, HTTP and gRPC on
    free ports, ready."""
    from bench.server_process import Server, free_port

    grpc_port = free_port()
    env = {
        "SWIN_MODEL_REPOSITORY": str(repo),
        "SWIN_DEFAULT_MODEL": MODELS["hf"],
        "SWIN_PROVIDERS": "cpu",
        "SWIN_PRECISION": precision,
        "SWIN_GRPC_PORT": str(grpc_port),
        "SWIN_HOST": "127.0.0.1",
        "SWIN_LOG_LEVEL": "warning",
    }
    port = free_port()
    server = Server(
        "fine-tune",
        "swin-serve",
        [sys.executable, "-m", "swin_serve.server"],
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


def classify_top1(base: str, model: str, images: list[bytes]) -> np.ndarray:
    """``/v1/models/{model}/classify``'s top-1 class index per image, one image per request:
    (N,) int."""
    import httpx

    indices = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for image in images:
            response = client.post(
                f"/v1/models/{model}/classify?top_k=1",
                content=image,
                headers={"Content-Type": "image/png"},
            )
            response.raise_for_status()
            indices.append(response.json()["results"][0]["predictions"][0]["index"])
    return np.array(indices, dtype=int)


def classify_correct(base: str, model: str, images: list[bytes], labels: np.ndarray) -> int:
    """Correct top-1 answers of ``/v1/models/{model}/classify``, one image per request."""
    return int((classify_top1(base, model, images) == labels).sum())


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


def sample_photos() -> dict[str, bytes]:
    """PHOTOS from samples/images, by name."""
    return {name: (ROOT / "samples" / "images" / name).read_bytes() for name in PHOTOS}


def transformers_logits(photos: dict[str, bytes]) -> dict[str, np.ndarray]:
    """transformers' logits (its model and its image processor) per photo: (num_classes,)
    float64."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, SwinForImageClassification

    model = SwinForImageClassification.from_pretrained(CHECKPOINT).eval()
    processor = AutoImageProcessor.from_pretrained(CHECKPOINT)
    logits = {}
    with torch.inference_mode():
        for name, photo in photos.items():
            rgb = Image.open(io.BytesIO(photo)).convert("RGB")
            pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
            logits[name] = model(pixel_values=pixels).logits[0].double().numpy()
    return logits


def served_logits(base: str, model: str, photo: bytes) -> np.ndarray:
    """The ``logits`` output for one photo over the Open Inference Protocol (HTTP):
    (num_classes,) float64."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(base.removeprefix("http://"))
    try:
        tensor = httpclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([photo], dtype=np.object_))
        result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput("logits")])
        return result.as_numpy("logits")[0].astype(np.float64)
    finally:
        client.close()


def stage_maps(base: str, model: str, photo: bytes) -> dict[str, np.ndarray]:
    """``/v1/models/{model}/features``' unpooled STAGES for one photo, as .npz: stage ->
    (C, H, W) float32."""
    import httpx

    response = httpx.post(
        f"{base}/v1/models/{model}/features",
        params={"stages": list(STAGES), "pool": "none"},
        files={"file": ("photo", photo)},
        headers={"Accept": "application/x-npz"},
        timeout=30,
    )
    response.raise_for_status()
    arrays = np.load(io.BytesIO(response.content))
    return {stage: arrays[stage][0] for stage in STAGES}


@dataclass(frozen=True)
class Answers:
    """What one model on one server answers, all through its HTTP endpoints."""

    card: dict[str, Any]  # GET /v1/models/{model}
    top1: np.ndarray  # (N,) the held-out images' top-1 class indices, from /classify
    logits: dict[str, np.ndarray]  # photo -> (num_classes,)
    maps: dict[str, dict[str, np.ndarray]]  # photo -> stage -> (C, H, W)


def answers(base: str, model: str, images: list[bytes], photos: dict[str, bytes]) -> Answers:
    """``model``'s card, its top-1 on ``images`` and its logits and stage maps on ``photos``."""
    import httpx

    card = httpx.get(f"{base}/v1/models/{model}", timeout=10).raise_for_status().json()
    return Answers(
        card=card,
        top1=classify_top1(base, model, images),
        logits={name: served_logits(base, model, photo) for name, photo in photos.items()},
        maps={name: stage_maps(base, model, photo) for name, photo in photos.items()},
    )


def check_card(precision: str, answered: Answers) -> None:
    """Fail unless the card says ``precision`` runs on the engine SERVED_AT names: a server that
    quietly ran something else would make every figure below a comparison of fp32 with itself."""
    model, wanted, engine = SERVED_AT[precision]
    card = answered.card
    if (card["name"], card["precision"], card["engine"]) != (model, wanted, engine):
        raise RuntimeError(
            f"{precision}: expected {model} at {wanted} on {engine}, the card says "
            f"{card['name']} at {card['precision']} on {card['engine']} "
            f"({card.get('precision_reason')})"
        )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two arrays of any shape, flattened, in float64."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def against_fp32(
    ours: Answers, fp32: Answers, labels: np.ndarray, reference: dict[str, np.ndarray]
) -> dict[str, Any]:
    """One precision's figures: held-out accuracy, top-1 disagreements with fp32 and, per
    photo, the cosine of its logits with fp32's and transformers', and of each stage map with
    fp32's."""
    return {
        "model": ours.card["name"],
        "precision": ours.card["precision"],
        "engine": ours.card["engine"],
        "precision_reason": ours.card.get("precision_reason"),
        "correct": int((ours.top1 == labels).sum()),
        "disagreements_with_fp32": int((ours.top1 != fp32.top1).sum()),
        "logits_cosine_vs_fp32": {p: cosine(v, fp32.logits[p]) for p, v in ours.logits.items()},
        "logits_cosine_vs_transformers": {
            p: cosine(v, reference[p]) for p, v in ours.logits.items()
        },
        "stage_cosine_vs_fp32": {
            stage: {p: cosine(maps[stage], fp32.maps[p][stage]) for p, maps in ours.maps.items()}
            for stage in STAGES
        },
    }


def bf16_refusal(repo: Path) -> str | None:
    """Why a server on this machine would refuse SWIN_PRECISION=bf16 for the float32 model (in
    the server's own words), or None where it serves it."""
    from swin_serve.server.runtime import precision
    from swin_serve.server.runtime.engines import machine
    from swin_serve.server.settings import Settings

    # SWIN_ENGINE at its default, auto, as ``serving`` leaves it.
    path = repo / f"{MODELS['hf']}.onnx"
    try:
        precision.plan("bf16", "auto", path, "fp32", machine(Settings(providers="cpu")))
    except precision.PrecisionError as exc:
        return str(exc)
    return None


def answers_at(base: str, precision: str, images: list[bytes], photos: dict[str, bytes]) -> Answers:
    """Answers of SERVED_AT[precision]'s model on the server at ``base``, its card checked."""
    answered = answers(base, SERVED_AT[precision][0], images, photos)
    check_card(precision, answered)
    return answered


def fidelity(
    at: dict[str, Answers],
    labels: np.ndarray,
    reference: dict[str, np.ndarray],
    bf16_not_run: str | None,
) -> dict[str, Any]:
    """Each precision's ``against_fp32`` figures, fp32, bf16, int8 in that order; bf16 says why
    it did not run where it did not."""
    figures = {}
    for precision in SERVED_AT:
        if precision in at:
            figures[precision] = against_fp32(at[precision], at["fp32"], labels, reference)
        else:
            figures[precision] = {"not_run": bf16_not_run}
    return figures


def measure(work: Path) -> dict[str, Any]:
    images, labels = heldout()
    photos = sample_photos()
    progress(f"transformers on {len(images)} held-out images and {len(photos)} photos")
    results: dict[str, Any] = {"images": len(images), "photos": list(photos), "correct": {}}
    correct = results["correct"]
    correct["transformers"] = reference_correct(images, labels)
    reference = transformers_logits(photos)
    progress("exporting with no flags (+ int8), and without the transform (the old fixed rule)")
    repo = work / "repository"
    manifests = export_repository(repo)
    results["preprocessing"] = {
        key: {"source": m.preprocessing_source, "transform": m.preprocess.describe()}
        for key, m in manifests.items()
    }
    at: dict[str, Answers] = {}
    with serving(repo) as server:
        http, grpc = server.base.removeprefix("http://"), server.info["grpc"]
        progress("serving: /classify, v2 HTTP, v2 gRPC, int8, old rule; logits, stage maps")
        at["fp32"] = answers_at(server.base, "fp32", images, photos)
        at["int8"] = answers_at(server.base, "int8", images, photos)
        correct["classify"] = int((at["fp32"].top1 == labels).sum())
        correct["v2_http"] = v2_correct("http", http, MODELS["hf"], images, labels)
        correct["v2_grpc"] = v2_correct("grpc", grpc, MODELS["hf"], images, labels)
        correct["int8"] = int((at["int8"].top1 == labels).sum())
        correct["old_rule"] = classify_correct(server.base, MODELS["old_rule"], images, labels)
    bf16_not_run = bf16_refusal(repo)
    if bf16_not_run is None:
        progress("serving at bf16: a second server, SWIN_PRECISION=bf16")
        with serving(repo, "bf16") as server:
            at["bf16"] = answers_at(server.base, "bf16", images, photos)
    else:
        progress(f"bf16 not run: {bf16_not_run}")
    results["precisions"] = fidelity(at, labels, reference, bf16_not_run)
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
        "## Precision fidelity, served",
        "",
        fidelity_markdown(report),
    ]
    return "\n".join(lines)


def worst(cosines: dict[str, float]) -> str:
    """The lowest cosine and its photo, e.g. ``0.99970 (flower.jpg)``."""
    photo = min(cosines, key=cosines.__getitem__)
    return f"{cosines[photo]:.5f} ({photo})"


def fidelity_markdown(report: dict[str, Any]) -> str:
    """The precision tables, from fine_tune.json alone: docs/benchmarks.md quotes this text
    (its paragraph re-wrapped), and a test keeps the two the same."""
    results = report["results"]
    n, photos = results["images"], results["photos"]
    head = (
        f"{report['machine']['cpus']} CPUs: {describe_cpu(report['machine'])}. {n} held-out "
        f"images through `/classify` (one per request); {len(photos)} photos of "
        f"`samples/images` ({', '.join(photos)}) for the logits (Open Inference Protocol) and "
        "the unpooled stage maps (`/features?pool=none`). Each cosine is the worst photo's."
    )
    lines = [
        head,
        "",
        "| precision | served as | held-out correct | top-1 disagreements with fp32 "
        "| logits cosine vs fp32 | logits cosine vs transformers |",
        "|---|---|---:|---:|---|---|",
    ]
    stage_lines = [f"| precision | {' | '.join(STAGES)} |", "|---|" + "---|" * len(STAGES)]
    for precision, f in results["precisions"].items():
        if "not_run" in f:
            lines.append(f"| {precision} | not run: {f['not_run']} | | | | |")
            continue
        reference = precision == "fp32"
        lines.append(
            f"| {precision} | {f['model']} on {f['engine']} "
            f"| {f['correct']} ({f['correct'] / n:.1%}) "
            f"| {'(the reference)' if reference else f['disagreements_with_fp32']} "
            f"| {'(the reference)' if reference else worst(f['logits_cosine_vs_fp32'])} "
            f"| {worst(f['logits_cosine_vs_transformers'])} |"
        )
        if not reference:
            cells = " | ".join(worst(f["stage_cosine_vs_fp32"][s]) for s in STAGES)
            stage_lines.append(f"| {precision} | {cells} |")
    return "\n".join([*lines, "", "Stage maps, cosine with fp32's:", "", *stage_lines, ""])


def main(work: Path | None = None) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-fine-tune-") as tmp:
        results = measure(work or Path(tmp))
    report = {"machine": machine_info(), "results": results}
    write_json(RESULTS_DIR / "fine_tune.json", report)
    (RESULTS_DIR / "fine_tune.md").write_text(markdown(report))
    print(markdown(report))
    return 0

"""In-process test doubles for the server: a fake engine, a tiny manifest, settings, an app run
in-process with an httpx client, and small images. HTTP-level tests run the real app (lifespan,
middleware, batcher) against FakeEngine, so they are fast and can inject delays and failures."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image

from swin_serve.artifact.contract import Manifest
from swin_serve.server.lifecycle import Lifecycle
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.runtime.engine import EngineError, FatalEngineError
from swin_serve.server.settings import Settings

TINY_SIZE = 32
NUM_CLASSES = 10
STAGES = {"stage1": (8, 8, 8), "stage2": (16, 4, 4), "stage3": (32, 2, 2), "stage4": (64, 1, 1)}


def tiny_manifest(*, random_weights: bool = True) -> Manifest:
    """A valid manifest for a made-up 32x32, 10-class model (what FakeEngine pretends to be)."""
    return Manifest.model_validate(
        {
            "format_version": 1,
            "name": "fake_swin_32",
            "variant": "fake_swin_32",
            "precision": "fp32",
            "config": {
                "embed_dim": 8,
                "depths": [1, 1, 1, 1],
                "num_heads": [1, 2, 4, 8],
                "window_size": 2,
                "img_size": TINY_SIZE,
                "patch_size": 4,
                "in_chans": 3,
                "num_classes": NUM_CLASSES,
                "mlp_ratio": 4.0,
            },
            "input": {
                "name": "pixel_values",
                "dtype": "float32",
                "shape": ["batch", 3, TINY_SIZE, TINY_SIZE],
            },
            "outputs": {
                "logits": ["batch", NUM_CLASSES],
                "embedding": ["batch", 64],
                **{name: ["batch", *shape] for name, shape in STAGES.items()},
            },
            "preprocess": {
                "resize_shorter": int(TINY_SIZE / 0.875),
                "crop_size": TINY_SIZE,
                "crop_pct": 0.875,
                "interpolation": "bicubic",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "color": "RGB",
                "layout": "NCHW",
                "scale": 255.0,
            },
            "labels": [f"class{i}" for i in range(NUM_CLASSES)],
            "weights": {
                "source": "random" if random_weights else "official",
                "random": random_weights,
            },
            "exporter": {"name": "tests"},
            "parity": {"passed": True},
        }
    )


class FakeEngine:
    """Deterministic stand-in for OnnxEngine: outputs are simple functions of each image.

    ``delay_s`` sleeps in run() (a slow model); ``fail`` decides per call (0-based call index,
    batch) whether to raise; ``fatal`` makes that a FatalEngineError; ``warmup_gate`` holds warm-up until set. ``calls`` records the batch
    size of every run (warm-up excluded), ``run_ends`` when each ended, ``images_seen`` the
    per-image channel means.
    """

    provider = "FakeExecutionProvider"
    provider_warning = None
    golden_text = None  # no exporter answers: the start-up self-check reports "skipped"
    engine_name = "fake"
    precision_reason = "a test's fake engine"
    served_file: dict = {}  # noqa: RUF012 - read only
    layout = None  # the batcher runs SWIN_PARALLEL_BATCHES (or its default) at once

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def exported_precision(self) -> str:
        return self.manifest.precision

    def runners(self) -> dict:
        return {"only": self.run}

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        fail: Callable[[int, np.ndarray], bool] | None = None,
        fatal: bool = False,
        manifest: Manifest | None = None,
        warmup_gate: threading.Event | None = None,
    ) -> None:
        self.manifest = manifest or tiny_manifest()
        self.delay_s = delay_s
        self.fail = fail
        self.fatal = fatal
        self.calls: list[int] = []
        self.run_ends: list[float] = []  # time.monotonic() as each run (warm-up excluded) ended
        self.images_seen: list[np.ndarray] = []
        self.warmup_sizes: list[int] | None = None
        self.warmup_gate = warmup_gate  # warm-up blocks until it is set (a slow start-up)
        self._lock = threading.Lock()
        rng = np.random.default_rng(0)
        self._w = rng.normal(size=(3, NUM_CLASSES)).astype(np.float32)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, TINY_SIZE, TINY_SIZE), (
            batch.shape
        )
        with self._lock:
            index = len(self.calls)
            self.calls.append(len(batch))
            self.images_seen.extend(batch.mean(axis=(2, 3)))
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            self.run_ends.append(time.monotonic())
        if self.fail is not None and self.fail(index, batch):
            exc = FatalEngineError if self.fatal else EngineError
            raise exc(
                "CUDA error: an illegal memory access was encountered"
                if self.fatal
                else "injected failure"
            )
        return self.outputs_for(batch)

    def outputs_for(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = len(batch)
        m = batch.mean(axis=(2, 3))  # N, 3
        out: dict[str, np.ndarray] = {"logits": 4.0 * m @ self._w}  # N, K
        out["embedding"] = np.repeat(m, 22, axis=1)[:, :64]  # N, 64
        for name, (c, h, w) in STAGES.items():
            base = np.repeat(m, c // 3 + 1, axis=1)[:, :c]  # N, C
            ramp = np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)
            out[name] = base[:, :, None, None] + ramp  # N, C, H, W
        return {k: v.astype(np.float32).reshape(n, *v.shape[1:]) for k, v in out.items()}

    def warmup(self, batch_sizes: list[int]) -> None:
        if self.warmup_gate is not None:
            assert self.warmup_gate.wait(timeout=30)
        self.warmup_sizes = [*(self.warmup_sizes or []), *batch_sizes]


def test_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "model_path": "unused.onnx",
        "max_batch_size": 8,
        "max_batch_delay_ms": 20,
        "queue_capacity": 64,
        "request_timeout_ms": 5000,
        "max_upload_bytes": 1024 * 1024,
        "max_image_pixels": 1_000_000,
        "max_images_per_request": 8,
        "decode_threads": 2,
    }
    base.update(overrides)
    return Settings(**base)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a factory, not a test


@asynccontextmanager
async def running(
    app: FastAPI, *, wait_for_warm_up: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an httpx client talking to it in-process (once the
    model is warm, unless ``wait_for_warm_up`` is False)."""
    async with app.router.lifespan_context(app):
        if wait_for_warm_up:
            await app.state.service.lifecycle.wait_for_warm_up()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://swin.test", timeout=30
        ) as client:
            yield client


def image_bytes(
    color: tuple[int, int, int] = (200, 30, 60), size: tuple[int, int] = (40, 48), fmt: str = "PNG"
) -> bytes:
    """A small solid-colour image, encoded."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def distinct_images(n: int) -> list[bytes]:
    """``n`` PNGs of different colours, so each gives a different model output."""
    return [
        image_bytes(((37 * i) % 256, (91 * i + 40) % 256, (13 * i + 200) % 256)) for i in range(n)
    ]


def default_model(lifecycle: Lifecycle) -> LoadedModel:
    """The default model a test's server loaded (maybe still warming up)."""
    entry = lifecycle.registry.default_entry()
    assert entry is not None and entry.model is not None, "no default model loaded"
    return entry.model

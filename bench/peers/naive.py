"""BASELINE ONLY - the naive server a user would otherwise write. Not part of the product.

FastAPI + PyTorch eager: one forward per request, no batching, no queue, no limits. It is
deliberately ordinary rather than deliberately bad: the forward runs in a worker thread (so the
event loop keeps accepting), under ``torch.inference_mode``, with PyTorch's default threads. It
uses the SAME preprocessing (``swin_serve.artifact.preprocess.decode_image``) and the SAME weights (rebuilt
from the benchmark model's manifest) as the real service, so the comparison is about serving only.

Run: ``PEER_MANIFEST=artefacts/bench/swin_tiny_patch4_window7_224.json PEER_PORT=8001 python -m bench.peers.naive``
"""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from swin_serve.artifact.contract import parse_manifest
from swin_serve.artifact.preprocess import decode_image


def create_peer_app(manifest_path: Path) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from swin_serve.export.verify import rebuild_reference

        manifest = parse_manifest(Path(manifest_path).read_text(), source=str(manifest_path))
        app.state.model = rebuild_reference(manifest, None).eval()
        app.state.spec = manifest.preprocess
        app.state.labels = manifest.labels
        yield

    app = FastAPI(title="naive peer (baseline)", lifespan=lifespan)

    def predict(app_state, data: bytes) -> list[dict]:
        x = decode_image(data, app_state.spec, max_pixels=40_000_000)  # 3, S, S
        with torch.inference_mode():
            logits = app_state.model(torch.from_numpy(x[None]))[0].numpy()  # num_classes
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:5]
        return [{"label": app_state.labels[i], "index": int(i), "score": float(p[i])} for i in top]

    @app.post("/classify")
    async def classify(request: Request) -> JSONResponse:
        data = await request.body()
        preds = await asyncio.to_thread(predict, request.app.state, data)
        return JSONResponse({"results": [{"predictions": preds}]})

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    return app


def main() -> None:
    manifest = Path(os.environ["PEER_MANIFEST"])
    port = int(os.environ.get("PEER_PORT", "8001"))
    uvicorn.run(create_peer_app(manifest), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()

"""PEER ONLY - LitServe serving the same ONNX file with the same preprocessing. Not part of the product.

What a competent LitServe user writes for a small CPU machine: a ``LitAPI`` whose ``setup`` opens
one ONNX Runtime session per worker, ``decode_request`` preprocesses the raw image body,
``predict`` runs the stacked batch and ``encode_response`` gives the top 5. LitServe batches
(``max_batch_size``, ``batch_timeout``), runs ``LITSERVE_WORKERS`` inference worker processes of
``LITSERVE_THREADS`` ORT intra-op threads each, and moves requests between its processes over
ZeroMQ (``fast_queue``). The preprocessing is the service's own
(``swin_serve.artifact.preprocess.decode_image``) and the batch limit is the service's CPU default, so the
comparison is about serving only.

Run: ``PEER_MODEL=artefacts/bench/swin_tiny_patch4_window7_224.onnx PEER_PORT=8002
LITSERVE_WORKERS=1 LITSERVE_THREADS=2 python -m bench.peers.litserve_app``; ready when ``/health``
answers 200. ``POST /classify`` takes a raw ``image/jpeg`` body, as the service does.
"""

# No ``from __future__ import annotations`` here: LitServe builds its FastAPI route from
# ``decode_request``'s annotation object, which a postponed (string) annotation would hide.

import os
from typing import Annotated

import litserve as ls
import numpy as np
from fastapi import Body

from swin_serve.artifact.contract import INPUT_NAME, manifest_from_metadata
from swin_serve.artifact.preprocess import decode_image

MAX_BATCH_SIZE = 4  # the service's batch limit on CPU
BATCH_TIMEOUT_S = 0.005
MAX_PIXELS = 40_000_000


class SwinAPI(ls.LitAPI):
    def __init__(self, model: str, threads: int) -> None:
        super().__init__(
            max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path="/classify"
        )
        self.model, self.threads = model, threads

    def setup(self, device: str) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.manifest = manifest_from_metadata(metadata, source=self.model)

    def decode_request(
        self, request: Annotated[bytes, Body(media_type="image/jpeg")]
    ) -> np.ndarray:
        return decode_image(request, self.manifest.preprocess, max_pixels=MAX_PIXELS)  # 3, S, S

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)  # B, 3, S, S

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {INPUT_NAME: x})[0]  # B, num_classes

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, logits: np.ndarray) -> dict:
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:5]
        labels = self.manifest.labels
        predictions = [{"label": labels[i], "index": int(i), "score": float(p[i])} for i in top]
        return {"results": [{"predictions": predictions}]}


def main() -> None:
    api = SwinAPI(os.environ["PEER_MODEL"], int(os.environ.get("LITSERVE_THREADS", "1")))
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=int(os.environ.get("LITSERVE_WORKERS", "1")),
        fast_queue=True,
    )
    server.run(
        host="127.0.0.1",
        port=int(os.environ.get("PEER_PORT", "8002")),
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()

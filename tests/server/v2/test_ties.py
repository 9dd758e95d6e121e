"""The v2 classification extension's order among equal scores: the lower class index first
(src/swin_serve/server/v2/infer.py, docs/api.md), so that the same logits always give the same answer."""

from __future__ import annotations

import numpy as np
import pytest

from swin_serve.server.v2 import infer
from swin_serve.server.v2.tensors import BYTES, RequestedOutput
from tests.support.fakes import NUM_CLASSES
from tests.support.fakes import TINY_SIZE as SIZE

pytestmark = pytest.mark.anyio

INFER = "/v2/models/fake_swin_32/infer"  # tests/server/conftest.py: tiny_manifest
# Per image: four classes tied at the top, then pairs; and every class tied.
TIED = np.array(
    [[1, 3, 3, 0, 3, -1, 3, 2, 2, 0], [0.5] * NUM_CLASSES], dtype=np.float32
)  # 2, NUM_CLASSES
TIED_ORDER = [[1, 2, 4, 6, 7, 8, 0, 3, 9, 5], list(range(NUM_CLASSES))]


def indices(elements: list[bytes], k: int) -> list[list[int]]:
    """The class index of each "value:index:label" element, per image."""
    flat = [int(e.split(b":")[1]) for e in elements]
    return [flat[i : i + k] for i in range(0, len(flat), k)]


def ranked(logits: np.ndarray, k: int) -> list[list[int]]:
    labels = [f"class{i}" for i in range(logits.shape[1])]
    out = infer._classification(RequestedOutput("logits", classification=k), logits, labels)
    assert out.datatype == BYTES and out.shape == (len(logits), k)
    return indices(out.data, k)


def test_equal_logits_rank_the_lower_class_index_first():
    assert ranked(TIED, NUM_CLASSES) == TIED_ORDER
    # Cut inside a tie: the top 3 of four equal classes are the three lowest.
    assert ranked(TIED, 3) == [[1, 2, 4], [0, 1, 2]]


def test_ties_keep_index_order_among_a_thousand_classes():
    # ImageNet's size and few distinct values: long runs of ties, which an unstable sort
    # (numpy's default, introsort or SIMD by CPU) scrambles whatever its small-array path does.
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, size=(3, 1000)).astype(np.float32)  # 3, 1000
    for row, order in zip(logits, ranked(logits, 1000), strict=True):
        assert order == sorted(range(1000), key=lambda i: (-row[i], i))


async def test_ties_through_the_http_request_path(make_app, make_engine, serve):
    engine = make_engine()
    real = engine.outputs_for

    def tied(batch: np.ndarray) -> dict[str, np.ndarray]:
        # Per image, not per batch position: zeros get TIED[0], ones TIED[1].
        which = (batch.mean(axis=(1, 2, 3)) > 0.5).astype(int)  # N
        return {**real(batch), "logits": TIED[which]}

    engine.outputs_for = tied  # a model whose logits tie, behind the real routes and batcher
    pixels = np.stack([np.zeros((3, SIZE, SIZE)), np.ones((3, SIZE, SIZE))])  # 2, 3, S, S
    body = {
        "inputs": [
            {
                "name": "pixel_values",
                "datatype": "FP32",
                "shape": [2, 3, SIZE, SIZE],
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": NUM_CLASSES}}],
    }
    async with serve(make_app(engine)) as client:
        resp = await client.post(INFER, json=body)
    assert resp.status_code == 200, resp.text
    (output,) = resp.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2, NUM_CLASSES]
    assert indices([e.encode() for e in output["data"]], NUM_CLASSES) == TIED_ORDER

"""SWIN_PRECISION=auto in a real ``swin-serve``: whatever this machine gets, the card, the
Open Inference Protocol's metadata (HTTP and gRPC) and the log all say it, and say why."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from swin_serve.server.runtime.engines import machine
from swin_serve.server.runtime.precision import int8_sibling, plan
from swin_serve.server.settings import Settings
from swin_serve.server.v2 import messages
from tests.support.live_server import LiveServer, start_server


@pytest.fixture(scope="module")
def model(tiny_variants, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auto") / "micro.onnx"
    shutil.copy(tiny_variants.model_path, path)
    shutil.copy(tiny_variants.files["int8"], int8_sibling(path))
    return path


@pytest.fixture(scope="module")
def server(model, tmp_path_factory) -> Iterator[LiveServer]:
    log_dir = tmp_path_factory.mktemp("auto-log")
    with start_server(log_dir, model_path=model, precision="auto") as server:
        yield server


def name(server) -> str:
    """A one-file server names its model by its manifest."""
    return httpx.get(f"{server.base}/v1/models", timeout=10).json()["default_model"]


def expected(model: Path):
    """What auto must choose here, from this machine as the plan reads it."""
    return plan("auto", "auto", model, "fp32", machine(Settings(providers="cpu")))


def test_the_card_says_what_runs_and_why(server, model):
    want = expected(model)
    card = httpx.get(f"{server.base}/v1/models/{name(server)}", timeout=10).json()
    assert (card["precision"], card["engine"]) == (want.precision, want.engine)
    assert card["exported_precision"] == "fp32"
    assert card["precision_reason"] == want.reason
    assert card["served_file"]["path"] == str(want.path)
    assert card["self_check"]["status"] == "passed"
    assert card["self_check"]["precision"] == want.precision
    assert card["layout"]["name"] in ("wide", "narrow", "hybrid")
    assert card["batching"]["parallel_batches"] == card["layout"]["parallel_runs"]
    index = httpx.get(f"{server.base}/v1/models", timeout=10).json()
    assert index["models"][0]["precision"] == want.precision


def test_the_v2_metadata_says_it_over_http_and_grpc(server, model):
    want = expected(model)
    http_meta = httpx.get(f"{server.base}/v2/models/{name(server)}", timeout=10).json()
    http = http_meta["parameters"]
    assert http_meta["platform"] == (
        "openvino" if want.engine == "openvino" else "onnxruntime_onnx"
    )
    # Our own message: Triton's lacks the optional parameters field (tests/server/v2/test_grpc.py).
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary(
            f"/{messages.SERVICE}/ModelMetadata",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.response_type("ModelMetadata").FromString,
        )
        reply = call(messages.request_type("ModelMetadata")(name=name(server)), timeout=10)
    by_grpc = {k: v.string_param for k, v in reply.parameters.items()}
    for parameters in (http, by_grpc):
        assert parameters["precision"] == want.precision
        assert parameters["precision_reason"] == want.reason
        assert parameters["engine"] == want.engine
        assert parameters["cpu_layout"] in ("wide", "narrow", "hybrid")


def test_a_reduced_precision_is_logged_at_warning(server, model):
    want = expected(model)
    if want.precision == "fp32":
        pytest.skip("this machine serves fp32 under auto")
    # The server logs at WARNING here, so the line is there only because it is a warning.
    assert f"micro.onnx: serving {want.precision} on {want.engine}" in server.log()
    assert "SWIN_PRECISION=fp32 serves it unchanged" in server.log()


def test_it_classifies(server):
    with open(Path(__file__).parents[3] / "samples" / "images" / "flower.jpg", "rb") as f:
        response = httpx.post(f"{server.base}/classify", files={"file": f}, timeout=30)
    assert response.status_code == 200 and response.json()["results"][0]

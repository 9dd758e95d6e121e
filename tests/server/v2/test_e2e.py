"""The Open Inference Protocol end to end: a real ``swin-serve`` process serving the micro
model over HTTP and gRPC, driven by Triton's own clients (tritonclient.http and .grpc), checked
against /classify on the same server and against ONNX Runtime run here on the same tensors."""

from __future__ import annotations

import json
import queue
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support import assert_same_predictions, metric, sample_images
from tests.support.live_server import LiveServer, start_server
from tests.support.v2 import V2Client, parse_classification, predictions, torchvision_preprocess

# Refused by design (tests/server/http/test_e2e.py pins how); every other sample is served.
BAD_SAMPLES = {"broken.png", "truncated_end_chunk.png", "decompression_bomb.gif"}
# Plain RGB files too small for the server's JPEG draft decode: here the server's preprocessing
# and torchvision's must give the same pixels. (Others legitimately differ: a large JPEG is decoded
# at reduced DCT scale, transparency is composited on white, EXIF orientation is applied.)
PLAIN_RGB = ["hopper.jpg", "flower2.jpg", "hopper.png", "hopper.webp", "hopper.bmp"]

# The same tensors through different batch compositions (and so different BLAS kernel choices)
# agree to float32 rounding, a few ulp; these bounds are ~30x that and far below the ~1e-2 by
# which the logits move when a decode differs by one grey level.
RTOL, ATOL = 1e-4, 1e-5

KINDS = ["grpc", "http-binary", "http-json"]


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory) -> Iterator[LiveServer]:
    with start_server(tmp_path_factory.mktemp("v2-e2e"), model_path=tiny_model_path) as server:
        yield server


@pytest.fixture(scope="module")
def session(tiny_model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(tiny_model_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def manifest(session: ort.InferenceSession) -> dict[str, Any]:
    """The artefact's own manifest, read from the ONNX file (not from the server)."""
    return json.loads(session.get_modelmeta().custom_metadata_map["swin.manifest"])


@pytest.fixture(scope="module")
def model(manifest) -> str:
    return manifest["name"]


@pytest.fixture(scope="module")
def clients(server: LiveServer) -> Iterator[dict[str, V2Client]]:
    http = httpclient.InferenceServerClient(server.base.removeprefix("http://"))
    grpc = grpcclient.InferenceServerClient(server.grpc_address)
    yield {
        "grpc": V2Client("grpc", grpc),
        "http-binary": V2Client("http-binary", http, binary=True),
        "http-json": V2Client("http-json", http, binary=False),
    }
    http.close()
    grpc.close()


@pytest.fixture(params=KINDS)
def client(request, clients) -> V2Client:
    return clients[request.param]


@pytest.fixture(params=["grpc", "http-binary"])
def protocol(request, clients) -> V2Client:
    """One client per protocol, for what does not depend on the tensor encoding."""
    return clients[request.param]


@pytest.fixture(scope="module")
def served_files(images_dir: Path) -> list[Path]:
    """Every sample the server decodes (palette, CMYK, RGBA, EXIF-rotated, drafted JPEG...)."""
    return [p for p in sample_images(images_dir) if p.name not in BAD_SAMPLES]


def _read(paths: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in paths]


# -- health and metadata --------------------------------------------------------------------------


def test_live_ready_and_model_ready(protocol, model):
    client = protocol.client
    assert client.is_server_live() is True
    assert client.is_server_ready() is True
    assert client.is_model_ready(model) is True
    assert client.is_model_ready(model, model_version="1") is True


def test_server_metadata_names_the_extensions(protocol):
    meta = protocol.client.get_server_metadata(**({} if protocol.is_http else {"as_json": True}))
    assert meta["name"] == "swin-serve" and meta["version"]
    assert {"binary_tensor_data", "classification"} <= set(meta["extensions"])


def test_model_metadata_matches_the_artefacts_manifest(protocol, model, manifest):
    meta = protocol.client.get_model_metadata(
        model, **({} if protocol.is_http else {"as_json": True})
    )
    size = manifest["config"]["img_size"]

    def tensors(entries):  # gRPC's JSON renders int64 dims as strings
        return {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in entries}

    assert meta["name"] == model and meta["versions"] == ["1"]
    assert tensors(meta["inputs"]) == {
        "image": ("BYTES", [-1]),
        "pixel_values": ("FP32", [-1, 3, size, size]),
    }
    assert tensors(meta["outputs"]) == {
        name: ("FP32", [-1, *dims[1:]]) for name, dims in manifest["outputs"].items()
    }


# -- BYTES images ---------------------------------------------------------------------------------


def test_image_batch_gives_the_predictions_of_classify(
    client, server, model, manifest, served_files
):
    files = _read(served_files)
    result = client.infer(model, [client.images(files)], outputs=["logits"])
    logits = result.as_numpy("logits")
    assert logits.shape == (len(files), manifest["config"]["num_classes"])
    resp = httpx.post(
        f"{server.base}/classify?top_k=5", files=[("file", f) for f in files], timeout=30
    )
    assert resp.status_code == 200, resp.text
    # Probabilities: SCORE_ATOL (tests/support/__init__.py) bounds float32 batch-rounding differences.
    assert_same_predictions(predictions(logits, manifest["labels"], 5), resp.json()["results"])


def test_named_outputs_come_back_alone_with_the_manifests_shapes(
    client, model, manifest, images_dir
):
    files = _read([images_dir / "hopper.jpg", images_dir / "flower.jpg", images_dir / "hopper.gif"])
    names = ["embedding", "stage1", "stage4"]
    result = client.infer(model, [client.images(files)], outputs=names)
    assert client.output_datatypes(result) == dict.fromkeys(names, "FP32")
    for name in names:
        value = result.as_numpy(name)
        assert value.dtype == np.float32 and np.isfinite(value).all()
        assert value.shape == (3, *manifest["outputs"][name][1:])


def test_every_output_comes_back_when_none_is_named(client, model, manifest, images_dir):
    result = client.infer(model, [client.images(_read([images_dir / "hopper.png"]))])
    assert client.output_datatypes(result) == dict.fromkeys(manifest["outputs"], "FP32")
    for name, dims in manifest["outputs"].items():
        assert result.as_numpy(name).shape == (1, *dims[1:])


# -- FP32 pixel_values ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixels(server, images_dir) -> np.ndarray:
    """PLAIN_RGB preprocessed here, as the served model's /v1/models spec says: (N, 3, S, S)."""
    spec = httpx.get(f"{server.base}/v1/models", timeout=5).json()["preprocess"]
    return np.stack([torchvision_preprocess(images_dir / name, spec) for name in PLAIN_RGB])


def test_pixel_values_give_what_onnx_runtime_gives(client, model, session, pixels):
    names = [o.name for o in session.get_outputs()]
    # Named, so that each comes back in the client's encoding (unnamed, tritonclient asks for
    # binary).
    result = client.infer(model, [client.pixels(pixels)], outputs=names)
    want = dict(zip(names, session.run(None, {"pixel_values": pixels}), strict=True))
    for name in names:
        np.testing.assert_allclose(result.as_numpy(name), want[name], rtol=RTOL, atol=ATOL)


def test_pixel_values_match_the_same_files_sent_as_images(client, model, pixels, images_dir):
    """The server's decoder and torchvision's recipe (written here) make the same tensor, up to
    the float32 rounding of the normalisation, which moves logits by ~1e-7."""
    from_pixels = client.infer(model, [client.pixels(pixels)], outputs=["logits"])
    files = _read([images_dir / name for name in PLAIN_RGB])
    from_files = client.infer(model, [client.images(files)], outputs=["logits"])
    np.testing.assert_allclose(
        from_pixels.as_numpy("logits"), from_files.as_numpy("logits"), rtol=RTOL, atol=ATOL
    )


# -- the classification extension -----------------------------------------------------------------


def test_classification_gives_the_top_logits_as_value_index_label(
    client, model, manifest, served_files
):
    k = 7
    files = _read(served_files[:4])
    logits = client.infer(model, [client.images(files)], outputs=["logits"]).as_numpy("logits")
    result = client.client.infer(
        model, [client.images(files)], outputs=[client.output("logits", class_count=k)]
    )
    assert client.output_datatypes(result) == {"logits": "BYTES"}
    top = result.as_numpy("logits")
    assert top.shape == (len(files), k)
    for row, scores in zip(top, logits, strict=True):
        parsed = [parse_classification(e) for e in row]
        values = [v for v, _, _ in parsed]
        assert values == sorted(values, reverse=True)
        for value, index, label in parsed:
            # "%f" keeps 6 decimals (5e-7), on top of batch rounding.
            assert value == pytest.approx(scores[index], abs=ATOL)
            assert label == manifest["labels"][index]
        # The k highest logits, up to near-ties that rounding may order either way.
        indices = {i for _, i, _ in parsed}
        assert set(np.flatnonzero(scores > values[-1] + ATOL)) <= indices
        assert indices <= set(np.flatnonzero(scores >= values[-1] - ATOL))


# -- errors ---------------------------------------------------------------------------------------


def _photo(c: V2Client, d: Path, n: int = 1) -> list[Any]:
    return [c.images([(d / "hopper.jpg").read_bytes()] * n)]


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


def _nan_pixels(c: V2Client, d: Path) -> list[Any]:
    x = _zeros(1, 3, 64, 64)
    x[0, 1, 2, 3] = np.nan
    return [c.pixels(x)]


# name: (the infer call's arguments from (client, images_dir), HTTP status, the server's words)
ERRORS: dict[str, tuple[Callable[[V2Client, Path], dict[str, Any]], int, str]] = {
    "unknown model": (
        lambda c, d: {"model_name": "no_such_model", "inputs": _photo(c, d)},
        404,
        "unknown model 'no_such_model'",
    ),
    "unknown version": (
        lambda c, d: {"model_version": "2", "inputs": _photo(c, d)},
        404,
        "has no version '2'",
    ),
    "unknown input": (
        lambda c, d: {"inputs": [c.tensor("pixels", _zeros(1, 3, 64, 64), "FP32")]},
        400,
        "unknown input 'pixels'",
    ),
    "wrong datatype": (
        lambda c, d: {"inputs": [c.tensor("image", _zeros(2), "FP32")]},
        400,
        "input 'image' is BYTES, got 'FP32'",
    ),
    "wrong shape": (
        lambda c, d: {"inputs": [c.pixels(_zeros(1, 3, 32, 32))]},
        400,
        "shape must be [N, 3, 64, 64]",
    ),
    "undecodable image": (
        lambda c, d: {"inputs": [c.images([(d / "broken.png").read_bytes()])]},
        400,
        "not a decodable image",
    ),
    "too many images": (
        lambda c, d: {"inputs": _photo(c, d, 17)},
        400,
        "batch of 17; send 1 to 16 images",
    ),
    "NaN pixels": (lambda c, d: {"inputs": _nan_pixels(c, d)}, 400, "NaN or infinite"),
    "unknown output": (
        lambda c, d: {"inputs": _photo(c, d), "outputs": [c.output("logitz")]},
        400,
        "unknown output 'logitz'",
    ),
    "classification of a feature map": (
        lambda c, d: {"inputs": _photo(c, d), "outputs": [c.output("stage1", class_count=3)]},
        400,
        "classification applies to 'logits'",
    ),
}
GRPC_CODES = {400: "StatusCode.INVALID_ARGUMENT", 404: "StatusCode.NOT_FOUND"}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_reach_the_client_with_the_servers_status_and_message(
    case, client, model, images_dir
):
    call, status, words = ERRORS[case]
    with pytest.raises(InferenceServerException) as err:
        client.client.infer(**{"model_name": model, **call(client, images_dir)})
    expected = str(status) if client.is_http else GRPC_CODES[status]
    assert err.value.status() == expected, err.value  # never a 5xx / INTERNAL
    assert words in err.value.message()


def test_bytes_in_json_must_be_base64(clients, model):
    """tritonclient sends a JSON BYTES element as the text it is given: it must be base64."""
    client = clients["http-json"]
    not_base64 = np.array([b"not base64 at all!"], dtype=np.object_)
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, [client.tensor("image", not_base64, "BYTES")])
    assert err.value.status() == "400"
    assert "base64" in err.value.message()


def test_the_server_still_serves_after_the_errors(clients, model, images_dir):
    for client in clients.values():
        result = client.infer(model, _photo(client, images_dir), outputs=["logits"])
        assert result.as_numpy("logits").shape == (1, 1000)


# -- deadlines ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_batch(images_dir) -> list[bytes]:
    """16 images (the per-request maximum) whose decoding alone takes several milliseconds: a
    1 ms deadline, counted from the request's arrival, has passed before they reach the queue,
    so the batcher answers them DeadlineExceeded however idle it is."""
    return [(images_dir / "flower2.jpg").read_bytes()] * 16


def test_a_one_millisecond_deadline_is_answered_deadline_exceeded(
    clients, server, model, slow_batch
):
    http, grpc = clients["http-binary"], clients["grpc"]
    before = server.metrics()
    with pytest.raises(InferenceServerException) as over_http:
        http.infer(model, [http.images(slow_batch)], headers={"X-Request-Timeout-Ms": "1"})
    with pytest.raises(InferenceServerException) as over_grpc:
        grpc.infer(model, [grpc.images(slow_batch)], headers={"x-request-timeout-ms": "1"})
    after = server.metrics()
    assert over_http.value.status() == "503"
    assert over_grpc.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    for err in (over_http, over_grpc):
        assert "deadline exceeded" in err.value.message()
    reason = {"reason": "deadline_exceeded"}
    rejected = metric(after, "swin_rejections_total", **reason)
    assert rejected == 2 + metric(before, "swin_rejections_total", **reason)
    # gRPC's own deadline: the client or the server ends the call, whichever sees it pass first
    # (so this one is not counted above); either way it is DEADLINE_EXCEEDED.
    with pytest.raises(InferenceServerException) as own_deadline:
        grpc.infer(model, [grpc.images(slow_batch)], client_timeout=0.001)
    assert own_deadline.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_a_generous_deadline_is_no_obstacle(clients, model, slow_batch):
    http, grpc = clients["http-binary"], clients["grpc"]
    got = http.infer(model, [http.images(slow_batch)], headers={"X-Request-Timeout-Ms": "60000"})
    assert got.as_numpy("logits").shape[0] == 16
    got = grpc.infer(model, [grpc.images(slow_batch)], client_timeout=60.0)
    assert got.as_numpy("logits").shape[0] == 16


# -- one batcher, one set of metrics --------------------------------------------------------------


def test_v2_calls_are_counted_with_the_other_requests(clients, server, model, served_files):
    files = _read(served_files[:3])
    before = server.metrics()
    for kind in KINDS:
        client = clients[kind]
        client.infer(model, [client.images(files)], outputs=["logits"])
    after = server.metrics()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("swin_images_total", model=model, outcome="ok") == 3 * len(files)
    assert delta("swin_grpc_requests_total", method="ModelInfer", code="OK") == 1
    assert delta("swin_requests_total", endpoint="/v2/models/{name}/infer", status="200") == 2


# -- drain ----------------------------------------------------------------------------------------


def test_sigterm_finishes_an_in_flight_grpc_call_refuses_new_ones_and_exits_zero(
    tiny_model_path, tmp_path, images_dir, model
):
    # Batches wait up to 1 s (the most allowed) for more images: the call below stays queued that
    # long, well past the moment the test signals.
    drained = start_server(
        tmp_path, model_path=tiny_model_path, max_batch_size=32, max_batch_delay_ms=1000
    )
    in_flight = grpcclient.InferenceServerClient(drained.grpc_address)
    late = V2Client("grpc", grpcclient.InferenceServerClient(drained.grpc_address))
    try:
        assert late.client.is_server_ready()  # its connection is open before the signal
        answers: queue.Queue = queue.Queue()
        files = [(images_dir / "hopper.jpg").read_bytes()] * 16
        in_flight.async_infer(
            model,
            [V2Client("grpc", in_flight).images(files)],
            callback=lambda result, error: answers.put((time.monotonic(), result, error)),
        )
        # An image counted as decoded is in the batcher's hands (the same event-loop step).
        _poll(lambda: _decoded(drained, model) >= len(files), "the call's images to be queued")
        signalled = time.monotonic()
        drained.proc.send_signal(signal.SIGTERM)
        # ServerReady turns false in the event-loop step that begins the drain.
        _poll(lambda: not late.client.is_server_ready(), "the drain to begin")
        with pytest.raises(InferenceServerException) as new_call:
            late.infer(model, [late.images(files[:1])])
        assert new_call.value.status() == "StatusCode.UNAVAILABLE"
        assert "shutting down" in new_call.value.message()
        assert answers.empty()  # refused at once, while the first call is still in flight
        answered, result, error = answers.get(timeout=15)
        assert error is None, error
        assert answered > signalled
        assert result.as_numpy("logits").shape == (16, 1000)
        assert drained.proc.wait(timeout=15) == 0, drained.log()
        assert not _listens(drained.grpc_address)
    finally:
        in_flight.close()
        late.client.close()
        drained.stop()


def _decoded(server: LiveServer, model: str) -> float:
    return metric(server.metrics(), "swin_decode_seconds_count", model=model)


def _listens(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def _poll(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)

"""The engines on a synthetic ONNX graph built here with onnx.helper (no torch, no exporter).

The graph has the contract's interface (pixel_values -> logits, embedding, stage1..4) and carries
the same manifest as FakeEngine, so engine and app can be tested on real runtimes even without
the exported Swin fixture. The tests of the engine contract run on every engine and precision
this machine has (``kind``): ONNX Runtime, OpenVINO fp32, and OpenVINO bf16 where the CPU runs
it natively.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from swin_serve.server.http.app import create_app
from swin_serve.server.runtime.engine import EngineError, ModelLoadError, OnnxEngine
from tests.support.live_server import start_server

pytestmark = pytest.mark.anyio


def build_synthetic_model(path: Path, manifest_json: str | None) -> Path:
    """Strided convs 3 -> 8 -> 16 -> 32 -> 64 channels on a 32x32 input; GAP; linear head to 10."""
    rng = np.random.default_rng(0)
    chans, kernels = [3, 8, 16, 32, 64], [4, 2, 2, 2]
    nodes, inits, prev = [], [], "pixel_values"
    for i, k in enumerate(kernels):
        w = rng.normal(scale=0.3, size=(chans[i + 1], chans[i], k, k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i + 1}"))
        nodes.append(
            helper.make_node(
                "Conv", [prev, f"w{i + 1}"], [f"stage{i + 1}"], kernel_shape=[k, k], strides=[k, k]
            )
        )
        prev = f"stage{i + 1}"
    nodes.append(helper.make_node("GlobalAveragePool", ["stage4"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["embedding"], axis=1))
    inits.append(numpy_helper.from_array(rng.normal(size=(64, 10)).astype(np.float32), "head"))
    nodes.append(helper.make_node("MatMul", ["embedding", "head"], ["logits"]))
    shapes = {
        "stage1": [8, 8, 8],
        "stage2": [16, 4, 4],
        "stage3": [32, 2, 2],
        "stage4": [64, 1, 1],
        "embedding": [64],
        "logits": [10],
    }
    outputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *s])
        for n, s in shapes.items()
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if manifest_json is not None:
        helper.set_model_props(model, {"swin.manifest": manifest_json})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def synthetic_model(tmp_path, manifest) -> Path:
    return build_synthetic_model(tmp_path / "synthetic.onnx", manifest.model_dump_json())


def _settings(path: Path, **kw):
    from swin_serve.server.settings import Settings

    return Settings(
        model_path=path, providers="cpu", max_batch_size=4, max_images_per_request=4, **kw
    )


def _native_bf16() -> bool:
    from swin_serve.server.runtime.openvino_engine import native_bf16

    return native_bf16()


# Each engine and precision: its settings, its provider, and how close a batch is to its singles
# (bf16 rounds every product to 8 bits of mantissa; OpenVINO may block a batch differently).
KINDS = {
    "onnxruntime": ({"precision": "fp32"}, "CPUExecutionProvider", 1e-4),
    "openvino-fp32": ({"precision": "fp32", "engine": "openvino"}, "OpenVINO CPU", 1e-4),
    "openvino-bf16": ({"precision": "bf16"}, "OpenVINO CPU", 3e-2),
}


@pytest.fixture(params=list(KINDS))
def kind(request) -> tuple[dict, str, float]:
    if request.param == "openvino-bf16" and not _native_bf16():
        pytest.skip("this CPU has no native bfloat16 (AVX-512 BF16 or AMX)")
    return KINDS[request.param]


def _open(path: Path, kind, **kw):
    from swin_serve.server.runtime.engines import open_engine

    return open_engine(_settings(path, **kind[0], **kw))


def test_engine_loads_manifest_and_reports_cpu_provider(synthetic_model, kind):
    engine = _open(synthetic_model, kind)
    assert engine.provider == kind[1]
    assert engine.manifest.name == "fake_swin_32"
    assert set(engine.output_names) == {
        "logits",
        "embedding",
        "stage1",
        "stage2",
        "stage3",
        "stage4",
    }


def test_cpu_session_is_one_pool_of_every_cpu_that_sleeps_when_idle(synthetic_model):
    # Parallel batches share this one session: its pool has a thread per CPU (a lone batch uses
    # them all), idle threads sleep rather than spin (runs side by side need the cores), and
    # no per-shape memory block is planned (overlapping runs would each hold one).
    from swin_serve.server.settings import available_cpus

    options = OnnxEngine.load(_settings(synthetic_model, parallel_batches=2))._session
    options = options.get_session_options()
    assert options.intra_op_num_threads == available_cpus()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.enable_mem_pattern is False
    alone = OnnxEngine.load(_settings(synthetic_model, parallel_batches=1, intra_op_threads=1))
    options = alone._session.get_session_options()
    assert options.intra_op_num_threads == 1
    with pytest.raises(RuntimeError, match="allow_spinning"):  # unset: ORT's default, spinning
        options.get_session_config_entry("session.intra_op.allow_spinning")


def test_a_cuda_session_that_falls_back_to_the_cpu_gets_the_cpus_options(
    synthetic_model, monkeypatch
):
    # As on a GPU host whose CUDA provider cannot start: ORT runs the session on the CPU, where
    # the batcher will run batches side by side, so the options must be the CPU's.
    from swin_serve.server.runtime import providers
    from swin_serve.server.settings import Settings

    monkeypatch.setattr(
        providers, "choose", lambda *a: providers.Choice(True, "CUDA offered (test)")
    )
    settings = Settings(model_path=synthetic_model, providers="auto", parallel_batches=2)
    engine = OnnxEngine.load(settings)
    options = engine._session.get_session_options()
    assert engine.provider == "CPUExecutionProvider"
    assert "did not start" in (engine.provider_warning or "")
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.enable_mem_pattern is False


def test_engine_runs_all_outputs_and_batch_equals_singles(synthetic_model, kind):
    engine = _open(synthetic_model, kind)
    x = np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32)
    out = engine.run(x)
    assert out["logits"].shape == (3, 10) and out["stage1"].shape == (3, 8, 8, 8)
    assert out["embedding"].shape == (3, 64) and all(v.dtype == np.float32 for v in out.values())
    tol = kind[2]
    for i in range(3):
        single = engine.run(x[i : i + 1])
        for name in out:
            scale = np.abs(out[name][i]).max()
            np.testing.assert_allclose(single[name][0], out[name][i], rtol=tol, atol=tol * scale)
    engine.warmup([1, 2, 4])


def test_every_lane_of_a_hybrid_layout_gives_the_same_answers(synthetic_model, kind):
    engine = _open(synthetic_model, kind, cpu_layout="hybrid")
    lanes = engine.runners()
    x = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    if len(lanes) == 1:
        pytest.skip("one CPU: one lane")
    assert engine.layout.name == "hybrid" and set(lanes) == {"wide", "narrow"}
    wide, narrow = lanes["wide"](x), lanes["narrow"](x)
    for name in wide:
        scale = np.abs(wide[name]).max()
        np.testing.assert_allclose(narrow[name], wide[name], rtol=kind[2], atol=kind[2] * scale)


def test_the_calibrated_layout_says_what_it_timed(synthetic_model, kind):
    from swin_serve.server.settings import available_cpus

    engine = _open(synthetic_model, kind)
    layout = engine.layout
    if available_cpus() == 1:
        assert layout.name == "wide"
        return
    assert layout.name in ("wide", "narrow", "hybrid")
    assert set(layout.figures) == {
        "lone_wide_ms",
        "lone_narrow_ms",
        "loaded_narrow_img_s",
        "loaded_wide_img_s",
    }
    assert all(v > 0 for v in layout.figures.values())
    assert re.match(r"a lone run [\d.]+ ms wide, [\d.]+ ms narrow; under load", layout.reason)
    assert layout.parallel_runs == (1 if layout.name == "wide" else min(available_cpus(), 4))


def test_run_error_is_an_engine_error_and_the_session_stays_usable(synthetic_model, kind):
    engine = _open(synthetic_model, kind)
    with pytest.raises(EngineError) as err:
        engine.run(np.zeros((1, 3, 31, 31), np.float32))  # wrong size
    assert type(err.value) is EngineError  # not fatal
    assert engine.run(np.zeros((1, 3, 32, 32), np.float32))["logits"].shape == (1, 10)


def test_model_without_manifest_is_refused_clearly(tmp_path, kind):
    path = build_synthetic_model(tmp_path / "bare.onnx", None)
    with pytest.raises(ModelLoadError, match=r"swin\.manifest"):
        _open(path, kind)


def test_missing_model_file_names_the_path(tmp_path, kind):
    with pytest.raises(ModelLoadError, match=r"nope\.onnx"):
        _open(tmp_path / "nope.onnx", kind)


def test_cuda_requested_without_cuda_is_a_clear_error(synthetic_model):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        OnnxEngine.load(_settings(synthetic_model).model_copy(update={"providers": "cuda"}))


async def test_app_serves_the_onnx_model_end_to_end(synthetic_model, serve, pngs, kind):
    app = create_app(_settings(synthetic_model, **kind[0]))
    async with serve(app) as client:
        models = (await client.get("/v1/models")).json()
        resp = await client.post("/classify?top_k=2", files=[("file", im) for im in pngs(2)])
        feats = await client.post("/features?stages=stage2&pool=none", files={"file": pngs(1)[0]})
    assert models["provider"] == kind[1]
    assert models["precision"] == kind[0]["precision"] and models["layout"]["name"]
    assert resp.status_code == 200 and len(resp.json()["results"]) == 2
    assert np.asarray(feats.json()["results"][0]["stage2"]).shape == (16, 4, 4)


def test_sigterm_drains_in_flight_requests_and_exits_zero(synthetic_model, pngs, tmp_path):
    """The real process: readiness 503 at once, accepted requests all 200, exit status 0."""
    # Requests sit queued for up to 1 s: long enough to be caught there by SIGTERM.
    server = start_server(tmp_path, model_path=synthetic_model, max_batch_delay_ms=1000)
    proc, base = server.proc, server.base
    try:
        images = pngs(12)
        codes: list[int | str] = []

        def post(data: bytes) -> None:
            try:
                resp = httpx.post(f"{base}/classify", files={"file": data}, timeout=10)
                codes.append(resp.status_code)
            except httpx.TransportError as exc:
                codes.append(type(exc).__name__)

        def decoded() -> float:
            # Decoded images go straight to the batcher, where they wait for the batch delay.
            text = httpx.get(f"{base}/metrics", timeout=1).text
            line = next(
                ln for ln in text.splitlines() if ln.startswith("swin_decode_seconds_count")
            )
            return float(line.split()[1])

        threads = [threading.Thread(target=post, args=(im,)) for im in images]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 0.7
        while decoded() < len(images) and time.monotonic() < deadline:
            time.sleep(0.02)
        queued = decoded()
        assert queued >= 1
        proc.send_signal(signal.SIGTERM)
        # New connections are refused once uvicorn's main loop sees the signal (it ticks every
        # 100 ms): poll rather than sleep a fixed time shorter than that tick.
        refused = False
        for _ in range(50):
            try:
                httpx.get(f"{base}/healthz", timeout=1)
            except httpx.TransportError:
                refused = True
                break
            time.sleep(0.01)
        assert refused
        for t in threads:
            t.join(timeout=15)
        rc = proc.wait(timeout=15)
    finally:
        server.stop()
    assert rc == 0, server.log()
    # Every request that was queued at SIGTERM completed; any other one either completed too or
    # was refused at the connection level (the client may retry elsewhere). Never a 5xx.
    assert codes.count(200) >= queued, (queued, codes)
    assert all(c == 200 or isinstance(c, str) for c in codes), codes


def test_every_engine_gives_onnx_runtimes_fp32_answers_within_its_precision(synthetic_model, kind):
    """An engine that ran another precision than it says (OpenVINO's own default on a bf16 CPU
    is bf16) would be outside fp32's bound here."""
    import onnxruntime as ort

    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(synthetic_model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, {"pixel_values": x}), strict=True))
    got = _open(synthetic_model, kind).run(x)
    tol = kind[2]
    for name, want in expected.items():
        scale = np.abs(want).max()
        np.testing.assert_allclose(got[name], want, rtol=0, atol=tol * scale, err_msg=name)
    if kind[0]["precision"] == "bf16":  # and bf16 really is not fp32
        assert (
            max(np.abs(got[n] - expected[n]).max() / np.abs(expected[n]).max() for n in names)
            > 1e-4
        )


def test_warm_up_reaches_every_lane_and_every_run_slot_of_the_narrow_one(synthetic_model, kind):
    from swin_serve.server.runtime.layout import Lanes

    engine = _open(synthetic_model, kind, cpu_layout="hybrid")
    lanes = engine._lanes.runners()
    if len(lanes) == 1:
        pytest.skip("one CPU: one lane")
    seen: dict[str, list[int]] = {"wide": [], "narrow": []}

    def counted(name):
        return lambda feed: seen[name].append(len(feed)) or lanes[name](feed)

    engine._lanes = Lanes(counted("wide"), counted("narrow"))
    engine.warmup([1, 2])
    assert seen["wide"] == [1, 2]
    assert seen["narrow"] == [1] * engine.layout.narrow.runs + [2] * engine.layout.narrow.runs


@pytest.mark.parametrize(("setting", "spins"), [("auto", False), ("off", False), ("on", True)])
def test_the_lanes_sessions_take_the_spinning_and_inter_op_settings(
    synthetic_model, monkeypatch, setting, spins
):
    from swin_serve.server.runtime import engine as engine_module

    seen = []
    real = engine_module.session_options

    def recording(**kw):
        seen.append(kw)
        return real(**kw)

    monkeypatch.setattr(engine_module, "session_options", recording)
    OnnxEngine.load(_settings(synthetic_model, intra_op_spinning=setting, inter_op_threads=2))
    lanes = [kw for kw in seen if kw["memory_pattern"] is False and "spinning" in kw][1:]
    assert lanes and all(kw["spinning"] is spins and kw["inter_op_threads"] == 2 for kw in lanes)

"""The model repository in process: names, the default, states, and reloads (added, replaced,
removed, broken, refused, half-written), on fake engines.

Each model file here holds a line such as ``labels=new delay=0.2``: the fake opener turns it into
a FakeEngine whose labels start with that word, so that an answer tells which file served it.
tests/server/repository/test_repository_live.py does the same on the real server and real models.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as tritongrpc_aio
from pydantic import ValidationError

from swin_serve.server.http.app import create_app
from swin_serve.server.runtime.engine import ModelLoadError
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.settings import Settings
from tests.support import free_port, metric, parse_metrics, settle, until
from tests.support.fakes import FakeEngine, default_model, image_bytes, running, tiny_manifest

pytestmark = pytest.mark.anyio

_SETTINGS: dict[str, Any] = {
    "max_batch_size": 4,
    "max_batch_delay_ms": 5,
    "max_upload_bytes": 1024 * 1024,
    "max_image_pixels": 1_000_000,
    "max_images_per_request": 8,
    "decode_threads": 2,
    "grpc_port": 0,
}


OPENING = threading.Event()  # set by the opener of a file that says ``gate``
GATE = threading.Event()  # ... which then waits for it


def fake_opener(file: ModelFile) -> FakeEngine:
    """A FakeEngine as the file describes it; ``broken`` anywhere in it fails the load, ``vanish``
    removes the file while it loads, ``gate`` holds the load until GATE is set."""
    path = file.path
    assert file.data is not None, f"{path}: the loader reads every repository file it opens"
    text = file.data.decode()
    if "broken" in text:
        raise ModelLoadError(f"cannot load ONNX model {path}: INVALID_PROTOBUF")
    if "vanish" in text:
        path.unlink()
        raise ModelLoadError(f"model file not found: {path}")
    if "gate" in text:
        OPENING.set()
        assert GATE.wait(10)
    spec = dict(word.split("=", 1) for word in text.split() if "=" in word)
    labels = tuple(f"{spec.get('labels', 'class')}{i}" for i in range(10))
    manifest = tiny_manifest().model_copy(update={"labels": labels})
    return FakeEngine(manifest=manifest, delay_s=float(spec.get("delay", 0)))


def publish(repo: Path, name: str, text: str) -> None:
    """Write ``text`` as model ``name`` the supported way: a hidden file renamed into place,
    dated a minute back so that it counts as settled at once."""
    tmp = repo / f".{name}.onnx.tmp"
    tmp.write_text(text)
    os.replace(settle(tmp), repo / f"{name}.onnx")


def make_repo_app(repo: Path, **overrides: Any):
    settings = Settings(model_repository=repo, **{**_SETTINGS, **overrides})
    return create_app(settings, opener=fake_opener)


async def classify(client, name: str | None = None):
    path = "/classify" if name is None else f"/v1/models/{name}/classify"
    return await client.post(f"{path}?top_k=1", files={"file": image_bytes()})


def top_label(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["predictions"][0]["label"]


async def states(client) -> dict[str, tuple[str, str | None]]:
    index = (await client.get("/v1/models")).json()
    return {m["name"]: (m["state"], m["reason"]) for m in index["models"]}


async def reload(app) -> None:
    await app.state.service.lifecycle.loader.reload()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    repo.mkdir()
    return repo


# -- names and the default -----------------------------------------------------------------------


async def test_every_onnx_file_is_a_model_named_by_its_stem(repo):
    publish(repo, "swin_t", "labels=t")
    publish(repo, "swin_t.int8", "labels=q")
    publish(repo, ".hidden", "labels=h")  # renamed into place later, by convention
    (repo / "notes.txt").write_text("not a model")
    (repo / "bad name!.onnx").write_text("labels=x")
    async with running(make_repo_app(repo, default_model="swin_t")) as client:
        assert set(await states(client)) == {"swin_t", "swin_t.int8"}
        answer = await classify(client, "swin_t.int8")
        assert top_label(answer).startswith("q") and answer.json()["model"] == "swin_t.int8"
        assert top_label(await classify(client)).startswith("t")  # the default
        card = (await client.get("/v1/models/swin_t.int8")).json()
        assert card["name"] == "swin_t.int8" and card["state"] == "ready" and card["digest"]


async def test_several_models_and_no_default_the_unnamed_routes_say_to_name_one(repo):
    publish(repo, "a", "labels=a")
    publish(repo, "b", "labels=b")
    async with running(make_repo_app(repo)) as client:
        answer = await classify(client)
        assert answer.status_code == 404
        assert "name one" in answer.json()["error"]["message"]
        index = (await client.get("/v1/models")).json()
        assert index["default_model"] is None and "variant" not in index
        assert (await client.get("/readyz")).status_code == 200  # some model is ready
        assert top_label(await classify(client, "b")).startswith("b")


async def test_an_unknown_model_is_404_on_every_route(repo):
    publish(repo, "a", "labels=a")
    async with running(make_repo_app(repo)) as client:
        for method, path in [
            ("POST", "/v1/models/nope/classify"),
            ("POST", "/v1/models/nope/features"),
            ("GET", "/v1/models/nope"),
            ("GET", "/v2/models/nope"),
            ("GET", "/v2/models/nope/ready"),
            ("POST", "/v2/models/nope/infer"),
        ]:
            answer = await client.request(method, path, files={"file": image_bytes()})
            assert answer.status_code == 404, (path, answer.text)
            assert "unknown model 'nope'" in answer.text


async def test_v2_serves_every_model_under_its_own_name(repo):
    publish(repo, "a", "labels=a")
    publish(repo, "b", "labels=b")
    async with running(make_repo_app(repo, default_model="a")) as client:
        assert (await client.get("/v2/models/b/ready")).json() == {"name": "b", "ready": True}
        assert (await client.get("/v2/models/b")).json()["name"] == "b"
        request = {
            "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 32, 32]}],
            "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
        }
        request["inputs"][0]["data"] = [0.5] * (3 * 32 * 32)
        answer = await client.post("/v2/models/b/infer", json=request)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_name"] == "b"
        assert answer.json()["outputs"][0]["data"][0].split(":")[2].startswith("b")


# -- start-up ------------------------------------------------------------------------------------


async def test_a_broken_model_at_start_up_is_failed_and_the_others_serve(repo):
    publish(repo, "good", "labels=g")
    publish(repo, "bad", "broken")
    async with running(make_repo_app(repo, default_model="good")) as client:
        state, reason = (await states(client))["bad"]
        assert state == "failed" and "INVALID_PROTOBUF" in reason
        answer = await classify(client, "bad")
        assert answer.status_code == 503 and "failed to load" in answer.text
        assert (await client.get("/readyz")).status_code == 200
        samples = parse_metrics((await client.get("/metrics")).text)
        assert metric(samples, "swin_model_loads_total", model="bad", outcome="failed") == 1
        assert metric(samples, "swin_model_ready", model="good") == 1


@pytest.mark.parametrize(
    ("files", "default", "message"),
    [
        ({}, None, "holds no models"),
        ({"a": "labels=a"}, "b", "SWIN_DEFAULT_MODEL='b' is not in"),
        ({"a": "broken", "b": "labels=b"}, "a", "INVALID_PROTOBUF"),
    ],
)
async def test_start_up_fails_without_a_servable_default(repo, files, default, message):
    for name, text in files.items():
        publish(repo, name, text)
    app = make_repo_app(repo, default_model=default)
    with pytest.raises(ModelLoadError, match=message):
        async with running(app):
            pass


async def test_a_repository_wins_over_a_model_path_which_the_images_set(repo):
    publish(repo, "a", "labels=a")
    app = make_repo_app(repo, model_path="elsewhere.onnx")
    async with running(app) as client:
        assert top_label(await classify(client)).startswith("a")


def test_a_default_model_must_be_a_model_name(repo):
    with pytest.raises(ValidationError, match="default_model"):
        Settings(model_repository=repo, default_model="../etc")


# -- reloads -------------------------------------------------------------------------------------


async def test_reload_adds_replaces_and_removes_models(repo):
    publish(repo, "a", "labels=old")
    publish(repo, "b", "labels=b")
    app = make_repo_app(repo, default_model="a")
    async with running(app) as client:
        assert top_label(await classify(client, "a")).startswith("old")
        publish(repo, "c", "labels=c")
        publish(repo, "a", "labels=new")
        (repo / "b.onnx").unlink()
        await reload(app)
        assert top_label(await classify(client, "c")).startswith("c")
        assert top_label(await classify(client)).startswith("new")
        assert (await classify(client, "b")).status_code == 404
        await until(lambda: not app.state.service.lifecycle.registry.unloading)
        assert set(await states(client)) == {"a", "c"}
        text = (await client.get("/metrics")).text
        samples = parse_metrics(text)
        assert metric(samples, "swin_model_loads_total", model="a", outcome="loaded") == 2
        assert 'model="b"' not in text  # a removed model's series go with it
        assert (await client.get("/readyz")).status_code == 200


async def test_a_touched_file_with_the_same_content_is_not_loaded_again(repo):
    publish(repo, "a", "labels=a")
    app = make_repo_app(repo)
    async with running(app) as client:
        before = (await client.get("/v1/models/a")).json()["loaded_at"]
        os.utime(repo / "a.onnx", (time.time() - 30, time.time() - 30))
        await reload(app)
        assert (await client.get("/v1/models/a")).json()["loaded_at"] == before
        samples = parse_metrics((await client.get("/metrics")).text)
        assert metric(samples, "swin_model_loads_total", model="a", outcome="loaded") == 1


async def test_a_failed_replacement_leaves_the_served_model_alone(repo):
    publish(repo, "a", "labels=old")
    app = make_repo_app(repo)
    async with running(app) as client:
        publish(repo, "a", "broken")
        await reload(app)
        state, reason = (await states(client))["a"]
        assert state == "ready" and "INVALID_PROTOBUF" in reason
        assert top_label(await classify(client, "a")).startswith("old")
        publish(repo, "a", "labels=fixed")  # a failed file is tried again once it changes
        await reload(app)
        assert top_label(await classify(client, "a")).startswith("fixed")
        assert (await states(client))["a"] == ("ready", None)


async def test_requests_routed_to_the_old_model_finish_on_it_during_a_swap(repo):
    publish(repo, "a", "labels=old delay=0.3")
    app = make_repo_app(repo)
    async with running(app) as client:
        in_flight = asyncio.create_task(classify(client, "a"))
        registry = app.state.service.lifecycle.registry
        await until(lambda: registry.entries["a"].model.leases == 1)
        publish(repo, "a", "labels=new")
        await reload(app)
        assert top_label(await classify(client, "a")).startswith("new")
        assert top_label(await in_flight).startswith("old")
        await until(lambda: not registry.retiring)


async def test_a_removed_model_answers_404_while_its_requests_finish(repo):
    publish(repo, "a", "labels=a")
    publish(repo, "gone", "labels=g delay=0.3")
    app = make_repo_app(repo, default_model="a")
    async with running(app) as client:
        in_flight = asyncio.create_task(classify(client, "gone"))
        registry = app.state.service.lifecycle.registry
        await until(lambda: registry.entries["gone"].model.leases == 1)
        (repo / "gone.onnx").unlink()
        await reload(app)
        assert (await states(client))["gone"][0] == "unloading"
        assert (await classify(client, "gone")).status_code == 404
        assert top_label(await in_flight).startswith("g")
        await until(lambda: "gone" not in registry.unloading)


async def test_past_max_models_a_load_is_refused_until_there_is_room(repo):
    publish(repo, "a", "labels=a")
    app = make_repo_app(repo, max_models=1)
    async with running(app) as client:
        publish(repo, "b", "labels=b")
        await reload(app)
        state, reason = (await states(client))["b"]
        assert state == "failed" and "SWIN_MAX_MODELS=1" in reason
        samples = parse_metrics((await client.get("/metrics")).text)
        assert metric(samples, "swin_model_loads_total", model="b", outcome="refused") == 1
        (repo / "a.onnx").unlink()
        await reload(app)
        await until(lambda: not app.state.service.lifecycle.registry.unloading)
        await reload(app)
        assert top_label(await classify(client, "b")).startswith("b")


async def test_a_file_still_being_written_is_left_for_a_later_look(repo):
    publish(repo, "a", "labels=a")
    app = make_repo_app(repo)
    async with running(app) as client:
        (repo / "b.onnx").write_text("labels=b")  # copied in place: its time is now
        await reload(app)
        assert "b" not in await states(client)
        settle(repo / "b.onnx")
        await reload(app)
        assert top_label(await classify(client, "b")).startswith("b")


async def test_the_default_model_going_away_turns_readiness_off(repo):
    publish(repo, "a", "labels=a")
    publish(repo, "b", "labels=b")
    app = make_repo_app(repo, default_model="a")
    async with running(app) as client:
        (repo / "a.onnx").unlink()
        await reload(app)
        for response in (await client.get("/readyz"), await classify(client)):
            assert response.status_code in (503, 404)
            message = response.json()["error"]["message"]
            assert "the default model 'a' is not served" in message, message
        samples = parse_metrics((await client.get("/metrics")).text)
        assert metric(samples, "swin_ready") == 0
        publish(repo, "a", "labels=back")
        await reload(app)
        assert (await client.get("/readyz")).status_code == 200
        assert top_label(await classify(client)).startswith("back")


async def test_with_every_model_removed_the_answers_say_none_is_served(repo, caplog):
    publish(repo, "a", "labels=a")
    app = make_repo_app(repo)  # the only model: the default without being named
    async with running(app) as client:
        (repo / "a.onnx").unlink()
        with caplog.at_level(logging.WARNING):
            await reload(app)
        classify_answer, readyz = await classify(client), await client.get("/readyz")
        assert (classify_answer.status_code, readyz.status_code) == (404, 503)
        for response in (classify_answer, readyz):
            assert "serves no model" in response.json()["error"]["message"], response.text
        assert "the repository holds no model" in caplog.text


async def test_a_failed_file_fixed_while_the_repository_is_full_is_refused(repo):
    publish(repo, "a", "labels=a")
    publish(repo, "b", "broken")
    app = make_repo_app(repo, default_model="a", max_models=2)
    async with running(app) as client:
        publish(repo, "c", "labels=c")
        await reload(app)
        publish(repo, "b", "labels=b")  # fixed, but a and c take the two places
        await reload(app)
        state, reason = (await states(client))["b"]
        assert state == "failed" and "SWIN_MAX_MODELS=2" in reason
        assert app.state.service.lifecycle.registry.serving() == 2


async def test_a_failed_replacement_that_is_taken_back_clears_its_reason(repo):
    publish(repo, "a", "labels=old")
    app = make_repo_app(repo)
    async with running(app) as client:
        publish(repo, "a", "broken")
        await reload(app)
        assert (await states(client))["a"][1] is not None
        publish(repo, "a", "labels=old")  # the content that serves
        await reload(app)
        assert (await states(client))["a"] == ("ready", None)


async def test_a_file_made_readable_is_tried_again(repo):
    publish(repo, "a", "labels=a")
    publish(repo, "b", "broken")
    app = make_repo_app(repo, default_model="a")
    async with running(app) as client:
        assert (await states(client))["b"][0] == "failed"
        (repo / "b.onnx").write_text("labels=b")  # a chmod: only its status-change time moves
        settle(repo / "b.onnx")
        await reload(app)
        assert top_label(await classify(client, "b")).startswith("b")


async def test_a_file_removed_while_it_loads_is_gone_not_failed(repo):
    publish(repo, "a", "labels=a")
    app = make_repo_app(repo, default_model="a")
    async with running(app) as client:
        publish(repo, "ghost", "vanish")
        await reload(app)
        assert "ghost" not in await states(client)


async def test_a_drain_stops_a_load_in_progress(repo):
    publish(repo, "a", "labels=a")
    app = make_repo_app(repo, default_model="a")
    OPENING.clear()
    GATE.clear()
    async with running(app) as client:
        lifecycle = app.state.service.lifecycle
        publish(repo, "slow", "gate labels=s")
        reloading = asyncio.create_task(reload(app))
        await until(OPENING.is_set)
        lifecycle.begin_drain()  # what SIGTERM does
        GATE.set()
        await reloading
        assert lifecycle.registry.entries["slow"].model is None  # never published
        assert [m.name for m in lifecycle.registry.live_models()] == ["a"]
        assert top_label(await classify(client)).startswith("a")  # accepted work still served


async def test_a_reload_asked_for_while_start_up_loads_runs_once_the_models_are_warm(repo):
    """SIGHUP during start-up: docs/model-repository.md promises the look runs afterwards."""
    publish(repo, "a", "gate labels=a")
    app = make_repo_app(repo, default_model="a")
    OPENING.clear()
    GATE.clear()
    lifespan = app.router.lifespan_context(app)
    starting = asyncio.create_task(lifespan.__aenter__())  # returns once the models are loaded
    lifecycle = app.state.service.lifecycle
    try:
        await until(OPENING.is_set)  # the start-up load of "a" is under way
        publish(repo, "b", "labels=b")
        lifecycle.request_reload()  # what SIGHUP does
        GATE.set()
        await starting
        await lifecycle.wait_for_warm_up()
        await until(lambda: "b" in lifecycle.registry.entries, timeout_s=10)
    finally:
        GATE.set()
        await starting
        await lifespan.__aexit__(None, None, None)


async def test_grpc_serves_each_model_and_admits_by_the_named_models_queue(repo):
    publish(repo, "slow", "labels=s delay=0.5")
    publish(repo, "b", "labels=b")
    port = free_port()
    app = make_repo_app(
        repo, default_model="slow", grpc_port=port, queue_capacity=8, parallel_batches=1
    )
    async with running(app) as client:
        # The default model's queue fills up; a call to another model must not mind.
        flood = [asyncio.create_task(classify(client)) for _ in range(16)]
        await until(lambda: not default_model(app.state.service.lifecycle).batcher.has_room(1))
        grpc_client = tritongrpc_aio.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            pixels = tritongrpc_aio.InferInput("pixel_values", [1, 3, 32, 32], "FP32")
            pixels.set_data_from_numpy(np.full((1, 3, 32, 32), 0.5, np.float32))
            wanted = tritongrpc_aio.InferRequestedOutput("logits", class_count=1)
            answer = await grpc_client.infer("b", [pixels], outputs=[wanted])
            label = answer.as_numpy("logits")[0][0].decode().split(":")[2]
            assert label.startswith("b")
            assert await grpc_client.is_model_ready("b")
            meta = await grpc_client.get_model_metadata("b", as_json=True)
            assert meta["name"] == "b"
        finally:
            await grpc_client.close()
        await asyncio.gather(*flood)


async def test_with_a_model_path_the_default_may_only_name_its_model(tmp_path):
    settings = Settings(model_path=tmp_path / "x.onnx", default_model="other", grpc_port=0)
    app = create_app(settings, FakeEngine())
    with pytest.raises(ModelLoadError, match="SWIN_DEFAULT_MODEL='other'"):
        async with running(app):
            pass


async def test_with_no_default_the_server_needs_one_model_that_loads(repo):
    publish(repo, "a", "broken")
    publish(repo, "b", "broken")
    with pytest.raises(ModelLoadError, match="no model of"):
        async with running(make_repo_app(repo)):
            pass

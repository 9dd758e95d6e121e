"""A model's file is read once: the digest on its card, the stamp a reload compares and the
session that serves all come from the same bytes (issue 27, item 2).

The race: another file is renamed into place between the read and the load. Had the loader
opened the path twice (hash, then load), it would serve one file under the other's digest; and
once the first was published again its digest would match, so nothing would ever reload it.
Here the models are real ONNX files (tests/server/runtime/test_engine.py's synthetic graph) whose
labels start with a letter, so that an answer names the file that served it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from swin_serve.server.http.app import create_app
from swin_serve.server.runtime.engine import ModelLoadError, OnnxEngine
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.settings import Settings
from tests.server.runtime.test_engine import build_synthetic_model
from tests.support import settle
from tests.support.fakes import image_bytes, running, tiny_manifest

pytestmark = pytest.mark.anyio

_SETTINGS: dict[str, Any] = {
    "providers": "cpu",
    "max_batch_size": 2,
    "max_batch_delay_ms": 5,
    "max_images_per_request": 4,
    "intra_op_threads": 1,
    "grpc_port": 0,
}


@pytest.fixture
def models(tmp_path: Path) -> dict[str, bytes]:
    """Three real models, ``a``, ``b`` and ``c``, by the letter their labels start with."""
    built = {}
    for word in "abc":
        manifest = tiny_manifest().model_copy(
            update={"labels": tuple(f"{word}{i}" for i in range(10))}
        )
        path = build_synthetic_model(tmp_path / f"{word}.onnx", manifest.model_dump_json())
        built[word] = path.read_bytes()
    return built


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish(target: Path, data: bytes) -> None:
    """Rename ``data`` into place at ``target``, dated a minute back (settled at once)."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(settle(tmp), target)


def after_the_first_read(monkeypatch, then: Callable[[], None]) -> threading.Event:
    """Run ``then`` once, right after the next read of a model file: where a loader that opened
    the path a second time to load it would have opened it."""
    real = ModelFile.read.__func__
    fired = threading.Event()

    def read(cls, path: Path) -> ModelFile:
        file = real(cls, path)
        if not fired.is_set():
            fired.set()
            then()
        return file

    monkeypatch.setattr(ModelFile, "read", classmethod(read))
    return fired


async def served(client, models: dict[str, bytes], name: str | None = None) -> str:
    """The letter of the model that answers under ``name``, once its card is checked to carry
    that very model's digest."""
    path = "/classify" if name is None else f"/v1/models/{name}/classify"
    answer = await client.post(f"{path}?top_k=1", files={"file": image_bytes()})
    assert answer.status_code == 200, answer.text
    word = answer.json()["results"][0]["predictions"][0]["label"][0]
    card = (await client.get(f"/v1/models/{answer.json()['model']}")).json()
    assert card["digest"] == sha256(models[word]), (
        f"model {word!r} serves, but its card names the digest of "
        f"{next((w for w, d in models.items() if sha256(d) == card['digest']), 'no model')!r}"
    )
    return word


async def test_a_file_renamed_in_during_a_reload_is_served_under_its_own_digest(
    tmp_path, models, monkeypatch
):
    repo = tmp_path / "models"
    repo.mkdir()
    target = repo / "m.onnx"
    publish(target, models["a"])
    app = create_app(Settings(model_repository=repo, **_SETTINGS))
    async with running(app) as client:
        loader = app.state.service.lifecycle.loader
        assert await served(client, models, "m") == "a"

        publish(target, models["b"])  # the operator's new version ...
        fired = after_the_first_read(monkeypatch, lambda: publish(target, models["c"]))
        await loader.reload()  # ... and another file renamed in while it is read
        assert fired.is_set()
        assert await served(client, models, "m") == "b"  # what was read is what serves

        publish(target, models["b"])  # b again: its digest is what serves, nothing to reload
        await loader.reload()
        assert await served(client, models, "m") == "b"

        publish(target, models["c"])  # another file does reload ...
        await loader.reload()
        assert await served(client, models, "m") == "c"
        publish(target, models["b"])  # ... and so does the right one, published afterwards
        await loader.reload()
        assert await served(client, models, "m") == "b"


async def test_swin_model_path_is_read_once_at_start_up(tmp_path, models, monkeypatch):
    path = tmp_path / "model.onnx"
    publish(path, models["b"])
    fired = after_the_first_read(monkeypatch, lambda: publish(path, models["c"]))
    app = create_app(Settings(model_path=path, **_SETTINGS))
    async with running(app) as client:
        assert fired.is_set()
        assert await served(client, models) == "b"
        # The stamp is the read's too: the file in place now is not what serves, so a look
        # loads it (a stamp taken after the load would match it, and nothing would ever load).
        await app.state.service.lifecycle.loader.reload()
        assert await served(client, models) == "c"


async def test_the_bytes_are_let_go_once_the_session_holds_the_model(tmp_path, models):
    repo = tmp_path / "models"
    repo.mkdir()
    publish(repo / "m.onnx", models["a"])
    settings = Settings(model_repository=repo, **_SETTINGS)
    given: list[ModelFile] = []
    engines: list[OnnxEngine] = []

    def opener(file: ModelFile) -> OnnxEngine:
        given.append(file)
        engines.append(OnnxEngine.load(settings, file))
        return engines[-1]

    async with running(create_app(settings, opener=opener)) as client:
        assert await served(client, models, "m") == "a"
    assert [f.digest for f in given] == [sha256(models["a"])]
    assert given[0].data is None  # released by the loader, once the opener returned
    assert engines[0]._session._model_bytes is None  # and ORT keeps no copy of its own


def test_the_session_is_built_from_the_bytes_read_not_from_the_path(tmp_path, models):
    path = tmp_path / "m.onnx"
    path.write_bytes(models["a"])  # the path holds a by now; b is what was read
    file = ModelFile(path, models["b"], sha256(models["b"]))
    engine = OnnxEngine.load(Settings(model_path=path, **_SETTINGS), file)
    assert engine.manifest.labels[0] == "b0"


def test_a_model_with_external_data_is_refused_by_name(tmp_path, models, monkeypatch):
    # Loaded from bytes, ORT would look for the data in the working directory: put it there and
    # beside the model, where either would load weights that the file's digest does not cover.
    proto = onnx.load_model_from_string(models["a"])
    path = tmp_path / "ext.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    assert (tmp_path / "ext.onnx.data").is_file()
    with pytest.raises(ModelLoadError, match=r"ext\.onnx: it keeps weights in external data"):
        OnnxEngine.load(Settings(model_path=path, **_SETTINGS))

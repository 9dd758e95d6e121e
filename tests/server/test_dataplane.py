"""The data plane under every transport: a model is leased while a request runs on it and
given back once the request is answered, whichever transport brought it and however it ended;
readiness and metadata answer the same on each transport; and the transports reach the model
registry only through the data plane, gRPC without any of the HTTP stack."""

from __future__ import annotations

import ast
import asyncio
import base64
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from swin_serve.server.v2 import messages
from tests.support import free_port, until
from tests.support.fakes import default_model, image_bytes

pytestmark = pytest.mark.anyio

MODEL = "fake_swin_32"  # tests/server/conftest.py: tiny_manifest
SERVER = Path(__file__).resolve().parents[2] / "src" / "swin_serve" / "server"


def _v2_body() -> dict:
    data = base64.b64encode(image_bytes()).decode()
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}]}


def _grpc_request(version: str = "") -> Any:
    return messages.ModelInferRequest(
        model_name=MODEL,
        model_version=version,
        inputs=[{"name": "image", "datatype": "BYTES", "shape": [1]}],
        raw_input_contents=[len(image_bytes()).to_bytes(4, "little") + image_bytes()],
    )


async def _grpc(port: int, method: str, request: Any) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{messages.SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.response_type(method).FromString,
        )
        return await call(request)


def _senders(client: Any, port: int, version: str = "") -> dict[str, Any]:
    """One inference per transport, each a coroutine factory."""
    v2_path = (
        f"/v2/models/{MODEL}/versions/{version}/infer" if version else f"/v2/models/{MODEL}/infer"
    )
    return {
        "classify": lambda: client.post(
            f"/v1/models/{MODEL}/classify", files={"file": image_bytes()}
        ),
        "v2 http": lambda: client.post(v2_path, json=_v2_body()),
        "v2 grpc": lambda: _grpc(port, "ModelInfer", _grpc_request(version)),
    }


@pytest.mark.parametrize("transport", ["classify", "v2 http", "v2 grpc"])
async def test_the_model_is_leased_while_a_request_runs_and_given_back_once_answered(
    make_app, serve, gated_engine, transport
):
    engine, release = gated_engine
    port = free_port()
    app = make_app(engine, grpc_port=port)
    async with serve(app) as client:
        model = default_model(app.state.service.lifecycle)
        running = asyncio.ensure_future(_senders(client, port)[transport]())
        await until(lambda: engine.calls)
        assert model.leases == 1  # held while its image is on the model
        release.set()
        answer = await running
        assert model.leases == 0
    assert getattr(answer, "status_code", 200) == 200


async def test_a_request_refused_once_leased_gives_the_lease_back(make_app, serve):
    port = free_port()
    app = make_app(grpc_port=port)
    async with serve(app) as client:
        model = default_model(app.state.service.lifecycle)
        senders = _senders(client, port, version="2")  # a version the model does not have
        by_http = await senders["v2 http"]()
        with pytest.raises(grpc.aio.AioRpcError) as by_grpc:
            await senders["v2 grpc"]()
        assert model.leases == 0
    assert by_http.status_code == 404 and by_grpc.value.code() is grpc.StatusCode.NOT_FOUND


async def test_readiness_and_metadata_answer_alike_on_both_v2_transports(
    make_app, make_engine, serve
):
    gate = threading.Event()
    port = free_port()
    app = make_app(make_engine(warmup_gate=gate), grpc_port=port)
    ready_request = messages.request_type("ModelReady")(name=MODEL)
    async with serve(app, wait_for_warm_up=False) as client:
        warming_http = await client.get(f"/v2/models/{MODEL}/ready")
        warming_grpc = await _grpc(port, "ModelReady", ready_request)
        gate.set()
        await app.state.service.lifecycle.wait_for_warm_up()
        ready_http = await client.get(f"/v2/models/{MODEL}/ready")
        ready_grpc = await _grpc(port, "ModelReady", ready_request)
        http_meta = (await client.get(f"/v2/models/{MODEL}")).json()
        metadata_request = messages.request_type("ModelMetadata")(name=MODEL)
        grpc_meta = await _grpc(port, "ModelMetadata", metadata_request)
    assert warming_http.status_code == 503 and not warming_grpc.ready
    assert warming_http.json() == {"error": f"model {MODEL!r} is loading or warming up"}
    assert ready_http.json() == {"name": MODEL, "ready": True} and ready_grpc.ready
    assert grpc_meta.name == http_meta["name"] and grpc_meta.platform == http_meta["platform"]
    assert [i.name for i in grpc_meta.inputs] == [i["name"] for i in http_meta["inputs"]]
    assert {k: v.string_param for k, v in grpc_meta.parameters.items()} == http_meta["parameters"]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("module", ["grpc_server.py", "grpc_codec.py"])
def test_the_grpc_transport_imports_nothing_of_the_http_stack(module):
    http_stack = ("fastapi", "starlette", "swin_serve.server.http")
    wrong = [m for m in _imports(SERVER / "v2" / module) if m.startswith(http_stack)]
    assert not wrong, f"v2/{module} imports {wrong}"


def _reaches_registry(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(n, ast.Attribute) and n.attr == "registry" for n in ast.walk(tree))


def test_only_the_data_plane_reaches_the_registry_among_the_transports():
    transports = [*(SERVER / "http").glob("*.py"), *(SERVER / "v2").glob("*.py")]
    assert _reaches_registry(SERVER / "dataplane.py")  # the check would see it
    reaching = [p.name for p in transports if _reaches_registry(p)]
    assert not reaching, f"reach the registry themselves: {reaching}"

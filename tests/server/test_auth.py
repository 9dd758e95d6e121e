"""Optional API keys (SWIN_API_KEYS, SWIN_API_KEYS_FILE) on HTTP and gRPC, on a fake engine: open
without keys; with keys, 401 / UNAUTHENTICATED without the right one on every API route and
method, probes and /metrics open, rejections counted, and no key in a log line or a span."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from base64 import b64encode
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from pydantic import ValidationError

from swin_serve.server.auth import OPEN_PATHS, ApiKeys, parse_keys
from swin_serve.server.settings import Settings
from swin_serve.server.v2 import messages
from tests.support import checkout_env, free_port, metric, parse_metrics
from tests.support.fakes import default_model, image_bytes, test_settings

pytestmark = pytest.mark.anyio

MODEL = "fake_swin_32"  # tests/server/conftest.py: tiny_manifest
KEY = "k3y-0ne-aaaaaaaaaaaaaaaaaaaaaaaa"
OTHER_KEY = "k3y-tw0-bbbbbbbbbbbbbbbbbbbbbbbb"
# As long as KEY and sharing its first 30 characters: a check that compared prefixes, or
# stopped at the first difference in the clear, would be the one to let it through.
NEAR_MISS = KEY[:-1] + "b"
PNG = image_bytes()
ROOT = Path(__file__).resolve().parents[2]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def v2_image_request() -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64encode(PNG).decode()]}
        ]
    }


# Every protected HTTP route, as (method, path, keyword arguments of the request).
PROTECTED: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/classify", {"files": {"file": PNG}}),
    ("POST", "/features", {"files": {"file": PNG}}),
    ("GET", "/v1/models", {}),
    ("GET", f"/v1/models/{MODEL}", {}),
    ("POST", f"/v1/models/{MODEL}/classify", {"files": {"file": PNG}}),
    ("GET", "/v2", {}),
    ("GET", f"/v2/models/{MODEL}", {}),
    ("GET", f"/v2/models/{MODEL}/ready", {}),
    ("POST", f"/v2/models/{MODEL}/infer", {"json": {"inputs": []}}),
]
OPEN = ["/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/"]
OPEN += ["/static/app.js", "/static/style.css", "/docs", "/openapi.json"]


@pytest.fixture
def keyed_app(make_app) -> Callable[..., Any]:
    """``keyed_app(**settings)``: an app with KEY and OTHER_KEY as its API keys."""

    def factory(**settings: Any) -> Any:
        return make_app(api_keys=f"{KEY}, {OTHER_KEY}", **settings)

    return factory


def rejections(app: Any) -> float:
    samples = parse_metrics(app.state.service.metrics.render().decode())
    return metric(samples, "swin_rejections_total", reason="unauthenticated")


# ---- keys: parsing and comparison ---------------------------------------------------------------


def test_without_keys_settings_turn_nothing_on():
    assert ApiKeys.from_settings(test_settings()) is None


def test_keys_come_from_the_list_and_the_file_together(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-01\n\n  {OTHER_KEY}  \n")
    keys = ApiKeys.from_settings(test_settings(api_keys=KEY, api_keys_file=path))
    assert keys is not None and len(keys) == 2
    assert keys.accepts(f"Bearer {KEY}") and keys.accepts(f"bearer {OTHER_KEY}")


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", KEY, f"Basic {KEY}", f"Bearer {NEAR_MISS}", f"Bearer {KEY}x"],
)
def test_only_bearer_and_an_exact_key_is_accepted(authorization):
    assert not ApiKeys([KEY, OTHER_KEY]).accepts(authorization)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"api_keys": "short"}, "shorter than 16"),
        ({"api_keys": " , "}, "holds no key"),
        ({"api_keys": f"{KEY},has space in it"}, "key 2"),
        ({"api_keys_file": "missing-keys-file"}, "cannot read"),
    ],
)
def test_unusable_keys_stop_start_up_without_echoing_them(overrides, says):
    with pytest.raises(ValidationError) as caught:
        test_settings(**overrides)
    message = str(caught.value)
    assert says in message
    assert "short" not in message.replace("shorter", "") and "has space" not in message


def test_an_empty_keys_file_stops_start_up(tmp_path):
    (tmp_path / "keys").write_text("# no key yet\n\n")
    with pytest.raises(ValidationError, match="holds no key"):
        test_settings(api_keys_file=tmp_path / "keys")


def test_another_settings_error_does_not_print_the_keys():
    """Pydantic echoes a model validator's whole input: SWIN_API_KEYS among it."""
    with pytest.raises(ValidationError) as caught:
        Settings(port=9000, grpc_port=9000, api_keys=KEY)
    message = str(caught.value)
    assert "grpc_port and port" in message
    assert KEY[:8] not in message and KEY[-8:] not in message  # pydantic shortens the middle


def test_a_bad_key_exits_2_naming_the_variable_not_the_key(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "swin_serve.server"],
        env=checkout_env({"SWIN_API_KEYS": "tooshort-secret", "PATH": ""}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "SWIN_API_KEYS" in done.stderr and "tooshort-secret" not in done.stderr


def test_the_settings_repr_hides_the_keys():
    settings = test_settings(api_keys=KEY)
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_keys_file_lines_are_numbered_in_errors():
    with pytest.raises(ValueError, match="line 2"):
        parse_keys(f"{KEY}\nshort\n", "a file")


# ---- HTTP ---------------------------------------------------------------------------------------


async def test_without_keys_every_route_is_open(make_app, serve):
    app = make_app()
    async with serve(app) as client:
        for method, path, kwargs in PROTECTED:
            resp = await client.request(method, path, **kwargs)
            assert resp.status_code != 401, (path, resp.text)
        assert (await client.post("/classify", files={"file": PNG})).status_code == 200
    assert rejections(app) == 0


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED, ids=[p for _, p, _ in PROTECTED])
async def test_with_keys_a_missing_or_wrong_key_gets_401_with_a_bearer_challenge(
    keyed_app, serve, method, path, kwargs
):
    app = keyed_app()
    async with serve(app) as client:
        for headers, challenge in [
            ({}, 'Bearer realm="swin-serve"'),
            (bearer(NEAR_MISS), 'Bearer realm="swin-serve", error="invalid_token"'),
            ({"Authorization": f"Basic {KEY}"}, 'Bearer realm="swin-serve"'),
        ]:
            resp = await client.request(method, path, headers=headers, **kwargs)
            assert resp.status_code == 401, (headers, resp.text)
            assert resp.headers["WWW-Authenticate"] == challenge
            body = resp.json()
            if path.startswith("/v2"):  # the protocol's own error shape
                assert set(body) == {"error"} and isinstance(body["error"], str)
            else:
                assert body["error"]["code"] == "unauthenticated"
                assert (
                    "Bearer" in body["error"]["message"] or "not valid" in body["error"]["message"]
                )
        assert rejections(app) == 3
        samples = parse_metrics(app.state.service.metrics.render().decode())
        answered = {
            dict(labels)["endpoint"]: value
            for (name, labels), value in samples.items()
            if name == "swin_requests_total" and dict(labels)["status"] == "401"
        }
        assert list(answered.values()) == [3]  # the 401s are counted as answered requests too


async def test_with_keys_the_right_key_is_served(keyed_app, serve):
    app = keyed_app()
    async with serve(app) as client:
        for key in (KEY, OTHER_KEY):
            resp = await client.post("/classify", files={"file": PNG}, headers=bearer(key))
            assert resp.status_code == 200, resp.text
            resp = await client.get("/v1/models", headers=bearer(key))
            assert resp.status_code == 200
        resp = await client.post(
            f"/v2/models/{MODEL}/infer", json=v2_image_request(), headers=bearer(KEY)
        )
        assert resp.status_code == 200, resp.text
        assert (await client.get(f"/v2/models/{MODEL}", headers=bearer(KEY))).status_code == 200
    assert rejections(app) == 0


async def test_with_keys_probes_metrics_docs_and_the_page_stay_open(keyed_app, serve):
    app = keyed_app()
    async with serve(app) as client:
        for path in OPEN:
            resp = await client.get(path)
            assert resp.status_code == 200, (path, resp.text)
    assert rejections(app) == 0
    assert set(OPEN) - {"/static/app.js", "/static/style.css"} <= OPEN_PATHS


async def test_with_keys_an_unknown_path_is_refused_not_described(keyed_app, serve):
    """Fail closed: a path is open only by being listed, so a route added later is protected."""
    async with serve(keyed_app()) as client:
        assert (await client.get("/no/such/route")).status_code == 401
        assert (await client.get("/no/such/route", headers=bearer(KEY))).status_code == 404


async def test_a_refused_upload_takes_no_request_slot(keyed_app, serve):
    app = keyed_app(max_concurrent_requests=1, max_connections=2)
    async with serve(app) as client:
        for _ in range(3):
            assert (await client.post("/classify", files={"file": PNG})).status_code == 401
        assert app.state.service.slots.in_use == 0
        resp = await client.post("/classify", files={"file": PNG}, headers=bearer(KEY))
        assert resp.status_code == 200


async def test_with_keys_the_openapi_spec_describes_the_bearer_scheme(keyed_app, make_app, serve):
    async with serve(keyed_app()) as client:
        spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    classify = spec["paths"]["/classify"]["post"]
    assert classify["security"] == [{"apiKey": []}] and "401" in classify["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    async with serve(make_app()) as client:  # without keys the spec is as it always was
        spec = (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in spec.get("components", {})


async def test_the_start_log_says_whether_keys_are_on_and_never_a_key(
    keyed_app, make_app, serve, caplog, spans
):
    caplog.set_level(logging.DEBUG)
    make_app()
    assert "API keys: off" in caplog.text
    caplog.clear()
    app = keyed_app(access_log=True)
    assert "API keys: on (2 keys)" in caplog.text
    async with serve(app) as client:
        await client.post("/classify", files={"file": PNG}, headers=bearer(KEY))
        await client.post("/classify", files={"file": PNG}, headers=bearer(NEAR_MISS))
        await client.get("/v1/models", headers=bearer(OTHER_KEY))
    lines = caplog.text
    assert "401" in lines and "200" in lines  # the access log saw both
    attributes = [str(dict(s.attributes or {})) + s.name for s in spans.get_finished_spans()]
    assert spans.get_finished_spans()
    for text in (lines, *attributes):
        for secret in (KEY, OTHER_KEY, NEAR_MISS, KEY[:8]):
            assert secret not in text


# ---- gRPC ---------------------------------------------------------------------------------------


class Grpc:
    def __init__(self, app: Any, channel: grpc.aio.Channel, port: int) -> None:
        self.app, self.channel, self.port = app, channel, port

    async def call(self, method: str, key: str | None = None, **fields: Any) -> Any:
        stub = self.channel.unary_unary(
            f"/{messages.SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.response_type(method).FromString,
        )
        metadata = () if key is None else (("authorization", f"Bearer {key}"),)
        return await stub(messages.request_type(method)(**fields), metadata=metadata)

    async def refused(self, method: str, key: str | None = None, **fields: Any) -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call(method, key, **fields)
        return caught.value


@pytest.fixture
def grpc_serving(make_app, serve) -> Callable[..., Any]:
    @asynccontextmanager
    async def start(**settings: Any) -> AsyncIterator[Grpc]:
        port = free_port()
        app = make_app(grpc_port=port, **settings)
        async with serve(app), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Grpc(app, channel, port)

    return start


def infer_fields() -> dict[str, Any]:
    return {
        "model_name": MODEL,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
        "raw_input_contents": [len(PNG).to_bytes(4, "little") + PNG],
    }


PROTECTED_RPCS: list[tuple[str, dict[str, Any]]] = [
    ("ModelInfer", infer_fields()),
    ("ModelMetadata", {"name": MODEL}),
    ("ModelReady", {"name": MODEL}),
    ("ServerMetadata", {}),
]


async def test_grpc_without_keys_is_open(grpc_serving):
    async with grpc_serving() as served:
        assert (await served.call("ModelInfer", **infer_fields())).outputs
        assert (await served.call("ModelMetadata", name=MODEL)).name == MODEL


async def test_grpc_with_keys_refuses_a_missing_or_wrong_key(grpc_serving):
    async with grpc_serving(api_keys=KEY) as served:
        for method, fields in PROTECTED_RPCS:
            for key in (None, NEAR_MISS):
                error = await served.refused(method, key, **fields)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method, key)
        samples = parse_metrics(served.app.state.service.metrics.render().decode())
        assert rejections(served.app) == 2 * len(PROTECTED_RPCS)
        assert (
            metric(samples, "swin_grpc_requests_total", method="ModelInfer", code="UNAUTHENTICATED")
            == 2
        )
        assert default_model(served.app.state.service.lifecycle).engine.calls == []


async def test_grpc_with_keys_serves_the_right_key_and_leaves_the_probes_open(grpc_serving):
    async with grpc_serving(api_keys=f"{KEY},{OTHER_KEY}") as served:
        assert (await served.call("ServerLive")).live
        assert (await served.call("ServerReady")).ready
        response = await served.call("ModelInfer", OTHER_KEY, **infer_fields())
        assert response.outputs
        assert (await served.call("ModelMetadata", KEY, name=MODEL)).name == MODEL
        assert rejections(served.app) == 0


async def test_grpc_keys_from_a_file(grpc_serving, tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"{OTHER_KEY}\n")
    async with grpc_serving(api_keys_file=path) as served:
        assert (await served.refused("ModelMetadata", KEY, name=MODEL)).code() == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert (await served.call("ModelMetadata", OTHER_KEY, name=MODEL)).name == MODEL
        transport = httpx.ASGITransport(app=served.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://swin.test") as client:
            assert (await client.get("/v1/models", headers=bearer(OTHER_KEY))).status_code == 200
            assert (await client.get("/v1/models", headers=bearer(KEY))).status_code == 401


async def test_grpc_refusal_never_logs_the_key(grpc_serving, caplog, spans):
    caplog.set_level(logging.DEBUG)
    async with grpc_serving(api_keys=KEY, access_log=True) as served:
        await served.refused("ModelInfer", NEAR_MISS, **infer_fields())
        await served.call("ModelInfer", KEY, **infer_fields())
        await asyncio.sleep(0)
    assert "UNAUTHENTICATED" in caplog.text
    attributes = [str(dict(s.attributes or {})) for s in spans.get_finished_spans()]
    for text in (caplog.text, *attributes):
        assert KEY not in text and NEAR_MISS not in text


async def test_tritons_grpc_client_sends_the_key_as_headers(grpc_serving):
    """What docs/production.md tells Triton's users: headers={"authorization": "Bearer ..."}."""
    import tritonclient.grpc.aio as tritongrpc_aio
    from tritonclient.utils import InferenceServerException

    async with grpc_serving(api_keys=KEY) as served:
        client = tritongrpc_aio.InferenceServerClient(f"127.0.0.1:{served.port}")
        try:
            assert await client.is_server_live()  # a probe: no key
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
                await client.get_model_metadata(MODEL)
            metadata = await client.get_model_metadata(
                MODEL, headers={"authorization": f"Bearer {KEY}"}
            )
            assert metadata.name == MODEL
        finally:
            await client.close()


@pytest.mark.parametrize("keys", [None, KEY])
def test_the_start_banner_shows_where_a_key_goes_and_never_the_key(keys, caplog):
    from swin_serve.server.__main__ import _log_banner

    caplog.set_level(logging.INFO, logger="swin_serve.server")
    _log_banner(test_settings(api_keys=keys), grpc_port=None)
    banner = caplog.text
    assert "ready: serving" in banner
    assert ("Authorization: Bearer $KEY" in banner) is (keys is not None)
    assert KEY not in banner

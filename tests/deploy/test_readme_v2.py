"""The README's Open Inference Protocol example runs as written, against a real server over HTTP
and gRPC, and prints what its comments say: per image, the top five as b"logit:index:label"."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.test_docs import readme_python
from tests.support.live_server import LiveServer, start_server

ROOT = Path(__file__).resolve().parents[2]
README_MODEL = "swin_tiny_patch4_window7_224"
README_HTTP, README_GRPC = "127.0.0.1:8000", "127.0.0.1:8001"
CLASS = re.compile(rb"(-?\d+\.\d{6}):(\d+):(.+)")


@pytest.fixture(scope="module")
def server(tiny_model_path: Path, tmp_path_factory) -> Iterator[LiveServer]:
    with start_server(tmp_path_factory.mktemp("readme-v2"), model_path=tiny_model_path) as server:
        yield server


def pointed_at(code: str, server: LiveServer, model: str) -> str:
    """The example with the README's addresses and model name replaced by the test server's."""
    for old, new in (
        (README_HTTP, server.base.removeprefix("http://")),
        (README_GRPC, server.grpc_address),
        (f'"{README_MODEL}"', f'"{model}"'),
    ):
        assert code.count(old) == 1, f"the README's example no longer holds {old} once"
        code = code.replace(old, new)
    return code


def test_the_readme_v2_example_prints_the_top_five_over_http_and_grpc(
    server, tiny_model_path, monkeypatch
):
    manifest = json.loads(tiny_model_path.with_suffix(".json").read_text())
    code = pointed_at(readme_python(uses_tritonclient=True), server, manifest["name"])
    printed: list[object] = []
    monkeypatch.chdir(ROOT)  # it reads samples/images/... from the repository root
    exec(compile(code, "README.md", "exec"), {"print": printed.append})

    assert len(printed) == 2, "one answer per protocol"
    rows = []
    for answer in printed:
        assert isinstance(answer, np.ndarray) and answer.shape == (2, 5)  # 2 files, top 5 each
        parsed = [[CLASS.fullmatch(element).groups() for element in row] for row in answer]
        for row in parsed:
            values = [float(value) for value, _, _ in row]
            assert values == sorted(values, reverse=True)  # highest first
            for _, index, label in row:
                assert label.decode() == manifest["labels"][int(index)]
        rows.append(parsed)
    over_http, over_grpc = rows
    for http_row, grpc_row in zip(over_http, over_grpc, strict=True):
        assert [i for _, i, _ in http_row] == [i for _, i, _ in grpc_row]
        http_values = [float(v) for v, _, _ in http_row]
        grpc_values = [float(v) for v, _, _ in grpc_row]
        np.testing.assert_allclose(http_values, grpc_values, atol=1e-4)

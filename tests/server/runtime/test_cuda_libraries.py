"""CUDA's libraries come from the `gpu` extra's nvidia-* wheels: the engine has onnxruntime load
them before it opens a CUDA session, and never for a CPU one.

No GPU here: a stand-in onnxruntime offers CUDA like onnxruntime-gpu does, records the calls,
and opens the real (CPU) sessions, so the engine takes its CUDA path up to the session and then
meets a CUDA provider that did not start, as on a host without the driver.
"""

from __future__ import annotations

import logging
import sys
import types

import onnxruntime
import pytest

from swin_serve.server.runtime.engine import OnnxEngine
from swin_serve.server.runtime.providers import CPU, CUDA
from swin_serve.server.settings import Settings

PRELOAD = "preload_dlls"


class FakeOnnxRuntime(types.ModuleType):
    """onnxruntime offering `available`, with or without preload_dlls; the rest is the real one."""

    def __init__(self, available: list[str], *, has_preload: bool = True):
        super().__init__("onnxruntime")
        self.available = available
        self.calls: list[str | tuple[str, list[str]]] = []
        if has_preload:
            self.preload_dlls = lambda: self.calls.append(PRELOAD)

    def get_available_providers(self) -> list[str]:
        return list(self.available)

    def InferenceSession(self, data, sess_options=None, providers=()):
        asked = [p[0] if isinstance(p, tuple) else p for p in providers]
        self.calls.append(("session", asked))
        return onnxruntime.InferenceSession(data, sess_options=sess_options, providers=[CPU])

    def __getattr__(self, name: str):
        if name == PRELOAD:  # not set above: this onnxruntime predates it
            raise AttributeError(name)
        return getattr(onnxruntime, name)


def load(monkeypatch, model_path, fake: FakeOnnxRuntime, providers: str) -> OnnxEngine:
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    # One CPU batch at a time: no layout calibration, which is not what these tests are about.
    settings = Settings(model_path=model_path, providers=providers, parallel_batches=1)
    return OnnxEngine.load(settings)


def test_cuda_libraries_are_loaded_before_the_cuda_session_opens(monkeypatch, tiny_model_path):
    fake = FakeOnnxRuntime([CUDA, CPU])
    engine = load(monkeypatch, tiny_model_path, fake, "auto")
    assert fake.calls[0] == PRELOAD
    assert fake.calls[1] == ("session", [CUDA, CPU])
    assert fake.calls.count(PRELOAD) == 1
    # The stand-in's CUDA never starts: the engine says so and serves on the CPU.
    assert engine.provider == CPU and "did not start" in engine.provider_warning


@pytest.mark.parametrize(
    ("available", "requested"),
    [
        ([CUDA, CPU], "cpu"),  # onnxruntime-gpu, told to serve on the CPU
        ([CPU], "auto"),  # the CPU build of onnxruntime
    ],
)
def test_a_cpu_session_loads_no_cuda_libraries(monkeypatch, tiny_model_path, available, requested):
    fake = FakeOnnxRuntime(available)
    engine = load(monkeypatch, tiny_model_path, fake, requested)
    assert PRELOAD not in fake.calls
    assert fake.calls and all(call == ("session", [CPU]) for call in fake.calls)
    assert engine.provider == CPU


def test_an_onnxruntime_without_preload_dlls_still_opens_its_cuda_session(
    monkeypatch, tiny_model_path
):
    # onnxruntime-gpu before 1.21: CUDA's libraries must be on the loader's own path.
    fake = FakeOnnxRuntime([CUDA, CPU], has_preload=False)
    load(monkeypatch, tiny_model_path, fake, "auto")
    assert fake.calls[0] == ("session", [CUDA, CPU])


def test_the_libraries_load_once_per_process_and_what_they_print_goes_to_the_log(caplog):
    from swin_serve.server.runtime.providers import Choice, load_cuda_libraries

    calls = []

    class Ort:
        def preload_dlls(self):
            calls.append(1)
            print("Failed to load libcudnn.so.9")

    ort, cuda = Ort(), Choice(True, "asked for")
    with caplog.at_level(logging.WARNING):
        load_cuda_libraries(cuda, ort)
        load_cuda_libraries(cuda, ort)
    assert calls == [1]
    assert "Failed to load libcudnn.so.9" in caplog.text

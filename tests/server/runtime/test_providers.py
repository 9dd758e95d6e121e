"""SWIN_PROVIDERS: the provider chosen, the reason logged, and the surprises reported."""

from __future__ import annotations

import pytest

from swin_serve.server.runtime.providers import CPU, CUDA, ProviderError, check_started, choose

GPU = ["/dev/nvidia0"]


def test_auto_takes_cuda_when_onnxruntime_offers_it():
    choice = choose("auto", [CUDA, CPU], GPU)
    assert choice.cuda and choice.warning is None and "offers CUDA" in choice.reason


def test_auto_on_a_gpu_host_with_the_cpu_build_warns_and_says_how_to_fix_it():
    choice = choose("auto", [CPU], GPU)
    assert not choice.cuda
    assert "/dev/nvidia0" in choice.warning and "make serve GPU=1" in choice.warning


def test_auto_on_a_cpu_host_is_quiet():
    choice = choose("auto", [CPU], [])
    assert not choice.cuda and choice.warning is None and "CPU-only host" in choice.reason


def test_cuda_without_the_provider_is_refused():
    with pytest.raises(ProviderError, match="SWIN_PROVIDERS=cuda but this onnxruntime offers only"):
        choose("cuda", [CPU], GPU)


def test_cpu_is_cpu_even_on_a_gpu_host():
    assert not choose("cpu", [CUDA, CPU], GPU).cuda


def test_a_cuda_provider_that_did_not_start_warns_under_auto_and_fails_under_cuda():
    auto = check_started(choose("auto", [CUDA, CPU], GPU), CPU, "auto")
    assert not auto.cuda and "did not start" in auto.warning and "did not start" in auto.reason
    with pytest.raises(ProviderError, match="did not start"):
        check_started(choose("cuda", [CUDA, CPU], GPU), CPU, "cuda")
    assert check_started(choose("cuda", [CUDA, CPU], GPU), CUDA, "cuda").cuda


def test_gpus_are_seen_by_their_device_nodes_unless_hidden(monkeypatch):
    from swin_serve.server.runtime import providers

    monkeypatch.setattr(providers.glob, "glob", lambda pattern: ["/dev/nvidia1", "/dev/nvidia0"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert providers.visible_gpus() == ["/dev/nvidia0", "/dev/nvidia1"]
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert providers.visible_gpus() == []


@pytest.mark.anyio
async def test_a_gpu_the_cpu_build_cannot_use_is_reported_in_the_model_card(
    tiny_model_path, serve, monkeypatch, caplog
):
    from swin_serve.server.http.app import create_app
    from swin_serve.server.runtime import providers
    from swin_serve.server.settings import Settings

    monkeypatch.setattr(providers, "visible_gpus", lambda: ["/dev/nvidia0"])
    app = create_app(Settings(model_path=tiny_model_path, providers="auto"))
    async with serve(app) as client:
        card = (await client.get("/v1/models")).json()
    assert card["provider"] == CPU
    assert "a GPU is visible (/dev/nvidia0)" in card["provider_warning"]
    assert any("a GPU is visible" in r.getMessage() for r in caplog.records)

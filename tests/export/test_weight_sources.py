"""Where exported weights come from: a user's checkpoint, official (offline here), auto, random."""

from __future__ import annotations

import torch

import swin_serve.model.weights as weights_source
from swin_serve.export import manifest
from swin_serve.export.__main__ import main as export_main
from swin_serve.export.verify import main as verify_main
from swin_serve.model import DownloadError, build_model, sha256_file

MICRO = "swin_micro_patch4_window4_64"


def test_export_from_a_users_official_format_checkpoint(tmp_path, capsys):
    torch.manual_seed(1)
    trained = build_model(MICRO)
    weights_source.randomize(trained, seed=123)
    ckpt = tmp_path / "mine.pth"
    torch.save({"model": trained.state_dict()}, ckpt)
    out = tmp_path / "out"
    rc = export_main(
        [
            "--variant",
            MICRO,
            "--checkpoint",
            str(ckpt),
            "--out",
            str(out),
            "--parity-batch-sizes",
            "1,3",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    info = manifest.read(out / f"{MICRO}.onnx")
    assert info.weights.model_dump(exclude_unset=True) == {
        "source": "file",
        "random": False,
        "sha256": sha256_file(ckpt),
        "url": None,
        "path": str(ckpt.resolve()),
        "seed": None,
    }
    assert "RANDOM" not in capsys.readouterr().out
    # verify re-loads the recorded checkpoint and checks its SHA-256.
    assert verify_main([str(out / f"{MICRO}.onnx")]) == 0
    torch.save({"model": build_model(MICRO).state_dict()}, ckpt)  # a different file, same path
    assert verify_main([str(out / f"{MICRO}.onnx")]) == 1
    assert "SHA-256" in capsys.readouterr().err


def _offline(*args, **kwargs):
    raise DownloadError("could not download https://example.invalid/x.pth (offline?)")


def test_official_weights_offline_fail_with_a_clear_message(monkeypatch):
    monkeypatch.setattr(weights_source, "download_weights", _offline)
    model = build_model("swin_tiny_patch4_window7_224")
    try:
        weights_source.load_weights(model, "official", variant="swin_tiny_patch4_window7_224")
    except weights_source.WeightsError as exc:
        assert "official weights" in str(exc) and "offline?" in str(exc)
    else:
        raise AssertionError("official weights cannot load offline")


def test_auto_falls_back_to_random_weights_loudly(monkeypatch):
    monkeypatch.setattr(weights_source, "download_weights", _offline)
    warnings = []
    tiny = "swin_tiny_patch4_window7_224"
    model = build_model(tiny)
    info = weights_source.load_weights(model, "auto", variant=tiny, on_fallback=warnings.append)
    assert info.random is True and info.source == "random"
    assert len(warnings) == 1 and "RANDOM WEIGHTS" in warnings[0] and "offline?" in warnings[0]


def test_random_weights_are_reproducible_from_the_seed_and_have_non_trivial_biases():
    a, b = build_model(MICRO), build_model(MICRO)
    weights_source.randomize(a, seed=7)
    weights_source.randomize(b, seed=7)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert a.head.bias.abs().min() > 0 and not torch.allclose(
        a.norm.weight, torch.ones_like(a.norm.weight)
    )


def test_a_hub_id_is_told_to_be_downloaded_first(tmp_path, monkeypatch):
    import pytest

    monkeypatch.chdir(tmp_path)  # no folder of that name here
    model = build_model("swin_micro_patch4_window4_64")
    with pytest.raises(weights_source.WeightsError, match=r"hf download org/swin-ft --local-dir"):
        weights_source.load_weights(model, "org/swin-ft", variant="swin_micro_patch4_window4_64")
    for path in ("nope.pth", "runs/best.pth.tar"):  # a file's path, missing: no Hub advice
        with pytest.raises(weights_source.WeightsError) as plain:
            weights_source.load_weights(model, path, variant="swin_micro_patch4_window4_64")
        assert "Hub" not in str(plain.value)


def test_official_weights_are_known_per_preset_and_head():
    from swin_serve.model.download import has_official_weights

    assert has_official_weights("swin_tiny_patch4_window7_224")
    assert has_official_weights("swin_base_patch4_window7_224", num_classes=21841)
    assert not has_official_weights("swin_tiny_patch4_window7_224", num_classes=10)
    assert not has_official_weights("swin_micro_patch4_window4_64")

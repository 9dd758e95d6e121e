"""Which transform an export records: flags over the checkpoint's own config over the official
rule, and a refusal naming the field for anything that cannot be reproduced exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swin_serve.artifact.contract import IMAGENET_MEAN, IMAGENET_STD
from swin_serve.export.__main__ import parse_args
from swin_serve.export.preprocessing import TransformFlags, decide_transform
from swin_serve.export.transform_configs import TransformConfigError
from tests.support.processors import clip_processor

HALF = (0.5, 0.5, 0.5)


def hf_folder(tmp_path: Path, processor: dict, weights: str = "model.safetensors") -> Path:
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    (folder / weights).write_bytes(b"")
    (folder / "config.json").write_text(json.dumps({"model_type": "swin"}))
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def timm_folder(tmp_path: Path, pretrained_cfg: dict) -> Path:
    folder = tmp_path / "timm"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"")
    config = {"architecture": "swin_tiny_patch4_window7_224", "pretrained_cfg": pretrained_cfg}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_official_rule_crops_at_224_and_squashes_at_384():
    t224 = decide_transform("official", 224, TransformFlags())
    assert (t224.spec.resize_mode, t224.spec.resize_shorter, t224.spec.crop_size) == (
        "crop",
        256,
        224,
    )
    assert t224.spec.interpolation == "bicubic" and t224.spec.crop_offset == "round"
    assert (t224.spec.mean, t224.spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert t224.source == "the official evaluation at 224px (crop_pct 0.875)"
    t384 = decide_transform("official", 384, TransformFlags())
    assert (t384.spec.resize_mode, t384.spec.resize_shorter, t384.spec.crop_size) == (
        "squash",
        384,
        384,
    )
    assert t384.source == "the official evaluation at 384px (no crop)"


def test_the_official_384_presets_export_uncropped():
    """`--checkpoint official` of a *_384 preset: the transform its accuracy was measured with."""
    options = parse_args(["--variant", "swin_base_patch4_window12_384", "--checkpoint", "official"])
    spec = decide_transform(options.checkpoint, 384, options.transform).spec
    assert spec.resize_mode == "squash" and spec.resize_shorter == spec.crop_size == 384


def test_a_checkpoint_file_without_a_config_gets_the_official_rule(tmp_path):
    checkpoint = tmp_path / "swin.pth"
    checkpoint.write_bytes(b"")
    assert decide_transform(str(checkpoint), 224, TransformFlags()).spec.resize_shorter == 256


def test_a_huggingface_processor_beside_the_weights_wins_over_the_official_rule(tmp_path):
    folder = hf_folder(
        tmp_path,
        {
            "image_processor_type": "ViTImageProcessor",
            "size": {"height": 128, "width": 128},
            "resample": 2,
            "image_mean": list(HALF),
            "image_std": list(HALF),
        },
    )
    for checkpoint in (folder, folder / "model.safetensors"):
        t = decide_transform(str(checkpoint), 128, TransformFlags())
        assert t.spec.resize_mode == "squash" and t.spec.resize_shorter == 128
        assert t.spec.interpolation == "bilinear" and t.spec.mean == t.spec.std == HALF
        assert t.source == "the checkpoint's preprocessor_config.json (transformers)"


def test_a_vit_processor_leaves_out_fields_at_vits_defaults(tmp_path):
    folder = hf_folder(tmp_path, {"image_processor_type": "ViTImageProcessor", "size": 224})
    spec = decide_transform(str(folder), 224, TransformFlags()).spec
    assert (spec.resize_mode, spec.interpolation, spec.mean, spec.scale) == (
        "squash",
        "bilinear",
        HALF,
        pytest.approx(255.0),
    )


def test_shortest_edge_with_a_centre_crop_is_a_crop_with_transformers_floor_offset(tmp_path):
    processor = clip_processor(146, 128, mean=[0.48, 0.45, 0.40], std=[0.26, 0.26, 0.27])
    spec = decide_transform(str(hf_folder(tmp_path, processor)), 128, TransformFlags()).spec
    assert (spec.resize_mode, spec.resize_shorter, spec.crop_size, spec.crop_offset) == (
        "crop",
        146,
        128,
        "floor",
    )
    assert spec.interpolation == "bicubic" and spec.std == (0.26, 0.26, 0.27)


def test_no_rescale_and_no_normalise_are_kept(tmp_path):
    processor = {"size": 64, "do_rescale": False, "do_normalize": False}
    spec = decide_transform(str(hf_folder(tmp_path, processor)), 64, TransformFlags()).spec
    assert spec.scale == 1.0 and spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("processor", "field"),
    [
        ({"size": {"height": 224, "width": 200}}, "'size'"),
        ({"size": {"shortest_edge": 224}}, "'size'"),
        ({"size": 224, "crop_pct": 0.9}, "'crop_pct'"),
        ({"size": 224, "do_pad": True}, "'do_pad'"),
        ({"size": 224, "do_resize": False}, "'do_resize'"),
        ({"size": 224, "resample": 7}, "'resample'"),
        ({"size": 224, "image_mean": [0.5, 0.5]}, "'image_mean'"),
        ({"size": 224, "auto_map": {"AutoImageProcessor": "x.Y"}}, "'auto_map'"),
        ({"image_processor_type": "ConvNextImageProcessor", "size": 224}, "'do_resize'"),
        ({"size": {"height": "abc", "width": "abc"}}, "'size'"),
        ({"size": 0}, "'size'"),
        ({"size": 224, "rescale_factor": float("nan")}, "'rescale_factor'"),
        ({"size": 224, "image_std": [0.5, 0, 0.5]}, "'image_std'"),
        ({"size": 224, "image_mean": [float("nan"), 0.5, 0.5]}, "'image_mean'"),
        ({"size": 224, "image_std": [float("inf"), 0.5, 0.5]}, "'image_std'"),
        ({"size": 224, "do_center_crop": True, "crop_size": 0}, "'crop_size'"),
    ],
)
def test_a_processor_that_cannot_be_reproduced_is_refused_naming_the_field(
    tmp_path, processor, field
):
    with pytest.raises(TransformConfigError, match=field):
        decide_transform(str(hf_folder(tmp_path, processor)), 224, TransformFlags())


def test_a_processor_for_another_input_size_is_refused_with_the_way_out(tmp_path):
    folder = hf_folder(tmp_path, {"size": {"height": 224, "width": 224}})
    with pytest.raises(TransformConfigError, match="--img-size 224"):
        decide_transform(str(folder), 128, TransformFlags())


def test_a_timm_pretrained_cfg_gives_its_crop_pct_and_crop_mode(tmp_path):
    cfg = {
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "crop_mode": "center",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    t = decide_transform(str(timm_folder(tmp_path, cfg)), 224, TransformFlags())
    assert (t.spec.resize_mode, t.spec.resize_shorter, t.spec.crop_offset) == ("crop", 248, "round")
    assert t.source == "the checkpoint's config.json pretrained_cfg (timm)"
    squash = decide_transform(
        str(timm_folder(tmp_path, {**cfg, "crop_mode": "squash", "crop_pct": 1.0})),
        224,
        TransformFlags(),
    )
    assert squash.spec.resize_mode == "squash" and squash.spec.resize_shorter == 224


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"crop_mode": "border"}, "'crop_mode'"),
        ({"interpolation": "random"}, "'interpolation'"),
        ({"input_size": [3, 224, 192]}, "'input_size'"),
        ({"input_size": [3, "a", "a"]}, "'input_size'"),
        ({"crop_pct": float("nan")}, "'crop_pct'"),
        ({"crop_pct": "0.9"}, "'crop_pct'"),
        ({"crop_pct": 1.5}, "'crop_pct'"),
        ({"crop_pct": -0.9}, "'crop_pct'"),
        ({"mean": [float("nan"), 0.4, 0.4]}, "'mean'"),
    ],
)
def test_a_timm_cfg_that_cannot_be_reproduced_is_refused(tmp_path, change, field):
    cfg = {"input_size": [3, 224, 224], "crop_pct": 0.9, **change}
    with pytest.raises(TransformConfigError, match=field):
        decide_transform(str(timm_folder(tmp_path, cfg)), 224, TransformFlags())


def test_flags_override_the_checkpoints_fields_and_say_so(tmp_path):
    folder = hf_folder(tmp_path, {"size": 128, "image_mean": list(HALF), "image_std": list(HALF)})
    flags = ["--resize", "crop", "--crop-pct", "0.875", "--interpolation", "bicubic"]
    flags += ["--mean", "imagenet", "--std", "imagenet"]
    options = parse_args(
        ["--variant", "swin_micro_patch4_window4_64", "--checkpoint", str(folder), *flags]
    )
    t = decide_transform(options.checkpoint, 128, options.transform)
    assert (t.spec.resize_mode, t.spec.resize_shorter, t.spec.interpolation) == (
        "crop",
        146,
        "bicubic",
    )
    assert (t.spec.mean, t.spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert t.source.startswith(
        "export flags (--resize, --crop-pct, --interpolation, --mean, --std)"
    )
    assert t.source.endswith("over the checkpoint's preprocessor_config.json (transformers)")
    only_std = parse_args(
        ["--variant", "swin_micro_patch4_window4_64", "--checkpoint", str(folder), "--std", "1,1,1"]
    )
    spec = decide_transform(only_std.checkpoint, 128, only_std.transform).spec
    assert spec.resize_mode == "squash" and spec.mean == HALF and spec.std == (1.0, 1.0, 1.0)


def test_an_int_size_of_another_processor_class_needs_default_to_square_written(tmp_path):
    """CLIP and others read an int `size` as the shorter side, ViT as a square: a class whose
    default is not known here must say which."""
    clip = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": 73}
    clip |= {"do_center_crop": True, "crop_size": 64, "resample": 3, "do_rescale": True}
    clip |= {"rescale_factor": 1 / 255, "do_normalize": True}
    clip |= {"image_mean": list(HALF), "image_std": list(HALF)}
    with pytest.raises(TransformConfigError, match="'default_to_square'"):
        decide_transform(str(hf_folder(tmp_path, clip)), 64, TransformFlags())
    written = hf_folder(tmp_path, {**clip, "default_to_square": False})
    spec = decide_transform(str(written), 64, TransformFlags()).spec
    assert (spec.resize_mode, spec.resize_shorter, spec.crop_size) == ("crop", 73, 64)
    no_crop = {k: v for k, v in clip.items() if k != "do_center_crop"}
    with pytest.raises(TransformConfigError, match="'do_center_crop'"):
        decide_transform(
            str(hf_folder(tmp_path, {**no_crop, "default_to_square": False})), 64, TransformFlags()
        )


def test_crop_pct_over_a_huggingface_crop_keeps_its_floor_offset(tmp_path):
    processor = {"size": {"shortest_edge": 73}, "do_center_crop": True, "crop_size": 64}
    folder = str(hf_folder(tmp_path, processor))
    spec = decide_transform(folder, 64, TransformFlags(crop_pct=0.875)).spec
    assert (spec.resize_shorter, spec.crop_offset) == (73, "floor")


def test_a_fast_processor_is_served_with_the_pil_arithmetic_and_says_so(tmp_path):
    folder = hf_folder(tmp_path, {"image_processor_type": "ViTImageProcessorFast", "size": 64})
    t = decide_transform(str(folder), 64, TransformFlags())
    assert "ViTImageProcessorFast" in t.source and "torchvision" in t.source


@pytest.mark.parametrize(
    "flags",
    [
        ["--crop-pct", "1.5"],
        ["--crop-pct", "0"],
        ["--mean", "0.5,0.5"],
        ["--std", "0,1,1"],
        ["--mean", "nan,0.5,0.5"],
        ["--std", "inf,1,1"],
    ],
)
def test_bad_transform_flags_are_usage_errors(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--variant", "swin_micro_patch4_window4_64", *flags])
    assert exc.value.code == 2
    assert flags[0] in capsys.readouterr().err

"""The server's pixel tensors against the frameworks whose transforms it reproduces, on real photos.

- transformers: its own image processors, built from a `preprocessor_config.json` by
  `AutoImageProcessor` (here the PIL backend: without torchvision, transformers falls back to
  it; the torchvision backend resamples with torch instead of PIL, see docs/export.md);
- the official evaluation (`data/build.py: build_transform`), written here with PIL and NumPy;
- timm's `transforms_imagenet_eval`, its documented arithmetic written here likewise.

Every path makes the same PIL resize call, so the tensors agree to float32 rounding of the
normalisation: the bound is 1e-5, against about 0.017 for one grey level.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor

from swin_serve.artifact.contract import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec
from swin_serve.artifact.preprocess import to_model_input
from swin_serve.export.preprocessing import TransformFlags, decide_transform
from swin_serve.export.transform_configs import huggingface_transform, timm_transform
from tests.support.processors import clip_processor

BOUND = 1e-5
PHOTOS = ["flower.jpg", "flower2.jpg", "hopper.jpg"]  # 480x360, 300x225, 128x128
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@pytest.fixture(scope="module")
def photos(images_dir) -> list[Image.Image]:
    """The photos, and a tall one whose odd sizes make the two crop-offset rules differ."""
    images = []
    for name in PHOTOS:
        with Image.open(images_dir / name) as im:
            images.append(im.convert("RGB"))
    tall = images[0].resize((201, 333), Image.Resampling.BICUBIC)
    return [*images, tall]


def spec_of(fields: dict) -> PreprocessSpec:
    return PreprocessSpec.model_validate({"color": "RGB", "layout": "NCHW", **fields})


def normalise(pixels: np.ndarray, mean, std, scale: float = 255.0) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32, as ToTensor + Normalize."""
    x = (pixels.astype(np.float64) / scale - np.asarray(mean)) / np.asarray(std)
    return x.transpose(2, 0, 1).astype(np.float32)


HF_CONFIGS = {
    "vit squash, half mean/std, bilinear": {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 128, "width": 128},
        "resample": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
    "vit squash, imagenet, bicubic (the hub's Swin files)": {
        "image_processor_type": "ViTImageProcessor",
        "size": 224,
        "resample": 3,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    },
    "clip shortest edge + centre crop": clip_processor(
        147, 128, mean=[0.4815, 0.4578, 0.4082], std=[0.2686, 0.2613, 0.2758]
    ),
}


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_pixels_equal_transformers_image_processor(name, photos, tmp_path):
    config = HF_CONFIGS[name]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    spec = spec_of(huggingface_transform(config, name))
    for rgb in photos:
        theirs = processor(images=rgb, return_tensors="np")["pixel_values"][0]
        ours = to_model_input(rgb, spec)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= BOUND, (name, rgb.size)


def official_build_transform(rgb: Image.Image, size: int) -> np.ndarray:
    """data/build.py, is_train=False: TEST.CROP (every size below 384 in the official configs)
    resizes the shorter side to int(256 / 224 * size) and centre-crops; else Resize((size, size))."""
    if size < 384:
        short = int((256 / 224) * size)
        w, h = rgb.size
        resized_size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        resized = rgb.resize(resized_size, Image.Resampling.BICUBIC)
        left = round((resized_size[0] - size) / 2.0)
        top = round((resized_size[1] - size) / 2.0)
        cropped = resized.crop((left, top, left + size, top + size))
    else:
        cropped = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return normalise(np.asarray(cropped), IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize("size", [224, 384])
def test_pixels_equal_the_official_evaluation_transform(size, photos):
    spec = decide_transform("official", size, TransformFlags()).spec
    for rgb in photos:
        diff = np.abs(to_model_input(rgb, spec) - official_build_transform(rgb, size)).max()
        assert diff <= BOUND, (size, rgb.size)


def timm_eval(rgb: Image.Image, size: int, crop_pct: float, mode: str, filt: str) -> np.ndarray:
    """timm.data.transforms_imagenet_eval: scale_size = floor(size / crop_pct); "center" is
    Resize(scale_size) (shorter side) + CenterCrop(size), "squash" Resize((scale, scale)) + the
    same crop; then ToTensor + Normalize."""
    scale = math.floor(size / crop_pct)
    w, h = rgb.size
    if mode == "squash":
        target = (scale, scale)
    else:
        target = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    resized = rgb.resize(target, FILTERS[filt])
    left, top = round((target[0] - size) / 2.0), round((target[1] - size) / 2.0)
    cropped = resized.crop((left, top, left + size, top + size))
    return normalise(np.asarray(cropped), IMAGENET_MEAN, IMAGENET_STD)


@pytest.mark.parametrize(
    ("crop_pct", "mode", "filt"),
    [(0.9, "center", "bicubic"), (0.95, "squash", "bilinear"), (1.0, "squash", "bicubic")],
)
def test_pixels_equal_timms_eval_transform(crop_pct, mode, filt, photos):
    cfg = {"input_size": [3, 224, 224], "crop_pct": crop_pct, "crop_mode": mode}
    spec = spec_of(timm_transform({**cfg, "interpolation": filt}, "timm"))
    for rgb in photos:
        diff = np.abs(to_model_input(rgb, spec) - timm_eval(rgb, 224, crop_pct, mode, filt)).max()
        assert diff <= BOUND, (crop_pct, mode, rgb.size)


def test_a_manifest_written_before_resize_mode_is_served_as_before(photos):
    """The old fixed rule: shorter side to int(S / 0.875), bicubic, torchvision's crop offsets."""
    legacy = PreprocessSpec.model_validate(
        {
            "resize_shorter": 256,
            "crop_size": 224,
            "crop_pct": 0.875,
            "interpolation": "bicubic",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        }
    )
    assert (legacy.resize_mode, legacy.crop_offset) == ("crop", "round")
    for rgb in photos:
        assert np.abs(to_model_input(rgb, legacy) - official_build_transform(rgb, 224)).max() <= (
            BOUND
        )


def test_the_crop_offset_rules_really_differ_on_the_tall_photo(photos):
    """Guards the fixture: with size - crop odd, round and floor start the crop a row apart."""
    fields = huggingface_transform(HF_CONFIGS["clip shortest edge + centre crop"], "clip")
    floor, rounded = spec_of(fields), spec_of({**fields, "crop_offset": "round"})
    tall = photos[-1]
    assert np.abs(to_model_input(tall, floor) - to_model_input(tall, rounded)).max() > 0.1

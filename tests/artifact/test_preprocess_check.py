"""The golden preprocessing check: the stored image, its bound in grey levels, and the report."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from swin_serve.artifact.golden import Golden, encode_golden, golden_inputs, run_self_check
from swin_serve.artifact.preprocess_check import (
    MAX_LEVELS,
    check_preprocessing,
    golden_image,
    transform,
)
from swin_serve.export.preprocessing import TransformFlags, decide_transform

SPEC = decide_transform("official", 64, TransformFlags()).spec  # crop 73 -> 64, bicubic
CPU = {"avx2": True}


@pytest.fixture(scope="module")
def recorded() -> tuple[bytes, np.ndarray]:
    image = golden_image(SPEC)
    return image, transform(image, SPEC)


def test_the_golden_image_is_a_deterministic_non_square_png_larger_than_the_input():
    spec = decide_transform("official", 224, TransformFlags()).spec
    image = golden_image(spec)
    assert image == golden_image(spec)
    with Image.open(io.BytesIO(image)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.width != im.height and min(im.size) > 256  # a crop at 224 downsamples it
    assert len(image) < 400_000


def test_the_same_transform_passes_within_float_rounding(recorded):
    image, pixels = recorded
    report = check_preprocessing(image, pixels, SPEC, Image.__version__)
    assert report.status == "passed" and report.max_levels < 1e-3
    assert report.image == "PNG 104x83" and report.took_ms >= 0


def test_another_filter_fails_and_the_message_names_preprocessing_and_pillow(recorded):
    image, pixels = recorded
    bilinear = SPEC.model_copy(update={"interpolation": "bilinear"})
    report = check_preprocessing(image, pixels, bilinear, "9.9.9")
    assert report.status == "failed" and report.max_levels > 1
    message = report.failure()
    assert message.startswith("preprocessing:") and "9.9.9" in message
    assert Image.__version__ in message


@pytest.mark.parametrize("size", [64, 96, 224, 256])
@pytest.mark.parametrize("rule", ["round", "floor"])
def test_the_other_crop_offset_rule_fails(size, rule):
    """The two rules agree unless size - crop is 3 modulo 4 (round halves to even): the golden
    image's width is chosen so that they do not."""
    spec = decide_transform("official", size, TransformFlags()).spec
    spec = spec.model_copy(update={"crop_offset": rule})
    other = spec.model_copy(update={"crop_offset": "floor" if rule == "round" else "round"})
    image = golden_image(spec)
    report = check_preprocessing(image, transform(image, spec), other, "x")
    assert report.status == "failed", report


def test_one_value_one_grey_level_off_fails_and_float_noise_passes(recorded):
    """Pins the bound: any pixel changed fails; float32 rounding of the arithmetic does not."""
    image, pixels = recorded
    one_level = pixels.copy()
    one_level[1, 10, 20] += np.float32(1.0 / (255.0 * SPEC.std[1]))
    failed = check_preprocessing(image, one_level, SPEC, "x")
    assert failed.status == "failed" and failed.changed_values == 1
    assert failed.max_levels == pytest.approx(1.0, rel=1e-4) and failed.bound_levels == MAX_LEVELS
    noisy = pixels + np.float32(1e-6)
    assert check_preprocessing(image, noisy, SPEC, "x").status == "passed"


def test_an_undecodable_golden_image_fails_rather_than_crashing(recorded):
    _, pixels = recorded
    report = check_preprocessing(b"not an image", pixels, SPEC, "x")
    assert report.status == "failed" and "refused" in report.failure()


def _run_check(golden: Golden):
    outputs = {"logits": golden.outputs["logits"]}
    return run_self_check(
        lambda x: outputs,
        encode_golden(golden),
        precision="fp32",
        provider="CPUExecutionProvider",
        cpu=CPU,
        spec=SPEC,
    )


def test_the_self_check_carries_the_preprocessing_result_and_fails_on_it(recorded):
    image, pixels = recorded
    x = golden_inputs(16)
    answers = {"logits": x.reshape(2, -1)[:, :10]}
    passed = _run_check(Golden(x, answers, image, pixels, Image.__version__))
    assert passed.status == "passed" and passed.preprocess.status == "passed"
    wrong = _run_check(Golden(x, answers, image, pixels + np.float32(0.05), "x"))
    assert wrong.status == "failed" and wrong.failures.keys() == {"preprocessing"}
    assert "the golden self-check failed: preprocessing:" in wrong.failure_message("model m")


def test_an_artefact_without_a_golden_image_skips_only_that_part():
    x = golden_inputs(16)
    report = _run_check(Golden(x, {"logits": x.reshape(2, -1)[:, :10]}))
    assert report.status == "passed"
    assert report.preprocess.status == "skipped" and "re-export" in report.preprocess.reason


def test_the_golden_image_survives_the_metadata_encoding(recorded):
    from swin_serve.artifact.golden import decode_golden

    image, pixels = recorded
    x = golden_inputs(16)
    back = decode_golden(encode_golden(Golden(x, {"logits": x[:, 0, 0]}, image, pixels, "13.0")))
    assert back.image == image and back.pillow == "13.0"
    np.testing.assert_array_equal(back.pixels, pixels)

"""The golden self-check: its inputs, its codec, its tolerances, and what the server reports."""

from __future__ import annotations

import numpy as np
import pytest

from swin_serve.artifact.contract import GOLDEN_KEY
from swin_serve.artifact.cpu import cpu_features
from swin_serve.artifact.golden import (
    Golden,
    SelfCheckFailed,
    Tolerance,
    compare,
    decode_golden,
    encode_golden,
    golden_inputs,
    run_self_check,
    tolerance_for,
)
from swin_serve.server.http.app import create_app
from swin_serve.server.settings import Settings

pytestmark = pytest.mark.anyio
CPU = {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "amx_int8": None}


def _golden(rows: int = 2) -> Golden:
    x = golden_inputs(16, count=rows)
    return Golden(x, {"logits": x.reshape(rows, -1)[:, :10] * 3.0, "embedding": x[:, 0, 0, :8]})


def _check(golden: Golden, run, precision: str = "fp32"):
    return run_self_check(
        run, encode_golden(golden), precision=precision, provider="CPUExecutionProvider", cpu=CPU
    )


def test_golden_inputs_are_deterministic_exact_in_fp16_and_image_like():
    a, b = golden_inputs(224), golden_inputs(224)
    assert a.shape == (2, 3, 224, 224) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # same seed, same process: the same numbers exactly
    np.testing.assert_array_equal(a.astype(np.float16).astype(np.float32), a)
    assert 0.8 < a.std() < 1.3  # the scale of a normalised photo
    assert not np.array_equal(golden_inputs(224, seed=1), a)


def test_golden_round_trips_through_its_text_encoding():
    golden = _golden()
    back = decode_golden(encode_golden(golden))
    np.testing.assert_array_equal(back.inputs, golden.inputs)
    assert back.outputs.keys() == golden.outputs.keys()
    for name, value in golden.outputs.items():
        np.testing.assert_array_equal(back.outputs[name], value.astype(np.float32))


def test_a_faithful_model_passes_and_a_changed_one_fails_naming_the_output():
    golden = _golden()
    same = _check(golden, lambda x: {k: v + 1e-7 for k, v in golden.outputs.items()})
    assert same.status == "passed" and same.inputs == 2
    changed = {**golden.outputs, "logits": golden.outputs["logits"] * 1.01}
    report = _check(golden, lambda x: changed)
    assert report.status == "failed" and list(report.failures) == ["logits"]
    message = report.failure_message("m.onnx")
    assert "output 'logits'" in message and "embedding" not in message
    assert "max_rel_diff 0.00999" in message and "(bound 0.0001)" in message and "m.onnx" in message


@pytest.mark.parametrize("bad_row", [0, 1])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_one_bad_golden_input_fails_the_check_however_good_the_other(precision, bad_row):
    # Each score is the worst over the golden inputs: one faithful row must not hide a broken
    # one, whichever row it is and whichever precision's bounds judge it.
    golden = _golden()
    broken = {k: v.copy() for k, v in golden.outputs.items()}
    broken["logits"][bad_row] *= -1.0  # wrong in direction, scale and values at once
    report = _check(golden, lambda x: broken, precision)
    assert report.status == "failed" and list(report.failures) == ["logits"], report.failures
    scores = report.outputs["logits"]
    assert scores["min_cosine"] < -0.99 and scores["max_rel_diff"] > 0.5, scores
    assert report.outputs["embedding"]["min_cosine"] > 0.999999


@pytest.mark.parametrize("bad_row", [0, 1])
def test_one_golden_input_off_in_scale_only_fails_on_its_scale_error(bad_row):
    # Right direction, wrong size: only the scale error sees it, and it too is the worst row's.
    golden = _golden()
    scaled = {k: v.copy() for k, v in golden.outputs.items()}
    scaled["logits"][bad_row] *= 1.5
    report = _check(golden, lambda x: scaled, "int8")
    assert report.status == "failed" and list(report.failures) == ["logits"], report.failures
    scores = report.outputs["logits"]
    assert scores["min_cosine"] > 0.999999 and scores["scale_error"] == pytest.approx(0.5), scores


def test_nan_fails_every_metric():
    golden = _golden()
    nan = {k: np.full_like(v, np.nan) for k, v in golden.outputs.items()}
    for precision in ("fp32", "fp16", "int8"):
        assert _check(golden, lambda x, nan=nan: nan, precision).status == "failed"


def test_reduced_precisions_are_judged_by_direction_and_scale():
    golden = _golden()
    rng = np.random.default_rng(0)
    noisy = {
        k: v + 0.02 * np.abs(v).mean() * rng.standard_normal(v.shape)
        for k, v in golden.outputs.items()
    }
    # Rounding-sized noise: far outside fp32's bound, well inside int8's.
    assert _check(golden, lambda x: noisy, "fp32").status == "failed"
    assert _check(golden, lambda x: noisy, "int8").status == "passed"
    scores = compare(golden.outputs, noisy)
    assert all(0.99 < s["min_cosine"] < 1.0 and s["scale_error"] < 0.02 for s in scores.values())
    flipped = {k: -v for k, v in golden.outputs.items()}
    assert _check(golden, lambda x: flipped, "int8").status == "failed"
    # A cosine cannot see a change of scale, such as weights multiplied after export.
    for precision in ("fp16", "int8"):
        scaled = {k: 1.05 * v for k, v in golden.outputs.items()}
        report = _check(golden, lambda x, scaled=scaled: scaled, precision)
        assert report.status == "failed", precision
        assert all("scale_error" in " ".join(f) for f in report.failures.values())


def _turned(golden: Golden, cosine: float) -> dict[str, np.ndarray]:
    """Every output row turned to ``cosine`` of its golden direction, its norm kept."""
    rng = np.random.default_rng(1)
    turned = {}
    for name, ref in golden.outputs.items():
        a = ref.reshape(len(ref), -1).astype(np.float64)
        noise = rng.standard_normal(a.shape)
        unit = a / np.linalg.norm(a, axis=1, keepdims=True)
        perp = noise - (noise * unit).sum(1, keepdims=True) * unit  # orthogonal to each row
        perp /= np.linalg.norm(perp, axis=1, keepdims=True)
        b = np.linalg.norm(a, axis=1, keepdims=True) * (
            cosine * unit + np.sqrt(1 - cosine**2) * perp
        )
        turned[name] = b.reshape(ref.shape).astype(np.float32)
    return turned


def test_int8_fails_a_turned_answer_of_the_right_scale_below_cosine_0_99():
    golden = _golden()
    # Between a loose bound (0.9) and the real one: only the cosine bound can fail these.
    for cosine in (0.95, 0.985):
        report = _check(golden, lambda x, c=cosine: _turned(golden, c), "int8")
        assert report.status == "failed", (cosine, report.outputs)
        assert all(f == [f[0]] and "min_cosine" in f[0] for f in report.failures.values())
    assert _check(golden, lambda x: _turned(golden, 0.995), "int8").status == "passed"


def test_unreadable_or_mismatched_golden_answers_are_refused_clearly():
    golden = _golden()
    for unreadable in ("not base64!", ""):
        with pytest.raises(SelfCheckFailed, match="cannot be read"):
            run_self_check(
                lambda x: golden.outputs, unreadable, precision="fp32", provider="X", cpu=CPU
            )
    wrong_shape = {**golden.outputs, "logits": golden.outputs["logits"][:, :5]}
    with pytest.raises(SelfCheckFailed, match="output 'logits': the model gives"):
        _check(golden, lambda x: wrong_shape)
    missing = {k: v for k, v in golden.outputs.items() if k != "embedding"}
    with pytest.raises(SelfCheckFailed, match="output 'embedding'"):
        _check(golden, lambda x: missing)


def test_tolerances_per_precision_and_provider():
    # Every bound, and every bound left unchecked, pinned (the docstring of src/swin_serve/artifact/golden.py).
    assert tolerance_for("fp32", "CPUExecutionProvider") == Tolerance(max_rel_diff=1e-4)
    # TF32 on CUDA has fp16's mantissa, so it gets fp16's bounds.
    assert tolerance_for("fp32", "CUDAExecutionProvider") == tolerance_for("fp16", "X")
    assert tolerance_for("fp16", "CUDAExecutionProvider") == Tolerance(
        min_cosine=0.999, max_scale_error=0.01
    )
    assert tolerance_for("int8", "CPUExecutionProvider") == Tolerance(
        min_cosine=0.99, max_scale_error=0.02
    )
    assert tolerance_for("bf16", "OpenVINO CPU") == Tolerance(
        min_cosine=0.9995, max_scale_error=0.01
    )
    with pytest.raises(SelfCheckFailed, match="int4"):
        tolerance_for("int4", "CPUExecutionProvider")


def test_a_model_without_golden_answers_is_reported_as_skipped():
    report = run_self_check(
        lambda x: pytest.fail("nothing to run"), None, precision="fp32", provider="X", cpu=CPU
    )
    assert report.status == "skipped" and GOLDEN_KEY in report.reason


def test_cpu_features_report_every_key_as_bool_or_unknown():
    features = cpu_features()
    assert set(features) == {
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_int8",
        "amx_bf16",
    }
    assert all(v in (True, False, None) for v in features.values())


async def test_the_server_reports_its_self_check_with_what_it_ran_on(tiny_model_path, serve):
    app = create_app(Settings(model_path=tiny_model_path, providers="cpu", max_batch_size=2))
    async with serve(app) as client:
        info = (await client.get("/v1/models")).json()
    check = info["self_check"]
    assert check["status"] == "passed"
    assert check["precision"] == "fp32" and check["provider"] == "CPUExecutionProvider"
    assert check["cpu"] == cpu_features()
    assert check["tolerance"] == {"max_rel_diff": 1e-4, "min_cosine": None, "max_scale_error": None}
    assert set(check["outputs"]) == set(info["outputs"]) and check["failures"] == {}
    assert all(0 <= v["max_rel_diff"] <= 1e-4 for v in check["outputs"].values())
    assert check["inputs"] == 2 and check["took_ms"] > 0


async def test_a_fake_engine_without_golden_answers_reports_skipped(make_app, serve):
    async with serve(make_app()) as client:
        check = (await client.get("/v1/models")).json()["self_check"]
    assert check["status"] == "skipped" and check["provider"] == "FakeExecutionProvider"


def test_every_lane_of_an_engine_is_checked(tiny_model_path):
    """A hybrid layout runs two programs; a broken narrow lane must fail the check even though
    the wide one is sound."""
    from swin_serve.server.runtime.engines import open_engine
    from swin_serve.server.runtime.selfcheck import check_engine

    engine = open_engine(Settings(model_path=tiny_model_path, providers="cpu", precision="fp32"))
    sound = next(iter(engine.runners().values()))

    def broken(x):
        out = sound(x)
        return {**out, "logits": out["logits"] * 1.5}

    engine.runners = lambda: {"wide": sound, "narrow": broken}
    report = check_engine(engine)
    assert report.status == "failed" and "logits" in report.failures
    engine.runners = lambda: {"wide": sound, "narrow": sound}
    assert check_engine(engine).status == "passed"

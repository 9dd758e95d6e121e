"""SWIN_PRECISION: the plan per machine and file (src/swin_serve/server/runtime/precision.py), what the engine factory
does with it (src/swin_serve/server/runtime/engines.py), and the metadata it reads first (src/swin_serve/artifact/onnx_metadata.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnx
import pytest

from swin_serve.artifact.onnx_metadata import MetadataError, read_metadata
from swin_serve.server.runtime.engine import ModelLoadError
from swin_serve.server.runtime.precision import Machine, PrecisionError, int8_sibling, plan

ZEN4 = Machine(cuda=False, native_bf16=True, int8_fast=True, openvino=True)
ROME = Machine(cuda=False, native_bf16=False, int8_fast=False, openvino=True)
CASCADE_LAKE = Machine(cuda=False, native_bf16=False, int8_fast=True, openvino=True)
NO_OPENVINO = Machine(cuda=False, native_bf16=True, int8_fast=True, openvino=False)
GPU = Machine(cuda=True, native_bf16=True, int8_fast=True, openvino=True)


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    return path


@pytest.fixture
def with_int8(model) -> Path:
    int8_sibling(model).write_bytes(b"")
    return model


@pytest.mark.parametrize(
    ("machine", "has_int8", "expected"),
    [
        (ZEN4, True, ("bf16", "openvino")),
        (ZEN4, False, ("bf16", "openvino")),
        (CASCADE_LAKE, True, ("int8", "onnxruntime")),
        (CASCADE_LAKE, False, ("fp32", "onnxruntime")),
        (ROME, True, ("fp32", "onnxruntime")),
        (NO_OPENVINO, True, ("int8", "onnxruntime")),
        (NO_OPENVINO, False, ("fp32", "onnxruntime")),
        (GPU, True, ("fp32", "onnxruntime")),
    ],
)
def test_auto_takes_native_bf16_then_int8_with_vnni_then_fp32(model, machine, has_int8, expected):
    if has_int8:
        int8_sibling(model).write_bytes(b"")
    chosen = plan("auto", "auto", model, "fp32", machine)
    assert (chosen.precision, chosen.engine) == expected
    assert chosen.reason.startswith("SWIN_PRECISION=auto")
    assert chosen.fallback == (expected[0] != "fp32")
    assert chosen.path == (int8_sibling(model) if expected[0] == "int8" else model)


def test_auto_says_why_it_stays_at_fp32(model):
    reason = plan("auto", "auto", model, "fp32", ROME).reason
    assert "no native bf16" in reason and "no VNNI" in reason
    reason = plan("auto", "auto", model, "fp32", CASCADE_LAKE).reason
    assert "m.int8.onnx" in reason and "--int8" in reason
    reason = plan("auto", "auto", model, "fp32", NO_OPENVINO).reason
    assert "OpenVINO is not installed" in reason and "openvino" in reason
    reason = plan("auto", "onnxruntime", model, "fp32", ZEN4).reason
    assert "SWIN_ENGINE=onnxruntime rules out bf16" in reason
    int8_sibling(model).write_bytes(b"")
    reason = plan("auto", "openvino", model, "fp32", CASCADE_LAKE).reason
    assert "SWIN_ENGINE=openvino rules out int8" in reason


def test_a_named_precision_is_served_or_refused_never_swapped(with_int8):
    assert plan("fp32", "auto", with_int8, "fp32", ZEN4).precision == "fp32"
    assert plan("bf16", "auto", with_int8, "fp32", ZEN4).fallback is False
    assert plan("int8", "auto", with_int8, "fp32", ROME).reason.endswith(
        "(no VNNI or AMX on this CPU: int8 may be no faster than fp32)"
    )
    with pytest.raises(PrecisionError, match="no native bfloat16"):
        plan("bf16", "auto", with_int8, "fp32", ROME)
    with pytest.raises(PrecisionError, match="not installed"):
        plan("bf16", "auto", with_int8, "fp32", NO_OPENVINO)
    with pytest.raises(PrecisionError, match="on CUDA"):
        plan("bf16", "auto", with_int8, "fp32", GPU)
    with pytest.raises(PrecisionError, match="OpenVINO"):
        plan("bf16", "onnxruntime", with_int8, "fp32", ZEN4)


def test_int8_needs_its_file(model):
    with pytest.raises(PrecisionError, match=r"m\.int8\.onnx.*--int8"):
        plan("int8", "auto", model, "fp32", ZEN4)


def test_the_engine_setting(model):
    assert plan("fp32", "openvino", model, "fp32", ROME).engine == "openvino"
    assert plan("auto", "openvino", model, "fp32", ROME).engine == "openvino"
    # auto with SWIN_ENGINE=onnxruntime never picks bf16, which needs OpenVINO.
    assert plan("auto", "onnxruntime", model, "fp32", ZEN4).precision == "fp32"
    with pytest.raises(PrecisionError, match="not installed"):
        plan("fp32", "openvino", model, "fp32", NO_OPENVINO)


def test_a_file_of_another_precision_is_served_as_it_is(model):
    chosen = plan("bf16", "auto", model, "int8", ZEN4)
    assert (chosen.precision, chosen.engine, chosen.path) == ("int8", "onnxruntime", model)
    assert "applies to float32 files" in chosen.reason
    assert plan("auto", "auto", model, "fp16", GPU).precision == "fp16"
    with pytest.raises(PrecisionError, match="ONNX Runtime"):
        plan("auto", "openvino", model, "int8", ZEN4)


# -- the metadata, read from the bytes --------------------------------------------------------


def test_metadata_is_what_onnx_reads(tiny_variants):
    for path in (tiny_variants.model_path, tiny_variants.files["int8"]):
        expected = {p.key: p.value for p in onnx.load(path).metadata_props}
        assert read_metadata(path.read_bytes()) == expected


def test_a_truncated_or_foreign_file_is_refused(tiny_model_path):
    data = tiny_model_path.read_bytes()
    with pytest.raises(MetadataError, match="protobuf"):
        read_metadata(data[: len(data) // 2])
    with pytest.raises(MetadataError, match="protobuf"):
        read_metadata(b"\xff" * 64)


# -- the engine factory --------------------------------------------------------------------------


def _settings(path: Path, **kw):
    from swin_serve.server.settings import Settings

    return Settings(model_path=path, providers="cpu", max_batch_size=2, **kw)


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a given machine: engines.machine returns what the test sets."""
    from swin_serve.server.runtime import engines

    current = {"machine": ZEN4}
    monkeypatch.setattr(engines, "machine", lambda settings: current["machine"])
    return current


@pytest.fixture
def micro_with_int8(tiny_variants, tmp_path) -> Path:
    path = tmp_path / "micro.onnx"
    shutil.copy(tiny_variants.model_path, path)
    shutil.copy(tiny_variants.files["int8"], int8_sibling(path))
    return path


def test_int8_serves_the_file_beside_the_model_and_says_so(micro_with_int8, machine):
    from swin_serve.server.runtime.engines import open_engine

    machine["machine"] = CASCADE_LAKE
    engine = open_engine(_settings(micro_with_int8, precision="auto"))
    assert (engine.engine_name, engine.precision) == ("onnxruntime", "int8")
    assert engine.served_file["path"] == str(int8_sibling(micro_with_int8))
    assert engine.manifest.precision == "int8"
    assert "VNNI" in engine.precision_reason
    # Named by its own file, as at fp32: a client's URLs do not change with the machine.
    fp32 = open_engine(_settings(micro_with_int8, precision="fp32"))
    assert engine.manifest.name == fp32.manifest.name and not fp32.manifest.name.endswith(".int8")


def test_a_precision_that_fails_its_self_check_falls_back_under_auto_only(
    micro_with_int8, machine, monkeypatch, caplog
):
    from swin_serve.artifact import golden
    from swin_serve.server.repository.models import self_check
    from swin_serve.server.runtime.engines import open_engine

    # A bound no int8 run can meet: as if this CPU's int8 kernels saturated.
    monkeypatch.setattr(golden, "_INT8", golden.Tolerance(min_cosine=1.5))
    machine["machine"] = CASCADE_LAKE
    with caplog.at_level(logging.WARNING, logger="swin_serve.server.runtime.engines"):
        engine = open_engine(_settings(micro_with_int8, precision="auto"))
    assert (engine.engine_name, engine.precision) == ("onnxruntime", "fp32")
    assert engine.precision_reason.startswith("SWIN_PRECISION=auto fell back to fp32")
    assert "micro.onnx: int8 is not served on this machine, fp32 is" in caplog.text
    assert self_check(engine, "micro").status == "passed"

    named = open_engine(_settings(micro_with_int8, precision="int8"))
    assert named.precision == "int8"  # served as asked, so the start-up check refuses it
    with pytest.raises(golden.SelfCheckFailed, match="int8"):
        self_check(named, "micro")


def test_a_precision_that_cannot_be_had_is_a_load_error(tiny_model_path, machine):
    from swin_serve.server.runtime.engines import open_engine

    machine["machine"] = ROME
    with pytest.raises(ModelLoadError, match="no native bfloat16"):
        open_engine(_settings(tiny_model_path, precision="bf16"))
    with pytest.raises(ModelLoadError, match=r"int8\.onnx"):
        open_engine(_settings(tiny_model_path, precision="int8"))


def test_this_machine_is_read_as_it_is():
    from swin_serve.artifact.cpu import cpu_features
    from swin_serve.server.runtime.engines import machine
    from swin_serve.server.settings import Settings

    found = machine(Settings(providers="cpu"))
    features = cpu_features()
    assert found.cuda is False and found.openvino is True  # the dev extra installs it
    assert found.int8_fast == any(features[k] for k in ("avx512_vnni", "avx_vnni", "amx_int8"))
    # OpenVINO reads CPUID itself; it must agree with the kernel's and numpy's view.
    assert found.native_bf16 == bool(features["avx512_bf16"] or features["amx_bf16"])


AUTO_HERE = """
import json, sys
from swin_serve.server.runtime.engines import open_engine
from swin_serve.server.runtime.selfcheck import check_engine
from swin_serve.server.settings import Settings

engine = open_engine(Settings(model_path=sys.argv[1], providers="cpu", precision="auto"))
report = check_engine(engine)
print(json.dumps({"precision": engine.precision, "engine": engine.engine_name,
                  "reason": engine.precision_reason, "cpu": report.cpu, "check": report.status}))
"""


def test_auto_is_fp32_on_a_cpu_without_bf16_or_vnni(micro_with_int8):
    """AMD EPYC Rome, emulated: AVX2 only. OpenVINO reads CPUID for itself, and finds no bf16;
    the int8 file beside the model is left alone without VNNI."""
    import json
    import subprocess
    import sys

    from tests.export.test_int8 import NO_VNNI_CPU
    from tests.support import checkout_env, skip_unless_ci

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        skip_unless_ci("qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
    done = subprocess.run(
        [qemu, "-cpu", NO_VNNI_CPU, sys.executable, "-c", AUTO_HERE, str(micro_with_int8)],
        env={k: v for k, v in checkout_env().items() if not k.startswith("SWIN_")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["cpu"]["avx2"] is True and found["cpu"]["avx512_bf16"] is False
    assert (found["precision"], found["engine"], found["check"]) == (
        "fp32",
        "onnxruntime",
        "passed",
    )
    assert (
        found["reason"]
        == "SWIN_PRECISION=auto: no native bf16 on this CPU; no VNNI or AMX for int8"
    )


# -- what auto will not serve ------------------------------------------------------------------


def test_an_int8_file_from_another_export_is_never_served_for_the_model(
    micro_with_int8, tiny_other_head, machine
):
    """The model was re-exported (here with another head) and its old int8 file left beside
    it: refused when named, and under auto the model is served at fp32, saying why."""
    from swin_serve.server.runtime.engines import open_engine

    shutil.copy(tiny_other_head.model_path, micro_with_int8)
    machine["machine"] = CASCADE_LAKE
    with pytest.raises(ModelLoadError, match="not the int8 export"):
        open_engine(_settings(micro_with_int8, precision="int8"))
    engine = open_engine(_settings(micro_with_int8, precision="auto"))
    assert (engine.precision, engine.manifest.num_classes) == ("fp32", 7)
    assert "not the int8 export" in engine.precision_reason


def test_under_auto_a_reduced_precision_that_does_not_load_falls_back(micro_with_int8, machine):
    from swin_serve.server.runtime.engines import open_engine

    data = int8_sibling(micro_with_int8).read_bytes()
    int8_sibling(micro_with_int8).write_bytes(data[: len(data) // 3])  # truncated
    machine["machine"] = CASCADE_LAKE
    engine = open_engine(_settings(micro_with_int8, precision="auto"))
    assert engine.precision == "fp32" and "did not load" in engine.precision_reason
    with pytest.raises(ModelLoadError, match="protobuf"):
        open_engine(_settings(micro_with_int8, precision="int8"))


def test_under_auto_a_model_without_golden_answers_stays_at_fp32(tmp_path, machine):
    """Nothing unverified is served at a reduced precision."""
    from swin_serve.server.runtime.engines import open_engine
    from tests.server.runtime.test_engine import build_synthetic_model
    from tests.support.fakes import tiny_manifest

    path = build_synthetic_model(tmp_path / "syn.onnx", tiny_manifest().model_dump_json())
    machine["machine"] = ZEN4
    engine = open_engine(_settings(path, precision="auto"))
    assert (engine.precision, engine.engine_name) == ("fp32", "onnxruntime")
    assert "cannot be verified" in engine.precision_reason
    assert open_engine(_settings(path, precision="bf16")).precision == "bf16"  # named: as asked


def test_the_card_says_the_model_was_exported_at_fp32_when_its_int8_file_runs(
    micro_with_int8, machine
):
    from swin_serve.server.runtime.engines import open_engine

    machine["machine"] = CASCADE_LAKE
    engine = open_engine(_settings(micro_with_int8, precision="int8"))
    assert (engine.precision, engine.exported_precision) == ("int8", "fp32")


def test_a_file_of_zeros_or_without_a_graph_is_not_a_model():
    with pytest.raises(MetadataError, match="numbered 0"):
        read_metadata(bytes(1 << 20))
    entry = b"\x0a\x01k\x12\x01v"  # key "k", value "v"
    no_graph = b"\x72" + bytes([len(entry)]) + entry  # field 14, length-delimited
    with pytest.raises(MetadataError, match="no graph"):
        read_metadata(no_graph)
    assert read_metadata(no_graph + b"\x3a\x00") == {"k": "v"}  # field 7 (an empty graph)
    # A tag past protobuf's range, which protobuf's own parser would cut to another field.
    huge = b"\x80\x80\x80\x80\x10"  # field number 2**31, varint
    with pytest.raises(MetadataError, match="out of range"):
        read_metadata(b"\x3a\x00" + bytes([huge[0] | 0x02]) + huge[1:] + b"\x00")

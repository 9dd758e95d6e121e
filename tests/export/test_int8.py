"""int8 that holds on every x86 CPU: its settings are recorded, and its golden self-check passes
on this CPU and on an emulated one without AVX-512 and VNNI, whose u8s8 kernels can saturate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx

from swin_serve.export import manifest
from swin_serve.export.variants import Int8Settings, to_int8
from tests.support import skip_unless_ci

ROOT = Path(__file__).resolve().parents[2]
# AMD EPYC Rome: AVX2 and FMA, no AVX-512, no VNNI. qemu 7.2 or newer emulates AVX2.
NO_VNNI_CPU = "EPYC-Rome"

SELF_CHECK = """
import json, sys
from swin_serve.server.runtime.engine import OnnxEngine
from swin_serve.server.runtime.selfcheck import check_engine
from swin_serve.server.settings import Settings

engine = OnnxEngine.load(Settings(model_path=sys.argv[1], providers="cpu", intra_op_threads=1))
print(json.dumps(check_engine(engine).as_dict()))
"""


def self_check(model: Path, *wrapper: str) -> dict:
    done = subprocess.run(
        [*wrapper, sys.executable, "-c", SELF_CHECK, str(model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_int8_manifest_records_its_quantisation_settings(tiny_variants):
    info = manifest.read(tiny_variants.files["int8"])
    assert info.quantization == Int8Settings().as_dict()
    assert info.quantization["per_channel"] is True
    assert info.quantization["reduce_range"] is True
    assert info.golden["export_check"]["status"] == "passed"


def test_int8_golden_self_check_passes_on_this_cpu(tiny_variants):
    report = self_check(tiny_variants.files["int8"])
    assert report["status"] == "passed", report
    assert report["precision"] == "int8"


def test_int8_golden_self_check_passes_on_a_cpu_without_avx512_or_vnni(tiny_variants):
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        skip_unless_ci("qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
    report = self_check(tiny_variants.files["int8"], qemu, "-cpu", NO_VNNI_CPU)
    # The emulated CPU really lacks what the host may have: ONNX Runtime took the AVX2 path.
    assert report["cpu"]["avx2"] is True, "qemu-x86_64 7.2 or newer is needed to emulate AVX2"
    assert report["cpu"]["avx512f"] is False and report["cpu"]["avx512_vnni"] is False
    assert report["cpu"]["avx_vnni"] in (False, None) and report["cpu"]["amx_int8"] in (False, None)
    assert report["status"] == "passed", report


def test_full_range_per_tensor_int8_fails_the_self_check_without_vnni(tiny_variants, tmp_path):
    """The emulated check has teeth: full-range per-tensor weights saturate the AVX2 kernels,
    and the self-check refuses the file."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        skip_unless_ci("qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
    served = onnx.load(tiny_variants.files["int8"])
    portable = onnx.load(tiny_variants.files["triton"] / "1" / "model.onnx")
    old = to_int8(
        portable, Int8Settings(per_channel=False, reduce_range=False, matmul_const_b_only=False)
    )
    del old.metadata_props[:]
    old.metadata_props.extend(served.metadata_props)  # the same manifest and golden answers
    path = tmp_path / "old.int8.onnx"
    onnx.save(old, path)
    report = self_check(path, qemu, "-cpu", NO_VNNI_CPU)
    assert report["status"] == "failed" and report["precision"] == "int8", report
    assert report["outputs"]["logits"]["min_cosine"] < report["tolerance"]["min_cosine"]
    assert "logits" in report["failures"]

"""The ONNX export: symbolic batch, parity at other batch sizes, metadata, variants, Triton."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from onnx import TensorProto, helper

from swin_serve.artifact.contract import (
    MANIFEST_KEY,
    OUTPUT_NAMES,
    Manifest,
    ManifestError,
    WeightsRecord,
)
from swin_serve.artifact.sessions import cpu_session
from swin_serve.export import checks, manifest
from swin_serve.export.__main__ import main as export_main
from swin_serve.export.graph import TRACE_BATCH
from swin_serve.export.preprocessing import TransformFlags, decide_transform
from swin_serve.export.variants import FP16_KEEP_FP32
from swin_serve.export.verify import main as verify_main
from swin_serve.export.verify import rebuild_reference
from swin_serve.model import SwinTransformer, get_config

MICRO = "swin_micro_patch4_window4_64"


def onnx_outputs(path: Path, x: torch.Tensor) -> dict[str, np.ndarray]:
    return checks.run_session(cpu_session(path), x.numpy())


def torch_outputs(model: SwinTransformer, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        feats = model.forward_features(x)
        feats["logits"] = model.head(feats["embedding"])
    return {k: v.numpy() for k, v in feats.items()}


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_micro_export_traced_at_batch_2_matches_pytorch_at_other_batch_sizes(tiny_export, batch):
    assert tiny_export.manifest.parity["trace_batch_size"] == TRACE_BATCH == 2
    model = rebuild_reference(tiny_export.manifest, None)
    x = torch.randn(batch, 3, 64, 64)
    got, want = onnx_outputs(tiny_export.model_path, x), torch_outputs(model, x)
    for name in OUTPUT_NAMES:
        assert got[name].shape == want[name].shape
        scale = np.abs(want[name]).max()
        assert np.abs(got[name] - want[name]).max() <= 1e-4 * scale, name


@pytest.mark.slow
def test_real_swin_t_export_passes_parity(swin_t_export):
    parity = swin_t_export.manifest.parity
    assert parity["passed"] and parity["batch_sizes"] == [1, 2, 3, 8, 17]
    assert max(e["rel_diff"] for e in parity["outputs"].values()) <= 1e-4
    model = rebuild_reference(swin_t_export.manifest, None)
    x = torch.randn(3, 3, 224, 224)
    got, want = onnx_outputs(swin_t_export.model_path, x), torch_outputs(model, x)
    assert got["stage1"].shape == (3, 96, 56, 56) and got["stage4"].shape == (3, 768, 7, 7)
    for name in OUTPUT_NAMES:
        assert np.abs(got[name] - want[name]).max() <= 1e-4 * np.abs(want[name]).max(), name


def test_served_graph_has_gelu_fused_into_portable_contrib_ops(tiny_export):
    served = onnx.load(tiny_export.model_path)
    ops = {(n.domain or "ai.onnx", n.op_type) for n in served.graph.node}
    assert not {op for _, op in ops} & {"Erf", "Tanh"}, "GELU left unfused"
    assert ("com.microsoft", "BiasGelu") in ops or ("com.microsoft", "Gelu") in ops
    # Only ops with CPU and CUDA kernels: no CPU-layout (NCHWc) or other CPU-only fusions.
    assert {d for d, _ in ops} <= {"ai.onnx", "com.microsoft"}
    assert [d.dim_param for d in served.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]


def test_manifest_round_trips_through_the_onnx_metadata_and_the_json_report(tiny_export):
    stored = manifest.read(tiny_export.model_path)
    beside = json.loads(tiny_export.report_path.read_text())
    assert stored == tiny_export.manifest
    assert beside == json.loads(manifest.to_json(stored))
    stored = beside
    assert stored["variant"] == MICRO and stored["config"]["window_size"] == 4
    assert len(stored["labels"]) == stored["config"]["num_classes"] == 1000
    assert stored["labels"][0] == "tench"
    assert stored["preprocess"]["resize_shorter"] == int(64 / 0.875) == 73
    assert stored["format_version"] == 1  # a crop: what older servers read correctly
    assert stored["weights"]["random"] is True and "RANDOM" in stored["weights"]["warning"]
    assert stored["exporter"]["opset"] == 18 and stored["exporter"]["torch"].startswith("2.13")
    assert stored["outputs"]["stage2"] == ["batch", 48, 8, 8]


def test_labels_follow_the_head_size():
    info = manifest.build_manifest(
        name="x",
        variant=MICRO,
        config=get_config(MICRO, num_classes=21841),
        weights=WeightsRecord(source="random", random=True, seed=0),
        exporter={},
        preprocess=decide_transform("random", 64, TransformFlags()).spec,
        preprocessing_source="the official evaluation",
    )
    assert len(info.labels) == 21841


def test_every_exported_manifest_validates_against_the_servers_contract(tiny_variants):
    """The exporter writes what `swin_serve.artifact.contract.Manifest` reads, for every precision."""
    for precision, key in (("fp32", "model"), ("fp16", "fp16"), ("int8", "int8")):
        proto = onnx.load(tiny_variants.files[key], load_external_data=False)
        metadata = {p.key: p.value for p in proto.metadata_props}
        served = Manifest.model_validate_json(metadata[MANIFEST_KEY])
        assert served.precision == precision and served.image_size == 64
        assert set(served.outputs) == set(OUTPUT_NAMES) and served.weights.random is True
        report = tiny_variants.files[key].with_suffix(".json")
        assert Manifest.model_validate_json(report.read_text()) == served


def test_the_exporter_refuses_to_write_a_manifest_the_server_would_reject(tiny_export):
    broken = tiny_export.manifest.model_copy(update={"labels": ("only one",)})
    with pytest.raises(ManifestError, match="1 labels for num_classes=1000"):
        manifest.to_json(broken)


def test_graph_has_a_symbolic_batch_everywhere_and_folded_position_bias(
    tiny_export, tiny_variants, tmp_path
):
    proto = onnx.load(tiny_variants.files["triton"] / "1" / "model.onnx")  # the portable graph
    report = checks.check_symbolic_batch(proto, dict(tiny_export.manifest.outputs))
    assert (
        report["batch_dependent_tensors"] > 100
        and report["shapes_inferred"] == report["batch_dependent_tensors"]
    )
    # The bias gather is resolved at export time: no table, no Gather, in the graph.
    assert not [n for n in proto.graph.node if n.op_type == "Gather"]
    assert not [i for i in proto.graph.initializer if "relative_position_bias_table" in i.name]
    # The shifted-window masks are constants of shape (1, nW, 1, N, N) holding 0 and -100:
    # stage 1 has 16 windows of 16 tokens, stage 2 has 4; stage 3 (4x4 = one window) has none.
    masks = {
        tuple(i.dims): set(np.unique(onnx.numpy_helper.to_array(i)).tolist())
        for i in proto.graph.initializer
        if len(i.dims) == 5
    }
    assert masks == {(1, 16, 1, 16, 16): {-100.0, 0.0}, (1, 4, 1, 16, 16): {-100.0, 0.0}}


def test_symbolic_batch_check_catches_a_baked_in_batch():
    # pixel_values -> Reshape to a constant (2, 12288): the classic frozen trace batch.
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["pixel_values", "shape"], ["flat"]),
            helper.make_node("Identity", ["flat"], ["logits"]),
        ],
        "frozen",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 12288])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [2, 12288])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(checks.CheckFailed, match="fixed batch"):
        checks.check_symbolic_batch(proto, {"logits": ["batch", 12288]})


def test_the_classic_int_batch_bug_cannot_be_exported(monkeypatch, tmp_path):
    import swin_serve.model.swin as swin

    def frozen_reverse(windows, M, H, W):  # B = int(windows.shape[0] / (H*W/M/M))
        B = int(windows.shape[0] / (H * W / M / M))
        return (
            windows.view(B, H // M, W // M, M, M, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)
        )

    monkeypatch.setattr(swin, "window_reverse", frozen_reverse)
    rc = export_main(["--variant", MICRO, "--checkpoint", "random", "--out", str(tmp_path)])
    assert rc == 1
    assert not list(tmp_path.glob("*.onnx"))


def test_a_failing_parity_check_fails_the_cli_and_writes_no_model(monkeypatch, tmp_path, capsys):
    real = checks.reference_outputs

    def off_by_a_little(model, x):
        out = real(model, x)
        out["stage3"] = out["stage3"] + 1e-2 * out["stage3"].abs().max()
        return out

    monkeypatch.setattr(checks, "reference_outputs", off_by_a_little)
    rc = export_main(
        [
            "--variant",
            MICRO,
            "--checkpoint",
            "random",
            "--out",
            str(tmp_path),
            "--parity-batch-sizes",
            "1,3",
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err and "stage3" in err
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".onnx", ".json", ".tmp")]


def test_cli_rejects_an_unknown_checkpoint_cleanly(tmp_path, capsys):
    rc = export_main(
        ["--variant", MICRO, "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path)]
    )
    assert rc == 1 and "not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx"))


def test_verify_cli_passes_on_a_good_model_and_fails_on_a_tampered_one(
    tiny_export, tmp_path, capsys
):
    assert verify_main([str(tiny_export.model_path)]) == 0
    assert "PASS" in capsys.readouterr().out
    proto = onnx.load(tiny_export.model_path)
    head = next(i for i in proto.graph.initializer if "head.weight" in i.name)
    values = onnx.numpy_helper.to_array(head).copy()
    values[0] += 0.5
    head.CopyFrom(onnx.numpy_helper.from_array(values, head.name))
    onnx.save(proto, tmp_path / "tampered.onnx")
    assert verify_main([str(tmp_path / "tampered.onnx")]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_fp16_and_int8_variants_run_and_report_agreement(tiny_variants):
    for precision in ("fp16", "int8"):
        info = manifest.read(tiny_variants.files[precision])
        assert info.precision == precision
        agreement = info.agreement
        assert set(agreement["cosine_min"]) == set(OUTPUT_NAMES)
        assert 0.0 <= agreement["top1_agreement"] <= 1.0 and agreement["images"] == 16
        x = torch.randn(2, 3, 64, 64)
        out = onnx_outputs(tiny_variants.files[precision], x)
        assert out["logits"].dtype == np.float32 and out["logits"].shape == (2, 1000)
    fp16 = manifest.read(tiny_variants.files["fp16"]).agreement
    assert min(fp16["cosine_min"].values()) >= 0.999
    # Depends on the onnxruntime flavour installed (onnxruntime or onnxruntime-gpu), not the CPU.
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert fp16["cuda"] == "available" if has_cuda else fp16["cuda"].startswith("not checked:")


def test_fp16_variant_keeps_the_sensitive_ops_in_fp32(tiny_variants):
    graph = onnx.load(tiny_variants.files["fp16"]).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    dtype = _tensor_types(graph)
    sensitive = [n for n in graph.node if n.op_type in FP16_KEEP_FP32]
    assert {n.op_type for n in sensitive} >= {"LayerNormalization", "Softmax"}
    for node in sensitive:
        assert dtype(node.input[0]) == dtype(node.output[0]) == TensorProto.FLOAT, node.name
        for name in node.input[1:]:  # scale, bias (float) or axes (int64): never fp16
            if name:  # an omitted optional input has no name
                assert dtype(name) != TensorProto.FLOAT16, (node.op_type, node.name, name)
    # The check is not vacuous: the matmuls around them really run in fp16.
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert matmuls and all(dtype(n.output[0]) == TensorProto.FLOAT16 for n in matmuls)
    halves = [i for i in graph.initializer if i.data_type == TensorProto.FLOAT16]
    assert sum(np.prod(i.dims) for i in halves) > 0.9 * sum(
        np.prod(i.dims) for i in graph.initializer
    ), "the bulk of the weights is stored in fp16"


def _tensor_types(graph: onnx.GraphProto):
    """name -> ONNX elem type, traced back to a Cast, a constant or a graph input. The ops in
    this graph other than Cast and Shape give their outputs their first input's type. (ONNX's
    shape inference cannot be used: the fp16 converter leaves the nodes out of order.)"""
    producer = {out: node for node in graph.node for out in node.output}
    known = {i.name: i.data_type for i in graph.initializer}
    known.update({v.name: v.type.tensor_type.elem_type for v in graph.input})

    def dtype(name: str) -> int:
        if name not in known:
            node = producer[name]
            if node.op_type == "Cast":
                known[name] = helper.get_attribute_value(node.attribute[0])
            elif node.op_type == "Constant":
                known[name] = node.attribute[0].t.data_type
            elif node.op_type == "Shape":
                known[name] = TensorProto.INT64
            else:
                known[name] = dtype(node.input[0])
        return known[name]

    return dtype


def _triton_model_config():
    spec = importlib.util.find_spec("tritonclient")
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # the schema alone, without tritonclient's grpc client
    return module.ModelConfig


def test_triton_config_parses_as_triton_model_config_protobuf(tiny_variants):
    repo = tiny_variants.files["triton"]
    config = text_format.Parse((repo / "config.pbtxt").read_text(), _triton_model_config()())
    assert config.name == MICRO and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [i.name for i in config.input] == ["pixel_values"] and list(config.input[0].dims) == [
        3,
        64,
        64,
    ]
    assert [o.name for o in config.output] == list(OUTPUT_NAMES)
    assert list(config.output[2].dims) == [24, 16, 16]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert (repo / "1" / "model.onnx").is_file()
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size: [oops", _triton_model_config()())


def test_parity_fails_on_nan_outputs_instead_of_comparing_past_them(tiny_export, monkeypatch):
    model = rebuild_reference(tiny_export.manifest, None)
    real = checks.reference_outputs

    def nan_stage2(model, x):
        out = real(model, x)
        out["stage2"] = out["stage2"] * float("nan")
        return out

    monkeypatch.setattr(checks, "reference_outputs", nan_stage2)
    report = checks.check_parity(cpu_session(tiny_export.model_path), model, batch_sizes=(1, 3))
    assert report["passed"] is False and "stage2" in report["failed"]


def test_symbolic_check_fails_when_an_expected_output_is_missing(tiny_export, tiny_variants):
    proto = onnx.load(tiny_variants.files["triton"] / "1" / "model.onnx")
    expected = {**tiny_export.manifest.outputs, "stage5": ["batch", 1]}
    with pytest.raises(checks.CheckFailed, match="missing"):
        checks.check_symbolic_batch(proto, expected)


def test_the_random_weights_warning_names_an_export_that_can_work(tiny_export):
    """The micro preset has no official weights: its warning asks for the user's own."""
    from swin_serve.artifact.contract import random_weights_warning, served_warning

    weights = tiny_export.manifest.weights
    assert weights.random
    assert "--checkpoint PATH` with your own" in weights.warning
    assert "--checkpoint official" not in weights.warning
    assert served_warning(tiny_export.manifest) == weights.warning
    # An artefact written before the warning named a working command is told the official one.
    old = tiny_export.manifest.model_copy(
        update={"weights": weights.model_copy(update={"warning": "python -m export ..."})}
    )
    assert served_warning(old) == random_weights_warning(old.variant)
    assert "--checkpoint official" in random_weights_warning("swin_tiny_patch4_window7_224")

"""Reduced-precision variants of the fp32 graph: fp16 for GPUs, dynamic int8 for CPUs."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

# Numerically sensitive ops stay in float32: normalisation statistics, the attention softmax
# (its -100 mask and large logits), reductions, and GELU's erf.
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Erf", "Pow", "Sqrt")


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and matmuls; inputs and outputs stay float32."""
    converted = convert_float_to_float16(
        proto,
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32)),
    )
    _make_node_names_unique(converted.graph)
    return converted


def _make_node_names_unique(graph: onnx.GraphProto) -> None:
    # The converter names its inserted Cast nodes after the tensor they cast, so a tensor with
    # two blocked consumers yields two nodes of one name, which ONNX Runtime refuses to load.
    seen: Counter[str] = Counter()
    for node in graph.node:
        if node.name:
            seen[node.name] += 1
            if seen[node.name] > 1:
                node.name = f"{node.name}_{seen[node.name] - 1}"


@dataclass(frozen=True)
class Int8Settings:
    """How `quantize_dynamic` is called; recorded in the int8 manifest.

    Defaults hold on every x86 CPU. Without VNNI, ONNX Runtime's u8s8 kernels (VPMADDUBSW) add
    pairs of u8*s8 products into int16, which saturates for full-range weights; 7-bit weights
    (`reduce_range`) cannot overflow it. Per-channel scales win back the precision the lost bit
    costs. With VNNI or AMX the same file runs the faster integer kernels, so the gain is kept
    there. The attention's activation-by-activation matmuls are quantised too, u8 on both sides:
    ONNX Runtime's u8u8 kernels widen to 16 bits before they multiply, so they cannot saturate
    (bench/quantization.py checks it on an emulated CPU without VNNI), and leaving them in float
    (`matmul_const_b_only`) gives up speed for no accuracy that bench can measure.
    """

    per_channel: bool = True
    reduce_range: bool = True
    matmul_const_b_only: bool = False
    op_types: tuple[str, ...] = ("MatMul", "Gemm")

    def as_dict(self) -> dict[str, object]:
        return {
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "activation_type": "QUInt8 (dynamic, per run)",
            **asdict(self),
            "op_types": list(self.op_types),
        }


def to_int8(proto: onnx.ModelProto, settings: Int8Settings = Int8Settings()) -> onnx.ModelProto:
    """Dynamic quantisation of every MatMul/Gemm: int8 weights, and activations (both sides of
    the attention's activation-by-activation matmuls) quantised per run."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    # The quantiser re-runs ONNX shape inference from a file and trips over value_info the
    # exporter left on the fused head (a known mismatch on Gemm); it re-infers them anyway.
    del stripped.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        onnx.save(stripped, src)
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(settings.op_types),
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            extra_options={"MatMulConstBOnly": settings.matmul_const_b_only},
        )
        return onnx.load(dst)

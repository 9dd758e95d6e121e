"""Reduced-precision variants of the fp32 graph: fp16 for GPUs, dynamic int8 for CPUs."""

from __future__ import annotations

import tempfile
from collections import Counter
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


def to_int8(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic quantisation: int8 weights for MatMul/Gemm, activations quantised per run."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(proto)
    # The quantiser re-runs ONNX shape inference from a file and trips over value_info the
    # exporter left on the fused head (a known mismatch on Gemm); it re-infers them anyway.
    del stripped.graph.value_info[:]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        onnx.save(stripped, src)
        quantize_dynamic(
            src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"]
        )
        return onnx.load(dst)

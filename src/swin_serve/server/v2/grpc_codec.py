"""gRPC messages <-> InferenceRequest and outputs.

Input data comes in ``raw_input_contents`` (what Triton's client sends: one entry per input, in
order) or in each tensor's typed ``contents``; outputs always go back raw, as Triton answers.
"""

from __future__ import annotations

from typing import Any

from swin_serve.server.v2 import messages
from swin_serve.server.v2.model import VERSION
from swin_serve.server.v2.tensors import (
    BYTES,
    FP32,
    InferenceRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    check_bytes_count,
    check_shape,
    deserialize_bytes,
    element_count,
    fp32_from_bytes,
    fp32_from_json,
    invalid,
)


def parse_request(message: Any) -> InferenceRequest:
    """A ModelInferRequest as an InferenceRequest; 400 (INVALID_ARGUMENT) when malformed."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs")
    inputs = [_input(tensor, raw[i] if raw else None) for i, tensor in enumerate(message.inputs)]
    outputs = [_requested_output(o) for o in message.outputs]
    return InferenceRequest(message.model_name, message.model_version, message.id, inputs, outputs)


def _input(tensor: Any, raw: bytes | None) -> InputTensor:
    name, datatype = tensor.name, tensor.datatype
    shape = check_shape(name, list(tensor.shape))
    count = element_count(shape)
    if datatype not in (FP32, BYTES):
        raise invalid(f"input {name!r}: datatype {datatype!r} is not served; use BYTES or FP32")
    has_contents = tensor.HasField("contents")
    if raw is not None and has_contents:
        raise invalid(f"input {name!r} has both contents and raw_input_contents")
    if raw is not None:
        if datatype == FP32:
            return InputTensor(name, datatype, shape, fp32_from_bytes(name, raw, count))
        return InputTensor(name, datatype, shape, deserialize_bytes(name, raw, count))
    if datatype == FP32:
        values = list(tensor.contents.fp32_contents)
        return InputTensor(name, datatype, shape, fp32_from_json(name, values, count))
    check_bytes_count(name, count)
    contents = tensor.contents.bytes_contents
    if len(contents) != count:
        raise invalid(f"input {name!r}: shape holds {count} elements, the data {len(contents)}")
    return InputTensor(name, datatype, shape, list(contents))


def _requested_output(output: Any) -> RequestedOutput:
    param = output.parameters.get("classification")
    k = 0
    if param is not None:
        choice = param.WhichOneof("parameter_choice")
        if choice not in ("int64_param", "uint64_param"):
            raise invalid("parameter 'classification' must be an integer")
        k = getattr(param, choice)
        if k < 0:
            raise invalid("parameter 'classification' must be a non-negative integer")
    return RequestedOutput(output.name, classification=k)


def infer_response(
    request: InferenceRequest, outputs: list[OutputTensor], warning: str | None = None
) -> Any:
    response = messages.ModelInferResponse(
        model_name=request.model_name, model_version=VERSION, id=request.id
    )
    if warning:  # random weights, say: as the HTTP answer's parameters carry it
        response.parameters["warning"].string_param = warning
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(output.to_bytes())
    return response


def metadata_response(metadata: dict[str, Any]) -> Any:
    """A model's metadata (``v2.model.model_metadata``) as a ModelMetadataResponse."""
    fields = dict(metadata)
    parameters = fields.pop("parameters")
    response = messages.ModelMetadataResponse(**fields)
    for key, value in parameters.items():
        response.parameters[key].string_param = value
    return response

"""The Open Inference Protocol's gRPC messages, built from ``open_inference.binpb``.

The descriptor (compiled from ``open_inference.proto`` by ``make proto``) is loaded into a pool
of our own, rather than imported as protoc's generated modules: those register ``inference.*``
in the process-wide pool, where Triton's client registers its own definitions of the same names
(in tests, or in a tool that embeds the server), and whichever loaded second would fail.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR_FILE = "open_inference.binpb"


def _load_pool() -> descriptor_pool.DescriptorPool:
    data = resources.files(__package__).joinpath(DESCRIPTOR_FILE).read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool


_POOL = _load_pool()
METHODS = _POOL.FindServiceByName(SERVICE).methods_by_name


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


def request_type(method: str) -> Any:
    """The request message class of ``method`` (say ``"ModelInfer"``)."""
    return message_factory.GetMessageClass(METHODS[method].input_type)


def response_type(method: str) -> Any:
    return message_factory.GetMessageClass(METHODS[method].output_type)


ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
ModelMetadataResponse = _message("ModelMetadataResponse")
InferParameter = _message("InferParameter")

"""Helpers for tests of the Open Inference Protocol (v2): BYTES tensors' binary encoding,
Triton's clients behind one small interface, and preprocessing written independently of
``swin_serve.artifact.preprocess``."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image


def length_prefixed(*elements: bytes) -> bytes:
    """BYTES elements as the v2 protocol's binary data carries them: each one after its length,
    4 bytes little-endian."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def grpc_infer_image(address: str, model: str, image: bytes, **call: Any) -> Any:
    """One image through ModelInfer over a fresh channel, with the server's own message types
    (``call`` goes to the call: ``timeout``, ``metadata``)."""
    from swin_serve.server.v2 import messages

    request = messages.ModelInferRequest(
        model_name=model,
        inputs=[{"name": "image", "datatype": "BYTES", "shape": [1]}],
        raw_input_contents=[length_prefixed(image)],
    )
    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary(
            f"/{messages.SERVICE}/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=messages.response_type("ModelInfer").FromString,
        )
        return infer(request, **call)


@dataclass(frozen=True)
class V2Client:
    """One of Triton's clients (HTTP or gRPC), with the choice of tensor encoding made once.

    ``binary`` (HTTP only): inputs and outputs in Triton's binary tensor extension, as the client
    does by default; False sends and asks for JSON ``data``, where a BYTES element is a string,
    so each image file goes as its base64 text. gRPC always carries raw bytes.
    """

    kind: str  # "grpc", "http-binary" or "http-json"
    client: Any
    binary: bool = True

    @property
    def is_http(self) -> bool:
        return self.kind.startswith("http")

    @property
    def module(self) -> Any:
        return httpclient if self.is_http else grpcclient

    def tensor(self, name: str, array: np.ndarray, datatype: str) -> Any:
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        if self.is_http:
            tensor.set_data_from_numpy(array, binary_data=self.binary)
        else:
            tensor.set_data_from_numpy(array)
        return tensor

    def images(self, files: list[bytes]) -> Any:
        """The ``image`` input: one encoded file per element."""
        if self.is_http and not self.binary:
            files = [base64.b64encode(f) for f in files]
        return self.tensor("image", np.array(files, dtype=np.object_), "BYTES")

    def pixels(self, x: np.ndarray) -> Any:
        return self.tensor("pixel_values", x, "FP32")

    def output(self, name: str, class_count: int = 0) -> Any:
        if self.is_http:
            return httpclient.InferRequestedOutput(
                name, binary_data=self.binary, class_count=class_count
            )
        return grpcclient.InferRequestedOutput(name, class_count=class_count)

    def infer(self, model: str, inputs: list[Any], outputs: list[str] | None = None, **kw) -> Any:
        wanted = [self.output(n) for n in outputs] if outputs is not None else None
        return self.client.infer(model, inputs, outputs=wanted, **kw)

    def output_datatypes(self, result: Any) -> dict[str, str]:
        """What came back: each output's name and datatype."""
        response = result.get_response()
        if self.is_http:
            return {o["name"]: o["datatype"] for o in response["outputs"]}
        return {o.name: o.datatype for o in response.outputs}


def torchvision_preprocess(path: Path, spec: dict[str, Any]) -> np.ndarray:
    """What torchvision's eval transform (Resize(shorter), CenterCrop, ToTensor, Normalize) makes
    of an RGB file, with NumPy doing the arithmetic: float32 (3, S, S). No EXIF, alpha or JPEG
    draft handling, so only plain RGB photos small enough not to be drafted may be compared."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    width, height = rgb.size
    short, crop = spec["resize_shorter"], spec["crop_size"]
    if width <= height:  # torchvision: the longer side is truncated, not rounded
        size = (short, int(short * height / width))
    else:
        size = (int(short * width / height), short)
    resized = rgb.resize(size, Image.Resampling.BICUBIC)
    left, top = round((size[0] - crop) / 2.0), round((size[1] - crop) / 2.0)
    pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float64)
    x = (pixels / spec["scale"] - np.asarray(spec["mean"])) / np.asarray(spec["std"])  # S, S, 3
    return x.transpose(2, 0, 1).astype(np.float32)  # 3, S, S


def softmax(logits: np.ndarray) -> np.ndarray:
    """(N, K) logits -> (N, K) probabilities, in float64."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predictions(logits: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """Per image, the top ``k`` classes in /classify's JSON shape."""
    out = []
    for probs in softmax(logits):
        order = np.argsort(-probs, kind="stable")[:k]
        out.append(
            {
                "predictions": [
                    {"index": int(i), "label": labels[i], "score": float(probs[i])} for i in order
                ]
            }
        )
    return out


def parse_classification(element: bytes | str) -> tuple[float, int, str]:
    """Triton's classification element "value:index:label"."""
    text = element.decode() if isinstance(element, bytes) else element
    value, index, label = text.split(":", 2)
    return float(value), int(index), label

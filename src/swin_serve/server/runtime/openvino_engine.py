"""The second CPU engine: OpenVINO's runtime on the same ONNX file, at float32 or bfloat16.

Why OpenVINO's own runtime and not ONNX Runtime's OpenVINO execution provider: that provider
ships as ``onnxruntime-openvino``, a separate build that installs the same ``onnxruntime``
module as the CPU and CUDA builds (so it cannot sit beside them), and follows ONNX Runtime's
releases a step behind. The ``openvino`` package reads ONNX itself and installs beside
onnxruntime.

Each lane of the layout (runtime/layout.py) is one compiled model: ``NUM_STREAMS`` runs at once,
``INFERENCE_NUM_THREADS`` threads between them, and a pool of one infer request per stream. The
precision is the ``INFERENCE_PRECISION_HINT``, always set: OpenVINO's own default on a CPU with
native bfloat16 is bf16, which must never be served under the name fp32.
"""

from __future__ import annotations

import functools
import logging
import queue

import numpy as np

from swin_serve.artifact.contract import GOLDEN_KEY, ManifestError, manifest_from_metadata
from swin_serve.artifact.onnx_metadata import MetadataError, read_metadata
from swin_serve.server.runtime.engine import (
    LaneEngine,
    ModelLoadError,
    manual_choice,
    manual_layout,
    timed_layout,
)
from swin_serve.server.runtime.layout import Lane, Lanes
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.settings import Settings

log = logging.getLogger(__name__)

PROVIDER = "OpenVINO CPU"
_HINTS = {"fp32": "f32", "bf16": "bf16"}


@functools.cache
def _core():
    import openvino as ov

    return ov.Core()


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bfloat16 natively here (AVX-512 BF16 or AMX)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def version() -> str:
    import openvino as ov

    return ov.get_version()


class RequestPool:
    """One compiled model and an infer request per stream; a run borrows one. The outputs are
    copied out before the request is given back: its tensors are overwritten by the next run."""

    def __init__(self, compiled, streams: int, output_names: list[str]) -> None:
        self._ports = {p.get_any_name(): p for p in compiled.outputs}
        self._names = output_names
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(streams):
            self._free.put(compiled.create_infer_request())

    def __call__(self, feed: np.ndarray) -> list[np.ndarray]:
        request = self._free.get()
        try:
            result = request.infer({0: feed})
            return [np.array(result[self._ports[name]]) for name in self._names]
        finally:
            self._free.put(request)


class OpenVinoEngine(LaneEngine):
    engine_name = "openvino"
    provider = PROVIDER

    @classmethod
    def load(cls, settings: Settings, file: ModelFile, precision: str) -> OpenVinoEngine:
        """An engine on ``file``'s bytes at ``precision`` (fp32 or bf16), its layout calibrated
        here; raises ModelLoadError with a message a human can act on."""
        if file.data is None:
            raise ModelLoadError(f"model file not found: {file.path.resolve()}")
        try:
            metadata = read_metadata(file.data)
            manifest = manifest_from_metadata(metadata, source=str(file.path))
            model = _core().read_model(bytes(file.data))
        except MetadataError as exc:
            raise ModelLoadError(f"cannot load ONNX model {file.path}: {exc}") from exc
        except ManifestError as exc:
            raise ModelLoadError(str(exc)) from exc
        except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses
            raise ModelLoadError(f"OpenVINO cannot read {file.path}: {exc}") from exc
        output_names = [o.get_any_name() for o in model.outputs]
        missing = set(manifest.outputs) - set(output_names)
        if missing:
            raise ModelLoadError(
                f"{file.path}: manifest names outputs the graph lacks: {sorted(missing)}"
            )

        def open_lane(lane: Lane) -> RequestPool:
            config = {
                "INFERENCE_PRECISION_HINT": _HINTS[precision],
                "NUM_STREAMS": lane.runs,
                "INFERENCE_NUM_THREADS": lane.runs * lane.threads,
                # Pinned threads would fight the image decoder and other models for their cores.
                "ENABLE_CPU_PINNING": False,
            }
            try:
                compiled = _core().compile_model(model, "CPU", config)
            except Exception as exc:
                raise ModelLoadError(f"OpenVINO cannot compile {file.path}: {exc}") from exc
            # Read back: a precision served under another name is the one thing never allowed.
            got = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            if got != _HINTS[precision]:
                raise ModelLoadError(
                    f"OpenVINO compiled {file.path} at {got}, not {_HINTS[precision]} as asked"
                )
            return RequestPool(compiled, lane.runs, output_names)

        size = manifest.image_size
        feed = np.zeros((1, 3, size, size), dtype=np.float32)
        if manual_layout(settings):
            layout = manual_choice(settings)
            wide, narrow = None, open_lane(layout.narrow)
        else:
            layout, wide, narrow = timed_layout(open_lane, feed, settings, file)
        engine = cls(manifest, output_names, Lanes(wide, narrow))
        engine.golden_text = metadata.get(GOLDEN_KEY)
        engine.precision = precision
        engine.layout = layout
        engine.served_file = {"path": str(file.path), "digest": file.digest}
        log.info(
            "loaded %s (%s weights) on OpenVINO %s at %s; layout %s: %s",
            manifest.variant,
            manifest.weights.source,
            version(),
            precision,
            layout.name,
            layout.reason,
        )
        return engine

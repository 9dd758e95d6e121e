"""The data plane: what every transport asks of the served models, written once.

The plain HTTP API (``/classify``, ``/features``, ``/v1/models``), the Open Inference Protocol
over HTTP and the same protocol over gRPC each parse their request, call this, and render its
answer (or its ``ApiError``) their own way. It is the one place that reads the model registry:

* a model by name, leased until the request is answered;
* readiness, of the server and of one model;
* a model's metadata;
* the checks before an inference, and the inference itself through the model's batcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from swin_serve.artifact.contract import Manifest, served_warning
from swin_serve.server import inference
from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.lifecycle import Phase
from swin_serve.server.observability import tracing
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.repository.registry import ModelEntry, ModelState, Registry, not_ready
from swin_serve.server.runtime.batcher import ImageResult
from swin_serve.server.settings import Settings
from swin_serve.server.state import RequestTimings, ServiceState
from swin_serve.server.v2 import infer
from swin_serve.server.v2.model import check_version, model_metadata
from swin_serve.server.v2.tensors import InferenceRequest, OutputTensor

T = TypeVar("T")


def weights_warning(manifest: Manifest) -> str | None:
    """What every answer about a model says of it: that its weights are random, if so."""
    return served_warning(manifest)


class DataPlane:
    """The served models as every transport sees them, over one ``ServiceState``."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def _registry(self) -> Registry:
        return self.state.lifecycle.registry

    # -- the server ------------------------------------------------------------------------------

    def server_ready(self) -> bool:
        """The default model loaded and warm, and the server not draining nor failed."""
        return self.state.lifecycle.ready

    def check_server_ready(self) -> None:
        """503 unless the server is ready."""
        if not self.server_ready():
            raise self.unavailable()

    def taking_requests(self) -> bool:
        return self.state.lifecycle.taking_requests

    def unavailable(self) -> ApiError:
        """The 503 for a server that cannot take this request in its present phase."""
        lifecycle = self.state.lifecycle
        if lifecycle.draining:
            return ApiError(ErrorCode.DRAINING, "server is shutting down; retry on another replica")
        if lifecycle.failed:
            return ApiError(ErrorCode.NOT_READY, "model device failed; the server is restarting")
        registry = self._registry
        if (
            lifecycle.taking_requests
            and registry.default_entry() is None
            and (registry.default_name is not None or not registry.entries)
        ):  # past start-up, with no default model left to serve
            return ApiError(ErrorCode.NOT_READY, registry.no_default())
        return ApiError(ErrorCode.NOT_READY, "model is loading or warming up")

    # -- the models ------------------------------------------------------------------------------

    def default_name(self) -> str | None:
        return self._registry.default_name

    def default_entry(self) -> ModelEntry | None:
        return self._registry.default_entry()

    def listing(self) -> list[ModelEntry]:
        """Every model, sorted by name, those unloading included."""
        return self._registry.listing()

    def loaded(self, name: str, version: str = "") -> tuple[ModelEntry, LoadedModel]:
        """The entry of ``name`` and the model loaded under it, to describe (maybe still warming
        up): 404 for an unknown name or version, 503 while nothing is loaded."""
        entry = self._registry.entry(name)
        check_version(name, version)
        if entry.model is None:
            raise not_ready(entry)
        return entry, entry.model

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        """The Open Inference Protocol's metadata of a model."""
        _, model = self.loaded(name, version)
        return model_metadata(name, model.engine)

    def why_not_ready(self, name: str, version: str = "") -> ApiError | None:
        """The 503 a request to the model would get now, or None when it is ready; 404 (raised)
        for an unknown name or version."""
        entry = self._registry.entry(name)
        check_version(name, version)
        lifecycle = self.state.lifecycle
        if lifecycle.draining or not lifecycle.taking_requests:
            return self.unavailable()
        if entry.state is not ModelState.READY:
            return not_ready(entry)
        return None

    def serving(self, entry: ModelEntry) -> bool:
        """The model takes requests and the server is ready (past warm-up, not draining)."""
        return entry.state is ModelState.READY and self.state.lifecycle.phase is Phase.READY

    @contextmanager
    def lease(self, name: str | None) -> Iterator[LoadedModel]:
        """The model a request under ``name`` (None: the default) runs on, held until the block
        ends: a swap or a removal never pulls it away mid-request. 503 during start-up or after
        a fatal device error, 404 for an unknown name, 503 for a model not ready."""
        if not self.taking_requests():
            raise self.unavailable()
        model = self._registry.model_for_requests(name)
        tracing.annotate(**{"swin.model": model.name})
        with model.leased():
            yield model

    # -- inference -------------------------------------------------------------------------------

    def admit(self, model: LoadedModel, name: str, version: str = "") -> None:
        """The checks before a request's body is read: 404 for an unknown version, 503 at once
        when the model's queue is full (reading and decoding would be wasted)."""
        check_version(name, version)
        inference.refuse_if_full(model.batcher)

    def deadline(self, started: float, *requested_ms: float | None) -> float:
        """Monotonic deadline: the server default, or the client's shorter ask (never longer)."""
        return inference.effective_deadline(self.state, started, *requested_ms)

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the decode threads (parsing a body, encoding an answer)."""
        return await inference.off_loop(self.state, fn, *args)

    async def infer_images(
        self,
        model: LoadedModel,
        bodies: list[bytes],
        timings: RequestTimings,
        deadline: float,
    ) -> list[ImageResult]:
        """Encoded images decoded (worker threads) and batch-run. A caller that hands over its
        last reference to ``bodies`` lets their memory go once decoded, while they wait for the
        model."""
        inputs = await inference.decode_all(self.state, model, timings, bodies, deadline)
        del bodies
        return await inference.submit(model.batcher, inputs, deadline, timings)

    async def infer_tensors(
        self,
        model: LoadedModel,
        request: InferenceRequest,
        timings: RequestTimings,
        deadline: float,
    ) -> list[OutputTensor]:
        """An Open Inference Protocol request checked against ``model``, run, and answered."""
        return await infer.run(self.state, model, request, timings, deadline)

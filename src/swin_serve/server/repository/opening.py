"""Opening one model: one read of its file, an engine on those very bytes, its golden answers
replayed, its batcher started; then its warm-up. Knows nothing of names being served.

A drain (``stop``) ends a load at its next step, so that it neither delays the exit nor takes
CPU from the requests being drained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.repository.models import (
    LoadAbandoned,
    LoadedModel,
    Opener,
    announce,
    new_batcher,
    self_check,
    warm_up,
)
from swin_serve.server.runtime.engine import Engine, ModelLoadError
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")


class Opening:
    """Opens models with ``opener``; ``on_fatal`` is called when a model's device fails for good."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        opener: Opener,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self._opener, self._on_fatal = opener, on_fatal
        self.stopped = False  # a drain has begun: no more loads

    def stop(self) -> None:
        """No more loads: one in progress stops at its next step."""
        self.stopped = True

    def check(self) -> None:
        """Raise LoadAbandoned once a drain has begun."""
        if self.stopped:
            raise LoadAbandoned("the server is shutting down")

    async def open(
        self, name: str | None, path: Path, file: ModelFile | None = None
    ) -> LoadedModel:
        """Load ``path`` (``file``: read already) and replay its golden answers; its batcher
        runs, but it is not warm. ``name`` None: the name its manifest gives."""
        started = time.monotonic()
        engine, file = await asyncio.to_thread(self._open_file, path, file)
        name = name or engine.manifest.name
        self.check()
        report = await asyncio.to_thread(self_check, engine, f"model {name} ({path})")
        self.check()
        announce(engine, name)
        metrics = self.metrics.for_model(name)
        batcher = new_batcher(engine, self.settings, metrics, self._on_fatal)
        batcher.start()
        model = LoadedModel(name, engine, batcher, report, file.digest, path, file.stamp)
        model.open_s = time.monotonic() - started
        return model

    def _open_file(self, path: Path, file: ModelFile | None) -> tuple[Engine, ModelFile]:
        """An engine on one read of ``path``, and that read (its bytes released: the session
        holds the model now). A worker thread's work."""
        if file is None:
            try:
                file = ModelFile.read(path)
            except FileNotFoundError:
                file = ModelFile(path)  # the opener says what no file means
            except OSError as exc:
                raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc
        try:
            return self._opener(file), file
        finally:
            file.release()

    async def warm(self, model: LoadedModel) -> None:
        """Run each batch size once; then ``model`` is warm, and its load time is observed."""
        started = time.monotonic()
        sizes = await warm_up(model, stop=lambda: self.stopped)
        self.metrics.model_load_time.observe(model.open_s + time.monotonic() - started)
        log.info("model %s: warm-up done (batch sizes %s)", model.name, sizes)

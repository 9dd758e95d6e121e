"""Loading one model into the registry during a reload, and what each outcome asks of it:

- warm: the name switches to it in one step (``Registry.publish``), and the model it replaces
  retires once it has finished what it holds;
- failed: a log line and ``swin_model_loads_total{outcome="failed"}``; whatever is serving
  under the name keeps on, and the file is tried again only once it changes;
- refused for SWIN_MAX_MODELS: ``outcome="refused"``, and tried again at every reload;
- its file removed (before or while it loads): its name answers 404 at once, and its model
  retires.

A load stopped by a drain is none of these: nothing is wrong with the file.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.repository.opening import Opening
from swin_serve.server.repository.registry import ModelEntry, Registry
from swin_serve.server.repository.retire import retire
from swin_serve.server.repository.tasks import Tasks
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")


class Loading:
    """Loads models with ``opening`` and asks ``registry`` to record each outcome; the models
    retiring run in ``retirements``."""

    def __init__(
        self, settings: Settings, registry: Registry, opening: Opening, retirements: Tasks
    ) -> None:
        self.settings, self.registry = settings, registry
        self.opening, self._retirements = opening, retirements

    async def load(self, entry: ModelEntry, path: Path, file: ModelFile | None = None) -> None:
        """Open, self-check and warm up ``path`` (``file``: read already) for ``entry``'s name."""
        started = time.monotonic()
        try:
            model = await self.opening.open(entry.name, path, file)
        except Exception as exc:
            self._load_failed(entry, path, exc)
            return
        try:
            await self.opening.warm(model)
        except BaseException as exc:  # a cancelled reload too: its batcher must not linger
            await model.batcher.drain(0.5)
            if not isinstance(exc, Exception):
                raise
            self._load_failed(entry, path, exc)
            return
        if not self.registry.is_current(entry) or self.opening.stopped:
            await model.batcher.drain(0.5)  # removed meanwhile, or the server is draining
            return
        old = self.registry.publish(entry, model)
        took = time.monotonic() - started
        log.info("model %s: %s in %.2f s", entry.name, "swapped" if old else "ready", took)
        if old is not None:
            self.retire(old)

    def at_capacity(self, entry: ModelEntry) -> bool:
        """SWIN_MAX_MODELS other names are served (loading or ready) already."""
        return self.registry.serving(besides=entry) >= self.settings.max_models

    def refuse(self, entry: ModelEntry) -> None:
        """A refused name is kept as failed and tried again at every reload."""
        reason = f"not loaded: SWIN_MAX_MODELS={self.settings.max_models} models are served already"
        log.error("model %s: %s", entry.name, reason)
        self.registry.refuse(entry, reason)

    def failed(self, entry: ModelEntry, exc: BaseException) -> None:
        """``entry``'s file could not be loaded, self-checked or warmed up."""
        verb = "replacement refused" if entry.model is not None else "refused"
        log.error("model %s: %s: %s", entry.name, verb, exc)
        self.registry.fail(entry, f"{type(exc).__name__}: {exc}")

    def remove(self, entry: ModelEntry) -> None:
        """``entry``'s file is gone: 404 at once; its model retires."""
        log.info("model %s: its file was removed; unloading", entry.name)
        model = self.registry.remove(entry)
        if model is not None:
            self.retire(model)

    def retire(self, model: LoadedModel) -> None:
        """Let ``model`` finish what it holds in the background, then unload it."""
        self._retirements.spawn(retire(self.registry, model, self.settings))

    def _load_failed(self, entry: ModelEntry, path: Path, exc: Exception) -> None:
        if self.opening.stopped:
            return  # abandoned for a drain: nothing is wrong with the file
        if not path.exists():  # removed while it loaded: gone, not failed
            if self.registry.is_current(entry):
                self.remove(entry)
            return
        self.failed(entry, exc)

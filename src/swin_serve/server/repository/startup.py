"""The models a server starts with: every file there is loaded (the default first, at most
SWIN_MAX_MODELS of them), then warmed up, the default first.

The server starts only if the default model loads: an empty repository, a default that is
missing or fails to load, or (with no default) no model that loads at all is a ModelLoadError,
so that the server exits rather than half-serves. Any other model that fails is refused, and the
server starts without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from swin_serve.server.repository.files import Listing
from swin_serve.server.repository.listings import Lister
from swin_serve.server.repository.loading import Loading
from swin_serve.server.repository.models import LoadAbandoned, LoadedModel
from swin_serve.server.repository.registry import ModelEntry, Registry
from swin_serve.server.runtime.engine import ModelLoadError
from swin_serve.server.runtime.model_file import FileStamp
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")


class Startup:
    """Start-up's loads into ``registry``: ``load``, then ``warm``."""

    def __init__(
        self, settings: Settings, registry: Registry, lister: Lister, loading: Loading
    ) -> None:
        self.settings, self.registry = settings, registry
        self._lister, self._loading = lister, loading
        self._opening = loading.opening
        self.look_again = False  # look at the files once the start-up models are warm
        self._default: str | None = None  # the default model while starting up
        self._loaded: list[tuple[ModelEntry, LoadedModel]] = []  # loaded, not yet warm

    async def load(self) -> None:
        """Load (not yet warm) every model there is; ModelLoadError if the server cannot start."""
        directory = self.settings.model_repository
        if directory is None:
            await self._load_single(Path(self.settings.model_path))
            return
        if "model_path" in self.settings.model_fields_set:
            log.info("SWIN_MODEL_PATH is ignored: SWIN_MODEL_REPOSITORY=%s is served", directory)
        listing = await self._lister.settled(directory)
        names = self._order(listing, directory)
        self._default = self.settings.default_model or (
            names[0] if len(listing.files) == 1 else None
        )
        for name in names:
            self._opening.check()
            await self._load_one(name, listing.files[name], listing.stamps[name])
        if not self._loaded:  # no default to fail on, and nothing else loaded either
            raise ModelLoadError(f"no model of {directory} could be loaded (see above)")
        # A look once they are written; a reload asked for while they loaded is kept.
        self.look_again = self.look_again or bool(listing.unsettled)

    async def _load_single(self, path: Path) -> None:
        model = await self._opening.open(None, path)
        default = self.settings.default_model
        if default is not None and default != model.name:
            await model.batcher.drain(0.5)
            raise ModelLoadError(
                f"SWIN_DEFAULT_MODEL={default!r}, but SWIN_MODEL_PATH={path} is model "
                f"{model.name!r} (a one-model repository): unset it, or set SWIN_MODEL_REPOSITORY"
            )
        self._lister.single_name = self._default = model.name
        entry = self.registry.add(model.name, path, stamp=model.stamp, model=model)
        self._loaded.append((entry, model))

    def _order(self, listing: Listing, directory: Path) -> list[str]:
        """The names to load, the default first, at most SWIN_MAX_MODELS of them; the others
        are refused."""
        names = sorted(listing.files)
        if not names:
            raise ModelLoadError(
                f"model repository {directory} holds no models: put exported NAME.onnx files "
                "in it (`make export` writes them to artefacts/)"
            )
        default = self.settings.default_model
        if default is not None:
            if default not in listing.files:
                still = " (still being written)" if default in listing.unsettled else ""
                raise ModelLoadError(
                    f"SWIN_DEFAULT_MODEL={default!r} is not in {directory}{still} (models: {names})"
                )
            names = [default, *(n for n in names if n != default)]
        for name in names[self.settings.max_models :]:
            self._loading.refuse(self.registry.add(name, listing.files[name]))
        return names[: self.settings.max_models]

    async def _load_one(self, name: str, path: Path, stamp: FileStamp) -> None:
        entry = self.registry.add(name, path, stamp=stamp)
        try:
            model = await self._opening.open(name, path)
        except Exception as exc:
            if name == self._default or isinstance(exc, LoadAbandoned):
                raise
            self._loading.failed(entry, exc)
            return
        self.registry.hold(entry, model)
        self._loaded.append((entry, model))

    async def warm(self, on_default_warm: Callable[[], None]) -> None:
        """Warm up the models ``load`` loaded, the default first; ``on_default_warm`` once it
        is. A non-default model that fails is refused; the default failing raises."""
        loaded, self._loaded = self._loaded, []
        for entry, model in loaded:
            try:
                await self._opening.warm(model)
            except Exception as exc:
                if entry.name == self._default:
                    raise
                await model.batcher.drain(0.5)
                self.registry.withdraw(entry)
                self._loading.failed(entry, exc)
                continue
            self.registry.publish(entry, model)
            if entry.name == self._default:
                on_default_warm()
        if self._default is None:
            on_default_warm()

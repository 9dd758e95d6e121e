"""The models a server serves, by name, and how requests find them.

Each name has one entry; its state is what ``/v1/models`` shows:

    loading -> ready -> unloading -> (gone: 404)
    loading -> failed (the reason is kept; the file is retried once it changes)

A replacement loads beside the model it replaces, which keeps serving (its entry stays ready)
until the new one is warm; the name then points at the new one in one assignment on the event
loop, and the old one is retired. The loader (``swin_serve.server.repository.loader``) decides
what to change and asks: the registry alone changes an entry, every state above included, and
calls ``on_change`` after each change. It also answers the routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from swin_serve.server.errors import ApiError, ErrorCode
from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.runtime.model_file import FileStamp
from swin_serve.server.settings import Settings


class ModelState(StrEnum):
    LOADING = "loading"  # being loaded, self-checked and warmed up; takes no requests yet
    READY = "ready"  # takes requests
    FAILED = "failed"  # could not be loaded, self-checked or warmed up (see reason)
    UNLOADING = "unloading"  # its file was removed: finishing the requests it holds; 404 to new


@dataclass(eq=False)
class ModelEntry:
    """One name in the repository, and what is served under it."""

    name: str
    state: ModelState
    path: Path | None = None
    model: LoadedModel | None = None  # what requests under this name go to
    reason: str | None = None  # why it failed, or why its last replacement did
    stamp: FileStamp | None = None  # the file as last loaded or refused
    replacing: bool = False  # a new version of the file is loading beside it
    refused: bool = False  # refused for SWIN_MAX_MODELS: retried at every reload

    def summary(self) -> dict[str, object]:
        engine = self.model.engine if self.model is not None else None
        return {
            "name": self.name,
            "state": self.state.value,
            "reason": self.reason,
            "reloading": self.replacing,
            "variant": engine.manifest.variant if engine else None,
            "precision": engine.precision if engine else None,
            "provider": engine.provider if engine else None,
            "digest": self.model.digest if self.model else None,
        }


class Registry:
    """Every entry by name, the entries being unloaded, and the default model."""

    def __init__(self, settings: Settings, metrics: Metrics, on_change: Callable[[], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._on_change = on_change  # after every change of an entry: readiness may follow
        self.entries: dict[str, ModelEntry] = {}
        self.unloading: dict[str, ModelEntry] = {}  # a name can be re-added while it unloads
        self.retiring: set[LoadedModel] = set()  # replaced or removed; draining

    # -- names -----------------------------------------------------------------------------------

    @property
    def default_name(self) -> str | None:
        """SWIN_DEFAULT_MODEL, or the only model when there is one."""
        if self.settings.default_model:
            return self.settings.default_model
        return next(iter(self.entries)) if len(self.entries) == 1 else None

    def default_entry(self) -> ModelEntry | None:
        name = self.default_name
        return self.entries.get(name) if name is not None else None

    def default_ready(self) -> bool:
        entry = self.default_entry()
        if entry is not None:
            return entry.state is ModelState.READY
        # No default (several models, none named): ready while any model is.
        return self.default_name is None and any(
            e.state is ModelState.READY for e in self.entries.values()
        )

    def serving(self, *, besides: ModelEntry | None = None) -> int:
        """Names counted against SWIN_MAX_MODELS: loading or ready (``besides`` not counted)."""
        counted = (ModelState.LOADING, ModelState.READY)
        return sum(e.state in counted for e in self.entries.values() if e is not besides)

    def listing(self) -> list[ModelEntry]:
        """Every entry, sorted by name, those unloading included."""
        everything = [*self.entries.values(), *self.unloading.values()]
        return sorted(everything, key=lambda e: (e.name, e.state is ModelState.UNLOADING))

    def live_models(self) -> list[LoadedModel]:
        """Every model holding a batcher: serving, unloading or retiring."""
        served = [e.model for e in [*self.entries.values(), *self.unloading.values()] if e.model]
        return [*served, *self.retiring]

    def is_current(self, entry: ModelEntry) -> bool:
        """``entry`` is still what its name stands for: not removed (nor re-added) meanwhile."""
        return self.entries.get(entry.name) is entry

    # -- what the routes ask ---------------------------------------------------------------------

    def entry(self, name: str | None) -> ModelEntry:
        """The entry a request names (None: the default), or 404."""
        if name is None:
            name = self.default_name
            if name not in self.entries:
                raise ApiError(ErrorCode.NOT_FOUND, self.no_default())
        entry = self.entries.get(name)
        if entry is None:
            raise ApiError(
                ErrorCode.NOT_FOUND, f"unknown model {name[:200]!r}; models: {self._names()}"
            )
        return entry

    def model_for_requests(self, name: str | None) -> LoadedModel:
        """The model a request under ``name`` is queued on: 404 if unknown, 503 if not ready."""
        entry = self.entry(name)
        model = entry.model
        if entry.state is not ModelState.READY or model is None or not model.warm:
            raise not_ready(entry)
        return model

    def no_default(self) -> str:
        """Why a request that names no model finds none: nothing served, or no default."""
        if not self.entries:
            return "this server serves no model: its repository holds none that loaded"
        if self.default_name is None:
            return (
                "this server serves several models and none is the default: name one, as "
                f"/v1/models/NAME/classify (models: {self._names()})"
            )
        return f"the default model {self.default_name!r} is not served; models: {self._names()}"

    def _names(self) -> str:
        names = sorted(self.entries)
        shown = ", ".join(repr(n) for n in names[:20])
        return f"[{shown}{', ...' if len(names) > 20 else ''}]"

    # -- changes: the only code that changes an entry; on the event loop, each then on_change --

    def add(
        self,
        name: str,
        path: Path,
        *,
        stamp: FileStamp | None = None,
        model: LoadedModel | None = None,
    ) -> ModelEntry:
        """A new name, loading; ``model``: one loaded at start-up, not yet warm."""
        entry = ModelEntry(name, ModelState.LOADING, path, model=model, stamp=stamp)
        self.entries[name] = entry
        self._on_change()
        return entry

    def hold(self, entry: ModelEntry, model: LoadedModel) -> None:
        """A start-up model, loaded but not warm: in its entry (still loading) until it is."""
        entry.model = model
        self._on_change()

    def withdraw(self, entry: ModelEntry) -> None:
        """The start-up model in ``entry`` cannot be warmed up: the entry lets go of it."""
        entry.model = None
        self._on_change()

    def restamp(self, entry: ModelEntry, stamp: FileStamp) -> None:
        """The file as read for this look: the next look compares with it."""
        entry.stamp = stamp
        self._on_change()

    def clear_failure(self, entry: ModelEntry) -> None:
        """The file is back to the content that serves: a failed replacement is moot."""
        entry.reason = None
        self._on_change()

    def begin_loading(self, entry: ModelEntry, *, stamp: FileStamp | None = None) -> None:
        """A name that serves nothing (failed or refused) loads its file again."""
        entry.state, entry.refused, entry.reason = ModelState.LOADING, False, None
        if stamp is not None:
            entry.stamp = stamp
        self._on_change()

    def begin_replacing(self, entry: ModelEntry) -> None:
        """A new version loads beside the one serving, which stays ready."""
        entry.replacing = True
        self._on_change()

    def publish(self, entry: ModelEntry, model: LoadedModel) -> LoadedModel | None:
        """Point ``entry`` at ``model`` (warm) at once; returns the model it replaces, if any."""
        old, entry.model = entry.model, model
        entry.state, entry.replacing, entry.reason = ModelState.READY, False, None
        self.entries[entry.name] = entry
        engine = model.engine
        weights = engine.manifest.weights
        self.metrics.set_model(
            model=entry.name,
            variant=engine.manifest.variant,
            precision=engine.precision,
            provider=engine.provider,
            weights="random" if weights.random else weights.source,
        )
        self.metrics.model_ready.labels(model=entry.name).set(1)
        self.metrics.model_loads.labels(model=entry.name, outcome="loaded").inc()
        self._on_change()
        if old is None or old is model:  # a start-up model was in its entry while warming
            return None
        self.retiring.add(old)
        return old

    def fail(self, entry: ModelEntry, reason: str, *, outcome: str = "failed") -> None:
        """Record a load that did not succeed; a model still serving under the name keeps on."""
        self.metrics.model_loads.labels(model=entry.name, outcome=outcome).inc()
        entry.reason, entry.replacing = reason[:2000], False
        if entry.model is None:
            entry.state = ModelState.FAILED
            self.metrics.model_ready.labels(model=entry.name).set(0)
        self._on_change()

    def refuse(self, entry: ModelEntry, reason: str) -> None:
        """Refused for SWIN_MAX_MODELS: failed, and tried again at every reload."""
        entry.refused = True
        self.fail(entry, reason, outcome="refused")

    def remove(self, entry: ModelEntry) -> LoadedModel | None:
        """Its file is gone: new requests get 404 at once; returns the model to retire."""
        del self.entries[entry.name]
        self.metrics.model_ready.labels(model=entry.name).set(0)
        if entry.model is None:
            self._forget(entry.name)
        else:
            entry.state = ModelState.UNLOADING
            self.unloading[entry.name] = entry
        self._on_change()
        return entry.model

    def unloaded(self, model: LoadedModel) -> None:
        """``model`` has drained and holds nothing; drop what still refers to it."""
        self.retiring.discard(model)
        entry = self.unloading.get(model.name)
        if entry is not None and entry.model is model:
            del self.unloading[model.name]
        self._forget(model.name)

    def _forget(self, name: str) -> None:
        """Drop the name's series, unless something of that name still counts into them."""
        if name not in self.entries and all(m.name != name for m in self.live_models()):
            self.metrics.forget_model(name)


def not_ready(entry: ModelEntry) -> ApiError:
    """The 503 for a known model that cannot take a request now."""
    if entry.state is ModelState.FAILED:
        return ApiError(
            ErrorCode.NOT_READY, f"model {entry.name!r} failed to load: {entry.reason}"[:1000]
        )
    return ApiError(ErrorCode.NOT_READY, f"model {entry.name!r} is loading or warming up")

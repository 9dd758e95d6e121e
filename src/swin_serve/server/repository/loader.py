"""Loading the repository into the registry: at start-up, and again on each reload (SIGHUP, or
every SWIN_REPOSITORY_POLL_S seconds).

A reload compares the files with what is served:
- a new file is loaded, self-checked and warmed up before its name takes requests;
- a file with new content (its SHA-256, not just its time) is loaded beside the old model, and
  the name switches over once the new one is warm; the old one finishes its requests, then goes;
- a removed file's name answers 404 at once, and its model finishes what it holds, then goes;
- a file that fails any step is refused (log line, ``swin_model_loads_total{outcome="failed"}``,
  its state in /v1/models), and whatever is serving is left alone.

Loads run one at a time (each holds the CPUs for a while, and two copies of a model are the most
memory a swap needs); a reload asked for during another one runs right after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.repository.files import (
    SETTLE_S,
    FileStamp,
    Listing,
    ModelFile,
    check_directory,
    scan,
    single_file,
)
from swin_serve.server.repository.models import (
    LoadAbandoned,
    LoadedModel,
    Opener,
    announce,
    new_batcher,
    self_check,
    warm_up,
)
from swin_serve.server.repository.registry import ModelEntry, ModelState, Registry, retire, spawn
from swin_serve.server.runtime.engine import Engine, ModelLoadError
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")

STARTUP_SETTLE_TRIES = 10  # at start-up, wait this many SETTLE_S for files still being written


class Loader:
    """Loads models into ``registry``; ``on_change`` is called after every change of state, and
    ``on_fatal`` when a model's device fails for good."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        registry: Registry,
        opener: Opener,
        *,
        on_fatal: Callable[[BaseException], None],
        on_change: Callable[[], None],
    ) -> None:
        self.settings, self.metrics, self.registry = settings, metrics, registry
        self._opener = opener
        self._on_fatal, self._on_change = on_fatal, on_change
        self._lock = asyncio.Lock()
        self._again = False
        self._closed = False
        self._tasks: set[asyncio.Task] = set()  # reloads and polling: cancelled by close()
        self.retirements: set[asyncio.Task] = set()  # old models finishing: never cancelled
        self._accepting = False  # reloads wait until the start-up models are warm
        self._reload_after_start = False
        self._default: str | None = None  # the default model while starting up
        self._single_name: str | None = None  # SWIN_MODEL_PATH: the one model's name
        self._initial: list[tuple[ModelEntry, LoadedModel]] = []
        self._misnamed: set[str] = set()  # warned about once each

    # -- start-up --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load (not yet warm) every model there is; raise ModelLoadError if there is none, or if
        the default model cannot be loaded, so that the server exits rather than half-serves.
        A drain that begins meanwhile ends it early, without an error: the server then stops."""
        try:
            await self._start()
        except LoadAbandoned:
            log.info("start-up stopped: the server is shutting down")

    async def _start(self) -> None:
        directory = self.settings.model_repository
        if directory is None:
            await self._start_single(Path(self.settings.model_path))
            return
        if "model_path" in self.settings.model_fields_set:
            log.info("SWIN_MODEL_PATH is ignored: SWIN_MODEL_REPOSITORY=%s is served", directory)
        listing = await self._settled_listing(directory)
        names = self._startup_order(listing, directory)
        self._default = self.settings.default_model or (
            names[0] if len(listing.files) == 1 else None
        )
        for name in names:
            self._check_open()
            await self._start_one(name, listing.files[name], listing.stamps[name])
        if not self._initial:  # no default to fail on, and nothing else loaded either
            raise ModelLoadError(f"no model of {directory} could be loaded (see above)")
        self._reload_after_start = bool(listing.unsettled)  # a look once they are written

    async def _start_single(self, path: Path) -> None:
        model = await self._open(None, path)
        default = self.settings.default_model
        if default is not None and default != model.name:
            await model.batcher.drain(0.5)
            raise ModelLoadError(
                f"SWIN_DEFAULT_MODEL={default!r}, but SWIN_MODEL_PATH={path} is model "
                f"{model.name!r} (a one-model repository): unset it, or set SWIN_MODEL_REPOSITORY"
            )
        self._single_name = self._default = model.name
        entry = ModelEntry(model.name, ModelState.LOADING, path, model=model, stamp=model.stamp)
        self.registry.entries[model.name] = entry
        self._initial.append((entry, model))

    async def _settled_listing(self, directory: Path) -> Listing:
        try:
            check_directory(directory)
            listing = await asyncio.to_thread(scan, directory)
            for _ in range(STARTUP_SETTLE_TRIES):
                if not listing.unsettled:
                    break
                log.info("repository: waiting for %s to be written", sorted(listing.unsettled))
                await asyncio.sleep(SETTLE_S)
                listing = await asyncio.to_thread(scan, directory)
        except OSError as exc:
            raise ModelLoadError(f"SWIN_MODEL_REPOSITORY: {exc}") from exc
        self._warn_misnamed(listing)
        return listing

    def _startup_order(self, listing: Listing, directory: Path) -> list[str]:
        """The names to load, the default first, at most SWIN_MAX_MODELS of them."""
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
            entry = ModelEntry(name, ModelState.FAILED, listing.files[name], refused=True)
            self.registry.entries[name] = entry
            self._refuse(entry)
        return names[: self.settings.max_models]

    async def _start_one(self, name: str, path: Path, stamp: FileStamp) -> None:
        entry = ModelEntry(name, ModelState.LOADING, path, stamp=stamp)
        self.registry.entries[name] = entry
        try:
            model = await self._open(name, path)
        except Exception as exc:
            if name == self._default or isinstance(exc, LoadAbandoned):
                raise
            self._failed(entry, exc)
            return
        entry.model = model
        self._initial.append((entry, model))

    async def warm_initial(self, on_default_warm: Callable[[], None]) -> None:
        """Warm up the models loaded at start-up, the default first; ``on_default_warm`` once it
        is. A non-default model that fails is refused; the default failing raises."""
        initial, self._initial = self._initial, []
        for entry, model in initial:
            try:
                await self._warm(model)
            except Exception as exc:
                if entry.name == self._default:
                    raise
                await model.batcher.drain(0.5)
                entry.model = None
                self._failed(entry, exc)
                continue
            self._published(entry, model)
            if entry.name == self._default:
                on_default_warm()
        if self._default is None:
            on_default_warm()
        self._accepting = True
        self._start_polling()
        if self._reload_after_start:
            self.request_reload()

    # -- reloads ---------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload soon (from the event loop's thread, a signal handler included); during
        start-up, once the start-up models are warm."""
        if self._closed:
            return
        if not self._accepting:
            self._reload_after_start = True
            return
        spawn(self.reload(), self._tasks)

    async def reload(self) -> None:
        """Bring the served models in line with the files; one reload at a time."""
        if self._lock.locked():
            self._again = True
            return
        async with self._lock:
            self._again = True
            while self._again and not self._closed:
                self._again = False
                await self._sync()

    def stop_loading(self) -> None:
        """No more loads (a drain has begun): a load in progress stops at its next step, so that
        it neither delays the exit nor takes CPU from the requests being drained."""
        self._closed = True

    async def close(self) -> None:
        """Stop reloading; a load in progress is abandoned (its thread finishes on its own)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start_polling(self) -> None:
        if self.settings.repository_poll_s and not self._closed:
            spawn(self._poll(self.settings.repository_poll_s), self._tasks)

    async def _poll(self, every_s: float) -> None:
        while not self._closed:
            await asyncio.sleep(every_s)
            await self.reload()

    async def _sync(self) -> None:
        try:
            listing = await asyncio.to_thread(self._list)
        except OSError as exc:  # the volume went away: keep serving what is loaded
            log.error("repository: cannot be read, nothing changed: %s", exc)
            return
        log.debug("repository: looking (%d model files)", len(listing.files))
        self._warn_misnamed(listing)
        default = self.registry.default_name
        for entry in list(self.registry.entries.values()):
            if entry.name not in listing.stamps:
                self._remove(entry)
        for name, path in listing.files.items():
            if self._closed:
                return
            await self._sync_one(name, path, listing.stamps[name])
        if default is not None and self.registry.default_name is None:
            log.warning(
                "model %s is no longer the default: the repository holds several models and "
                "SWIN_DEFAULT_MODEL is unset, so /classify and /features now answer 404",
                default,
            )
        if listing.unsettled:
            log.info("repository: %s still being written; looking again", sorted(listing.unsettled))
            spawn(self._reload_later(SETTLE_S), self._tasks)

    def _warn_misnamed(self, listing: Listing) -> None:
        for name in sorted(listing.misnamed - self._misnamed):
            log.warning("repository: skipping %s: not a usable model name", name)
        self._misnamed = listing.misnamed

    def _list(self) -> Listing:
        directory = self.settings.model_repository
        if directory is not None:
            return scan(directory)
        return single_file(Path(self.settings.model_path), self._single_name or "")

    async def _reload_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.reload()

    async def _sync_one(self, name: str, path: Path, stamp: FileStamp) -> None:
        entry = self.registry.entries.get(name)
        if entry is None:
            entry = ModelEntry(name, ModelState.LOADING, path, stamp=stamp)
            self.registry.entries[name] = entry
            if self._at_capacity(entry):
                entry.state, entry.refused = ModelState.FAILED, True
                self._refuse(entry)
                return
            self._on_change()
            await self._load(entry, path)
        elif entry.refused:
            if not self._at_capacity(entry):
                entry.state, entry.refused, entry.reason = ModelState.LOADING, False, None
                entry.stamp = stamp
                await self._load(entry, path)
        elif entry.stamp != stamp:
            await self._changed(entry, path, stamp)

    async def _changed(self, entry: ModelEntry, path: Path, stamp: FileStamp) -> None:
        try:  # the one read: what is compared here is what loads below
            file = await asyncio.to_thread(ModelFile.read, path)
        except OSError as exc:
            log.warning("repository: %s: cannot be read yet: %s", entry.name, exc)
            return
        entry.stamp = stamp
        if entry.model is not None and file.digest == entry.model.digest:
            entry.reason = None  # back to what serves: a failed replacement is moot
            self._on_change()
            return
        if entry.model is None:
            if self._at_capacity(entry):
                entry.refused = True
                self._refuse(entry)
                return
            entry.state, entry.reason = ModelState.LOADING, None
        else:
            entry.replacing = True
            log.info(
                "model %s: new content in %s; loading it beside the serving one", entry.name, path
            )
        await self._load(entry, path, file)

    def _at_capacity(self, entry: ModelEntry) -> bool:
        """SWIN_MAX_MODELS other names are served (loading or ready) already."""
        return self.registry.serving(besides=entry) >= self.settings.max_models

    def _refuse(self, entry: ModelEntry) -> None:
        """A refused name is kept as failed and tried again at every reload."""
        reason = f"not loaded: SWIN_MAX_MODELS={self.settings.max_models} models are served already"
        log.error("model %s: %s", entry.name, reason)
        self.registry.fail(entry, reason, outcome="refused")
        self._on_change()

    async def _load(self, entry: ModelEntry, path: Path, file: ModelFile | None = None) -> None:
        started = time.monotonic()
        try:
            model = await self._open(entry.name, path, file)
        except Exception as exc:
            self._load_failed(entry, path, exc)
            return
        try:
            await self._warm(model)
        except BaseException as exc:  # a cancelled reload too: its batcher must not linger
            await model.batcher.drain(0.5)
            if not isinstance(exc, Exception):
                raise
            self._load_failed(entry, path, exc)
            return
        if self.registry.entries.get(entry.name) is not entry or self._closed:
            await model.batcher.drain(0.5)  # removed meanwhile, or the server is draining
            return
        old = self._published(entry, model)
        took = time.monotonic() - started
        log.info("model %s: %s in %.2f s", entry.name, "swapped" if old else "ready", took)
        if old is not None:
            spawn(retire(self.registry, old, self.settings), self.retirements)

    def _load_failed(self, entry: ModelEntry, path: Path, exc: Exception) -> None:
        if self._closed:
            return  # abandoned for a drain: nothing is wrong with the file
        if not path.exists():  # removed while it loaded: gone, not failed
            if self.registry.entries.get(entry.name) is entry:
                self._remove(entry)
            return
        self._failed(entry, exc)

    def _remove(self, entry: ModelEntry) -> None:
        log.info("model %s: its file was removed; unloading", entry.name)
        model = self.registry.remove(entry)
        self._on_change()
        if model is not None:
            spawn(retire(self.registry, model, self.settings), self.retirements)

    # -- one model -------------------------------------------------------------------------------

    async def _open(
        self, name: str | None, path: Path, file: ModelFile | None = None
    ) -> LoadedModel:
        """Load ``path`` (``file``: read already) and replay its golden answers; its batcher
        runs, but it is not warm."""
        started = time.monotonic()
        engine, file = await asyncio.to_thread(self._open_file, path, file)
        name = name or engine.manifest.name
        self._check_open()
        report = await asyncio.to_thread(self_check, engine, f"model {name} ({path})")
        self._check_open()
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

    def _check_open(self) -> None:
        if self._closed:
            raise LoadAbandoned("the server is shutting down")

    async def _warm(self, model: LoadedModel) -> None:
        started = time.monotonic()
        sizes = await warm_up(model, stop=lambda: self._closed)
        self.metrics.model_load_time.observe(model.open_s + time.monotonic() - started)
        log.info("model %s: warm-up done (batch sizes %s)", model.name, sizes)

    def _published(self, entry: ModelEntry, model: LoadedModel) -> LoadedModel | None:
        old = self.registry.publish(entry, model)
        entry.reason = None
        self.metrics.model_loads.labels(model=entry.name, outcome="loaded").inc()
        self._on_change()
        return old

    def _failed(self, entry: ModelEntry, exc: BaseException) -> None:
        verb = "replacement refused" if entry.model is not None else "refused"
        log.error("model %s: %s: %s", entry.name, verb, exc)
        self.registry.fail(entry, f"{type(exc).__name__}: {exc}")
        self._on_change()

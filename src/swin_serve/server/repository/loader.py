"""Loading the repository into the registry: at start-up, and again on each reload (SIGHUP, or
every SWIN_REPOSITORY_POLL_S seconds). ``startup`` says what start-up loads, ``sync`` what a
reload changes, ``loading`` what each load's outcome does; this module says when they run.

Loads run one at a time (each holds the CPUs for a while, and two copies of a model are the most
memory a swap needs); a reload asked for during another one runs right after it. Reloads begin
once the start-up models are warm.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.repository.listings import Lister
from swin_serve.server.repository.loading import Loading
from swin_serve.server.repository.models import LoadAbandoned, Opener
from swin_serve.server.repository.opening import Opening
from swin_serve.server.repository.registry import Registry
from swin_serve.server.repository.startup import Startup
from swin_serve.server.repository.sync import Sync
from swin_serve.server.repository.tasks import Tasks
from swin_serve.server.runtime.model_file import SETTLE_S
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")


class Loader:
    """Loads models with ``opener`` into its ``registry``, which records every change and calls
    ``on_change`` after each; ``on_fatal`` is called when a model's device fails for good."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        opener: Opener,
        *,
        on_fatal: Callable[[BaseException], None],
        on_change: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.registry = registry = Registry(settings, metrics, on_change)
        self._opening = Opening(settings, metrics, opener, on_fatal)
        self._tasks = Tasks()  # reloads and polling: cancelled by close()
        self.retirements = Tasks()  # old models finishing: never cancelled by close()
        loading = Loading(settings, registry, self._opening, self.retirements)
        lister = Lister(settings)
        self._startup = Startup(settings, registry, lister, loading)
        self._sync = Sync(registry, lister, loading)
        self._lock = asyncio.Lock()
        self._again = False
        self._accepting = False  # reloads wait until the start-up models are warm

    # -- start-up --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load (not yet warm) every model there is; raise ModelLoadError if there is none, or if
        the default model cannot be loaded, so that the server exits rather than half-serves.
        A drain that begins meanwhile ends it early, without an error: the server then stops."""
        try:
            await self._startup.load()
        except LoadAbandoned:
            log.info("start-up stopped: the server is shutting down")

    async def warm_initial(self, on_default_warm: Callable[[], None]) -> None:
        """Warm up the models loaded at start-up, the default first; ``on_default_warm`` once it
        is. A non-default model that fails is refused; the default failing raises."""
        await self._startup.warm(on_default_warm)
        self._accepting = True
        self._start_polling()
        if self._startup.look_again:
            self.request_reload()

    # -- reloads ---------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload soon (from the event loop's thread, a signal handler included); during
        start-up, once the start-up models are warm."""
        if self._opening.stopped:
            return
        if not self._accepting:
            self._startup.look_again = True
            return
        self._tasks.spawn(self.reload())

    async def reload(self) -> None:
        """Bring the served models in line with the files; one reload at a time."""
        if self._lock.locked():
            self._again = True
            return
        async with self._lock:
            self._again = True
            while self._again and not self._opening.stopped:
                self._again = False
                if await self._sync.look():
                    self._tasks.spawn(self._reload_later(SETTLE_S))

    def stop_loading(self) -> None:
        """No more loads (a drain has begun): a load in progress stops at its next step, so that
        it neither delays the exit nor takes CPU from the requests being drained."""
        self._opening.stop()

    async def close(self) -> None:
        """Stop reloading; a load in progress is abandoned (its thread finishes on its own)."""
        self._opening.stop()
        await self._tasks.cancel()

    def _start_polling(self) -> None:
        if self.settings.repository_poll_s and not self._opening.stopped:
            self._tasks.spawn(self._poll(self.settings.repository_poll_s))

    async def _poll(self, every_s: float) -> None:
        while not self._opening.stopped:
            await asyncio.sleep(every_s)
            await self.reload()

    async def _reload_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await self.reload()

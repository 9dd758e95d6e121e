"""The server's lifecycle, owned in one place: load, warm up, serve, drain, stop, or fail.

    LOADING -> WARMING -> READY -> DRAINING -> STOPPED
    (from any of them) -> FATAL: the device failed for good; the process must restart

The models themselves, each with its own state, are in ``registry``
(``swin_serve.server.repository.registry``), which alone changes them; ``loader`` fills it, at
start-up and on each reload, and calls back after each change. Readiness (``/readyz`` and the
``swin_ready`` gauge) is READY while the default model is ready, and nothing else. A model takes
requests once it is warm and until the lifespan ends, even while draining (what reached us is
accepted work, which should complete), but never after the device failed.

Every transition runs on the event loop. The drain starts in a signal handler, which only asks
the loop to begin it (``request_drain``), so no transition can interleave with another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum

from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.repository.loader import Loader
from swin_serve.server.repository.models import LoadAbandoned, Opener
from swin_serve.server.runtime.batcher import Batcher, Draining
from swin_serve.server.runtime.decoding import DecodePool
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")

FatalHook = Callable[[BaseException], None]

# How long before the drain budget ends unfinished requests are answered 503: uvicorn cancels
# whatever is left at the budget's end, and a cancelled request gets its bare text 500.
DRAIN_ANSWER_MARGIN_S = 0.3


class Phase(StrEnum):
    LOADING = "loading"  # opening the model and replaying its golden answers
    WARMING = "warming"  # loaded; running each batch size once, requests refused
    READY = "ready"  # serving; /readyz 200
    DRAINING = "draining"  # SIGTERM seen: readiness 503, accepted requests still finish
    STOPPED = "stopped"  # drained; the lifespan has ended
    FATAL = "fatal"  # the device failed: readiness 503, requests refused, exit for a restart


class Lifecycle:
    """The phase of the server, every transition between phases, and what they drive: the
    readiness gauge, the drain budget and its deadline, and the fatal-error hooks.

    ``start`` and ``stop`` are the lifespan's two halves. ``opener`` opens a model file (on a
    worker thread); ``settings`` gives the repository, the batching and the drain budget.
    """

    def __init__(self, settings: Settings, metrics: Metrics, opener: Opener) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.loader = Loader(
            settings, metrics, opener, on_fatal=self.fail, on_change=self._refresh_ready
        )
        self.registry = self.loader.registry
        self._fatal_hooks: list[FatalHook] = []
        self._ready_hooks: list[Callable[[], None]] = []
        self._drain_hooks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warm_up: asyncio.Task[None] | None = None
        self._warm_up_over = asyncio.Event()  # warmed up, or failed trying
        self._drain_started: float | None = None  # time.monotonic()
        self._drain_deadline: asyncio.TimerHandle | None = None
        self._decodes: DecodePool | None = None

    # -- what the routes ask ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return (
            self.phase is Phase.READY
            and self.registry.default_ready()
            and not (self._decodes is not None and self._decodes.saturated)
        )

    @property
    def draining(self) -> bool:
        """A drain has begun (whatever happened since, a failed device included)."""
        return self._drain_started is not None

    @property
    def failed(self) -> bool:
        """The device failed for good (the log says how); nothing recovers from this."""
        return self.phase is Phase.FATAL

    @property
    def taking_requests(self) -> bool:
        """Past start-up and its device alive: the models decide each request."""
        return self.phase not in (Phase.LOADING, Phase.FATAL)

    def drain_time_left(self) -> float:
        """Seconds of ``settings.drain_timeout_s`` not yet used since the drain began."""
        if self._drain_started is None:
            return self.settings.drain_timeout_s
        return self.settings.drain_timeout_s - (time.monotonic() - self._drain_started)

    def track_decodes(self, pool: DecodePool) -> None:
        """The decode threads: readiness is 503 while abandoned decodes fill their spare room,
        the drain deadline answers the requests still decoding, and the drain's last log line
        counts the decodes it leaves running."""
        self._decodes = pool
        pool.on_saturated = lambda saturated: self._refresh_ready()

    def on_ready(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` once the default model is warm and the server first turns ready."""
        self._ready_hooks.append(hook)

    def on_drain(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` when the drain begins (readiness has just gone 503)."""
        self._drain_hooks.append(hook)

    def on_fatal(self, hook: FatalHook) -> None:
        """Call ``hook(exc)`` when the device fails for good (after readiness went 503)."""
        self._fatal_hooks.append(hook)

    async def wait_for_warm_up(self) -> None:
        """Until every start-up model is warm (or failed); for tests and tools, not for request
        handling."""
        await self._warm_up_over.wait()

    # -- transitions ------------------------------------------------------------------------------

    async def start(self) -> None:
        """LOADING -> WARMING: load the models, replay their golden answers, start their batchers,
        and warm them up in the background (-> READY once the default is warm). Raises if the
        default model cannot be served, so that the server exits rather than half-serving."""
        self._loop = asyncio.get_running_loop()
        await self.loader.start()
        self._advance(Phase.LOADING, Phase.WARMING)
        self._warm_up = asyncio.create_task(self._warm_up_models(), name="swin-warmup")

    def request_reload(self) -> None:
        """Look at the model files again (SIGHUP): safe in a signal handler."""
        if self._loop is None or self.draining or self.failed:
            log.warning("reload ignored: the server is %s", self.phase.value)
            return
        self._loop.call_soon_threadsafe(self.loader.request_reload)

    def request_drain(self) -> None:
        """``begin_drain``, from a signal handler: the loop runs it as soon as the handler returns,
        so it never interleaves with another transition."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs: nothing else can be in a transition either
            self.begin_drain()
        else:
            loop.call_soon_threadsafe(self.begin_drain)

    def begin_drain(self) -> None:
        """-> DRAINING: readiness goes 503 at once, so the load balancer stops sending us traffic.

        Requests keep being served: uvicorn has stopped accepting connections, and whatever
        reached us (on connections already open) is accepted work that should complete. The
        batcher refuses new work only once uvicorn has drained HTTP and the lifespan ends.
        """
        if self._drain_started is not None:
            return
        self._drain_started = time.monotonic()
        if self.phase is not Phase.FATAL:
            self._enter(Phase.DRAINING)
        self._arm_drain_deadline()
        self.loader.stop_loading()
        for hook in self._drain_hooks:
            hook()

    def fail(self, exc: BaseException) -> None:
        """-> FATAL: the device failed for good. Readiness goes 503, requests are refused and the
        hooks run; the server then shuts down and exits non-zero (see ``DrainingServer``), so
        that the orchestrator restarts it. Only the first failure counts: parallel batches and the
        warm-up may all fail on one dead device."""
        if self.failed:
            return
        log.critical("FATAL device error, readiness now 503; the process must restart: %s", exc)
        self._enter(Phase.FATAL)
        self._warm_up_over.set()  # wake waiters so they see the failure
        for hook in self._fatal_hooks:
            hook(exc)

    async def stop(self) -> None:
        """-> STOPPED, at the lifespan's end: uvicorn has drained HTTP; every model's batcher
        finishes what it holds within what is left of the drain budget."""
        self.begin_drain()
        if self._warm_up is not None:
            self._warm_up.cancel()
        self._warm_up_over.set()  # a cancelled warm-up never ends: nobody may wait on it for ever
        if self._drain_deadline is not None:
            self._drain_deadline.cancel()
        await self.loader.close()
        # uvicorn has already spent part of the drain budget finishing HTTP requests (which
        # empties the queues); the batchers get the rest, so the process exits in time.
        budget = max(0.5, self.drain_time_left())
        models = self.registry.live_models()
        finished = await asyncio.gather(*(m.batcher.drain(budget) for m in models))
        await self.loader.retirements.cancel()  # their batchers have just drained
        self._advance(Phase.DRAINING, Phase.STOPPED)
        self._log_drained(all(finished))

    # -- the steps --------------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._refresh_ready()

    def _refresh_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    def _advance(self, expected: Phase, to: Phase) -> None:
        """``expected`` -> ``to``; from any other phase (a drain, a failure) the step is moot."""
        if self.phase is expected:
            self._enter(to)

    async def _warm_up_models(self) -> None:
        """WARMING -> READY once the default model is warm; the other models follow."""
        try:
            await self.loader.warm_initial(self._default_warm)
        except LoadAbandoned:  # a drain began: nothing failed
            return
        except Exception as exc:  # a model that cannot run a zero batch must not report ready
            self.fail(exc)
            return
        self._warm_up_over.set()

    def _default_warm(self) -> None:
        self._advance(Phase.WARMING, Phase.READY)
        log.info("ready")
        if self.ready:
            for hook in self._ready_hooks:
                hook()

    def _arm_drain_deadline(self) -> None:
        """Shortly before the drain budget ends, answer what the batchers hold with 503 draining."""
        if self._loop is None or self._drain_deadline is not None:
            return
        delay = max(0.0, self.drain_time_left() - DRAIN_ANSWER_MARGIN_S)
        self._drain_deadline = self._loop.call_later(delay, self._abandon_all)

    def _abandon_all(self) -> None:
        for model in self.registry.live_models():
            _abandon(model.batcher)
        if self._decodes is not None:
            answered = self._decodes.abandon_all()
            if answered:
                log.error(
                    "drain budget spent: answered %d requests still decoding with 503; "
                    "their decodes are abandoned",
                    answered,
                )

    def _log_drained(self, batchers_finished: bool) -> None:
        """The drain's outcome: "all requests finished" only if nothing at all is left running."""
        decoding = self._decodes.running if self._decodes is not None else 0
        if decoding:
            log.warning(
                "drained (requests answered; abandoned %d decodes still running, not waited for)",
                decoding,
            )
        else:
            log.info("drained (%s)", "all requests finished" if batchers_finished else "timed out")


def _abandon(batcher: Batcher) -> None:
    failed = batcher.abandon(Draining("the drain budget ran out before this image ran"))
    if failed:
        log.error("drain budget spent: answered %d unfinished images with 503", failed)

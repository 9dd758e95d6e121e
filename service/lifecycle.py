"""The server's lifecycle, owned in one place: load, warm up, serve, drain, stop, or fail.

    LOADING -> WARMING -> READY -> DRAINING -> STOPPED
    (from any of them) -> FATAL: the device failed for good; the process must restart

Readiness (``/readyz`` and the ``swin_ready`` gauge) is READY and nothing else. Requests are taken
once the model is warm and until the lifespan ends, even while draining (what reached us is
accepted work, which should complete), but never after the device failed.

Every transition runs on the event loop. The drain starts in a signal handler, which only asks
the loop to begin it (``request_drain``), so no transition can interleave with another.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

from service.batcher import Batcher, Draining
from service.contract import RANDOM_WEIGHTS_WARNING
from service.engine import Engine, warmup_batch_sizes
from service.metrics import Metrics
from service.selfcheck import SelfCheckFailed, SelfCheckReport, check_engine
from service.settings import Settings

log = logging.getLogger("service")

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


@dataclass(eq=False)
class LoadedModel:
    """A model being served: its engine, its batcher and its start-up self-check."""

    engine: Engine
    batcher: Batcher
    self_check: SelfCheckReport
    warm: bool = False  # warm-up finished: its batcher may be given requests


class Lifecycle:
    """The phase of the server, every transition between phases, and what they drive: the
    readiness gauge, the drain budget and its deadline, and the fatal-error hooks.

    ``start`` and ``stop`` are the lifespan's two halves. ``load`` opens the engine (on a worker
    thread); ``settings`` gives the batching and the drain budget.
    """

    def __init__(self, settings: Settings, metrics: Metrics, load: Callable[[], Engine]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.model: LoadedModel | None = None
        self._load = load
        self._fatal_hooks: list[FatalHook] = []
        self._ready_hooks: list[Callable[[], None]] = []
        self._drain_hooks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warm_up: asyncio.Task[None] | None = None
        self._warm_up_over = asyncio.Event()  # warmed up, or failed trying
        self._drain_started: float | None = None  # time.monotonic()
        self._drain_deadline: asyncio.TimerHandle | None = None

    # -- what the routes ask ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def draining(self) -> bool:
        """A drain has begun (whatever happened since, a failed device included)."""
        return self._drain_started is not None

    @property
    def failed(self) -> bool:
        """The device failed for good (the log says how); nothing recovers from this."""
        return self.phase is Phase.FATAL

    def model_for_requests(self) -> LoadedModel | None:
        """The model requests may be queued on: warm, and its device alive."""
        model = self.model
        return model if model is not None and model.warm and not self.failed else None

    def drain_time_left(self) -> float:
        """Seconds of ``settings.drain_timeout_s`` not yet used since the drain began."""
        if self._drain_started is None:
            return self.settings.drain_timeout_s
        return self.settings.drain_timeout_s - (time.monotonic() - self._drain_started)

    def on_ready(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` once the model is warm and the server first turns ready."""
        self._ready_hooks.append(hook)

    def on_drain(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` when the drain begins (readiness has just gone 503)."""
        self._drain_hooks.append(hook)

    def on_fatal(self, hook: FatalHook) -> None:
        """Call ``hook(exc)`` when the device fails for good (after readiness went 503)."""
        self._fatal_hooks.append(hook)

    async def wait_for_warm_up(self) -> None:
        """Until warm-up finished (or failed); for tests and tools, not for request handling."""
        await self._warm_up_over.wait()

    # -- transitions ------------------------------------------------------------------------------

    async def start(self) -> None:
        """LOADING -> WARMING: load the model, replay its golden answers, start its batcher, and
        warm it up in the background (-> READY). Raises if the model cannot be served, so that
        the server exits rather than serving a half-alive process."""
        self._loop = asyncio.get_running_loop()
        engine = await asyncio.to_thread(self._load)
        self_check = await asyncio.to_thread(_self_check, engine, self.settings.model_path)
        self._announce(engine)
        model = self.model = LoadedModel(engine, self._batcher_for(engine), self_check)
        model.batcher.start()
        self._advance(Phase.LOADING, Phase.WARMING)
        self._warm_up = asyncio.create_task(self._warm_up_model(model), name="swin-warmup")
        if self.draining:  # began while loading, when there was no batcher to time out
            self._arm_drain_deadline()

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
        """-> STOPPED, at the lifespan's end: uvicorn has drained HTTP; the batcher finishes what
        it holds within what is left of the drain budget."""
        self.begin_drain()
        if self._warm_up is not None:
            self._warm_up.cancel()
        self._warm_up_over.set()  # a cancelled warm-up never ends: nobody may wait on it for ever
        if self._drain_deadline is not None:
            self._drain_deadline.cancel()
        if self.model is None:
            return
        # uvicorn has already spent part of the drain budget finishing HTTP requests (which
        # empties the queue); the batcher gets the rest, so the process exits in time.
        finished = await self.model.batcher.drain(max(0.5, self.drain_time_left()))
        self._advance(Phase.DRAINING, Phase.STOPPED)
        log.info("drained (%s)", "all requests finished" if finished else "timed out")

    # -- the steps --------------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.metrics.ready.set(1 if phase is Phase.READY else 0)

    def _advance(self, expected: Phase, to: Phase) -> None:
        """``expected`` -> ``to``; from any other phase (a drain, a failure) the step is moot."""
        if self.phase is expected:
            self._enter(to)

    def _announce(self, engine: Engine) -> None:
        manifest = engine.manifest
        self.metrics.set_model(
            variant=manifest.variant,
            precision=manifest.precision,
            provider=engine.provider,
            weights="random" if manifest.weights.random else manifest.weights.source,
        )
        if manifest.weights.random:
            log.warning("%s", _random_weights_banner(manifest.variant))

    def _batcher_for(self, engine: Engine) -> Batcher:
        settings = self.settings
        on_gpu = engine.provider == "CUDAExecutionProvider"
        return Batcher(
            engine,
            max_batch_size=settings.resolved_max_batch_size(on_gpu=on_gpu),
            max_batch_delay_s=settings.max_batch_delay_ms / 1e3,
            queue_capacity=settings.queue_capacity,
            metrics=self.metrics,
            on_fatal=self.fail,
            parallel_batches=settings.resolved_parallel_batches(on_gpu=on_gpu),
        )

    async def _warm_up_model(self, model: LoadedModel) -> None:
        """WARMING -> READY: run batch sizes 1, 2, 4, ... up to the largest the batcher forms."""
        sizes = warmup_batch_sizes(model.batcher.max_batch_size)
        try:
            await asyncio.to_thread(model.engine.warmup, sizes)
        except Exception as exc:  # a model that cannot run a zero batch must not report ready
            self.fail(exc)
            return
        model.warm = True
        self._advance(Phase.WARMING, Phase.READY)
        self._warm_up_over.set()
        log.info("warm-up done (batch sizes %s); ready", sizes)
        if self.ready:
            for hook in self._ready_hooks:
                hook()

    def _arm_drain_deadline(self) -> None:
        """Shortly before the drain budget ends, answer what the batcher holds with 503 draining."""
        model = self.model
        if model is None or self._loop is None or self._drain_deadline is not None:
            return
        delay = max(0.0, self.drain_time_left() - DRAIN_ANSWER_MARGIN_S)
        self._drain_deadline = self._loop.call_later(delay, _abandon, model.batcher)


def _abandon(batcher: Batcher) -> None:
    failed = batcher.abandon(Draining("the drain budget ran out before this image ran"))
    if failed:
        log.error("drain budget spent: answered %d unfinished images with 503", failed)


def _random_weights_banner(variant: str) -> str:
    """RANDOM_WEIGHTS_WARNING for ``variant``, framed so that nobody scrolls past it."""
    rule = "!" * 78
    lines = textwrap.wrap(f"{variant}: {RANDOM_WEIGHTS_WARNING}", width=74)
    return "\n".join(["", rule, *(f"!!  {line}" for line in lines), rule])


def _self_check(engine: Engine, source: object) -> SelfCheckReport:
    """Replay the exporter's golden inputs before anything else; raise if the answers differ."""
    try:
        report = check_engine(engine)
    except SelfCheckFailed as exc:  # golden answers that cannot be read or do not fit
        log.error("%s: %s", source, exc)
        raise SelfCheckFailed(f"{source}: {exc}") from exc
    if report.status == "failed":
        message = report.failure_message(str(source))
        log.error("%s", message)
        raise SelfCheckFailed(message)
    if report.status == "skipped":
        log.warning("golden self-check skipped: %s", report.reason)
    else:
        bounds = {k: v for k, v in asdict(report.tolerance).items() if v is not None}
        log.info(
            "golden self-check passed: %d inputs, every output within %s, in %.0f ms",
            report.inputs,
            bounds,
            report.took_ms,
        )
    return report

"""One served model: its engine, its batcher, its self-check, and the requests using it.

``opening`` loads a file, replays its golden answers (``self_check``) and starts its batcher
(``new_batcher``); ``warm_up`` runs each batch size once. A model is retired (replaced or
removed) only once no request holds a lease on it: a request leases the model when its name
is resolved and gives it back when it is answered, so a swap can never refuse a request that was already routed to the old model.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from swin_serve.artifact.contract import served_warning
from swin_serve.artifact.golden import SelfCheckFailed, SelfCheckReport
from swin_serve.server.observability.metrics import ModelMetrics
from swin_serve.server.runtime.batcher import Batcher
from swin_serve.server.runtime.engine import Engine, ModelLoadError, warmup_batch_sizes
from swin_serve.server.runtime.model_file import FileStamp, ModelFile
from swin_serve.server.runtime.selfcheck import check_engine
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")

# A model file, read once -> an engine on those very bytes (raises ModelLoadError). The bytes
# are released once it returns; ``ModelFile.data`` is None when the path holds no file.
Opener = Callable[[ModelFile], Engine]


class LoadAbandoned(ModelLoadError):
    """A load stopped halfway because the server began to shut down."""


@dataclass(eq=False)
class LoadedModel:
    """A model being served (or being retired): what requests are queued on."""

    name: str
    engine: Engine
    batcher: Batcher
    self_check: SelfCheckReport
    digest: str | None = None  # SHA-256 of the bytes it was loaded from (None: not from a file)
    path: Path | None = None
    stamp: FileStamp | None = None  # the file those bytes were read from, as it was then
    warm: bool = False  # warm-up finished: its batcher may be given requests
    open_s: float = 0.0  # what loading and self-checking it took
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @contextmanager
    def leased(self):
        """Hold the model for one request: ``retire`` waits until every lease is given back."""
        self.leases += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self.leases -= 1
            if self.leases == 0:
                self._idle.set()

    async def retire(self, timeout_s: float) -> bool:
        """Let the requests holding it finish, then drain and stop its batcher; True if all of
        that happened within ``timeout_s``."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.error(
                "model %s: %d requests still hold it after %.1f s",
                self.name,
                self.leases,
                timeout_s,
            )
        left = max(0.5, timeout_s - (time.monotonic() - started))
        return await self.batcher.drain(left) and self.leases == 0


def new_batcher(
    engine: Engine,
    settings: Settings,
    metrics: ModelMetrics,
    on_fatal: Callable[[BaseException], None],
) -> Batcher:
    """A batcher for ``engine``, configured for the device it runs on."""
    on_gpu = engine.provider == "CUDAExecutionProvider"
    layout = engine.layout  # None for an engine without one (a test's fake)
    parallel = layout.parallel_runs if layout else settings.resolved_parallel_batches(on_gpu=on_gpu)
    return Batcher(
        engine,
        max_batch_size=settings.resolved_max_batch_size(on_gpu=on_gpu),
        max_batch_delay_s=settings.max_batch_delay_ms / 1e3,
        queue_capacity=settings.queue_capacity,
        metrics=metrics,
        on_fatal=on_fatal,
        parallel_batches=parallel,
    )


async def warm_up(model: LoadedModel, stop: Callable[[], bool] = lambda: False) -> list[int]:
    """Run batch sizes 1, 2, 4, ... up to the largest the batcher forms; then the model is warm.
    One size at a time, so that ``stop()`` (a shutdown) ends it between two runs."""
    sizes = warmup_batch_sizes(model.batcher.max_batch_size)
    for size in sizes:
        if stop():
            raise LoadAbandoned("warm-up stopped: the server is shutting down")
        await asyncio.to_thread(model.engine.warmup, [size])
    model.warm = True
    return sizes


def self_check(engine: Engine, source: object) -> SelfCheckReport:
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
        log.warning("%s: golden self-check skipped: %s", source, report.reason)
    else:
        bounds = {k: v for k, v in asdict(report.tolerance).items() if v is not None}
        log.info(
            "%s: golden self-check passed: %d inputs, every output within %s, in %.0f ms; %s",
            source,
            report.inputs,
            bounds,
            report.took_ms,
            _preprocessing_line(report),
        )
    return report


def _preprocessing_line(report: SelfCheckReport) -> str:
    pre = report.preprocess
    if pre is None or pre.status == "skipped":
        return f"preprocessing not checked ({pre.reason if pre else 'no transform given'})"
    return (
        f"preprocessing of the golden {pre.image} within {pre.max_levels:.2g} grey levels "
        f"(bound {pre.bound_levels:g}), in {pre.took_ms:.0f} ms"
    )


def announce(engine: Engine, name: str) -> None:
    """A model with random weights is announced so that nobody scrolls past it."""
    if engine.manifest.weights.random:
        rule = "!" * 78
        lines = textwrap.wrap(f"{name}: {served_warning(engine.manifest)}", 74)
        log.warning("%s", "\n".join(["", rule, *(f"!!  {line}" for line in lines), rule]))

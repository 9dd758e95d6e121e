"""Typed per-app state (kept on ``app.state.service``) and per-request timings."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.settings import Settings


@dataclass
class RequestTimings:
    """What one request spent where (seconds); rendered as its Server-Timing header."""

    decode_s: float = 0.0  # all its images, one after another
    queue_s: float = 0.0  # the longest wait of its images
    inference_s: float = 0.0  # the longest run among its images' batches
    batch_size: int = 0  # the largest batch its images ran in (0: none ran)

    def header(self, total_s: float) -> str:
        return (
            f"decode;dur={self.decode_s * 1e3:.2f}, queue;dur={self.queue_s * 1e3:.2f}, "
            f'inference;dur={self.inference_s * 1e3:.2f}, batch;desc="{self.batch_size}", '
            f"total;dur={total_s * 1e3:.2f}"
        )


@dataclass
class ServiceState:
    """Everything the routes need, created by ``create_app``; kept on ``app.state.service``."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle  # the phase, and the model once loaded
    decode_executor: ThreadPoolExecutor | None = None  # started and shut down by the lifespan

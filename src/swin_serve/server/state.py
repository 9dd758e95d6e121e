"""Typed per-app state (kept on ``app.state.service``) and per-request timings."""

from __future__ import annotations

from dataclasses import dataclass

from swin_serve.server.lifecycle import Lifecycle
from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.runtime.decoding import DecodePool
from swin_serve.server.settings import Settings


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
class RequestSlots:
    """Inference requests in progress (reading, decoding, queued or running), HTTP and gRPC
    together: the bound on how many request bodies the process holds at once."""

    limit: int
    in_use: int = 0

    def try_take(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def give_back(self) -> None:
        self.in_use -= 1


@dataclass
class ServiceState:
    """Everything the routes need, created by ``create_app``; kept on ``app.state.service``."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle  # the phase, and the model once loaded
    slots: RequestSlots  # shared by the HTTP middleware and the gRPC server
    decoder: DecodePool | None = None  # the decode threads: started and shut down by the lifespan
    grpc_port: int | None = None  # the gRPC endpoint's bound port, while it serves

"""Service configuration: one validated settings object, read from ``SWIN_*`` environment variables.

Every knob of the server lives here, so there are no scattered ``os.environ`` reads. Invalid values
fail at start-up with pydantic's message, which names the variable and the constraint.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from swin_serve.artifact.jpeg_scans import DEFAULT_MAX_SCANS

Providers = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


CGROUP = Path("/sys/fs/cgroup")


def available_cpus() -> int:
    """CPUs this process may use: the CPUs it may run on (taskset/cpuset affinity, unlike
    ``os.cpu_count``), at most its CPU quota rounded up. A container with a CPU limit but no
    pinned cores (Kubernetes' default CPU manager policy) sees every core of its node: threads
    sized from those would be throttled to the quota."""
    try:
        cpus = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        cpus = max(1, os.cpu_count() or 1)
    quota = cgroup_cpu_quota(CGROUP)
    return min(cpus, math.ceil(quota)) if quota else cpus


def cgroup_cpu_quota(root: Path) -> float | None:
    """The CPUs' worth of time this process's cgroup may use, or None without a limit: cgroup
    v2's ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), else v1's ``cfs_quota_us`` (-1: none)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


class Settings(BaseSettings):
    """All server settings. Environment variables are the field names upper-cased with ``SWIN_``."""

    model_config = SettingsConfigDict(
        env_prefix="SWIN_",
        extra="ignore",
        protected_namespaces=(),
        frozen=True,
        # An error must not echo its input: that would print SWIN_API_KEYS to the log.
        hide_input_in_errors=True,
    )

    model_path: Path = Field(
        Path("artefacts/swin_tiny_patch4_window7_224.onnx"),
        description="The exported .onnx file (with its swin.manifest metadata) to serve, as a "
        "one-model repository named by its manifest; ignored when model_repository is set "
        "(the images set it, so that a repository needs one variable, not two).",
    )
    model_repository: Path | None = Field(
        None,
        description="A directory of exported models: each NAME.onnx directly in it is served "
        "as model NAME. Publish by renaming into place (see docs/model-repository.md).",
    )
    default_model: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="The model /classify and /features serve without a name; unset = the only "
        "model, when there is one.",
    )
    repository_poll_s: float = Field(
        0.0,
        ge=0.0,
        le=86_400.0,
        description="Look for added, changed and removed model files every this many seconds; "
        "0 = only on SIGHUP.",
    )
    max_models: int = Field(
        8,
        ge=1,
        le=1000,
        description="Most models loaded at once; a file past it is refused (and retried at each "
        "reload). Each model holds its own session in memory (docs/model-repository.md#memory).",
    )
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 inside a container.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="TCP port of the Open Inference Protocol's gRPC endpoint, on the same host; "
        "0 turns gRPC off.",
    )
    providers: Providers = Field(
        "auto", description="ONNX Runtime execution provider: auto (CUDA when present), cpu, cuda."
    )
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="Precision of float32 models on the CPU (server/runtime/precision.py): "
        "auto = bf16 where the CPU runs it natively (OpenVINO), else int8 where it has VNNI and "
        "NAME.int8.onnx sits beside the model, else fp32. A named precision that cannot be had, or fails its "
        "golden self-check, stops the model; under auto a failure falls back to fp32.",
    )
    engine: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="The runtime: auto = OpenVINO for bf16, ONNX Runtime for the rest; "
        "openvino also serves fp32 on OpenVINO.",
    )
    cpu_layout: Literal["auto", "wide", "narrow", "hybrid"] = Field(
        "auto",
        description="How runs share the cores (server/runtime/layout.py): wide = one run on "
        "every core, narrow = runs side by side on a share each, hybrid = wide when alone and "
        "narrow under load; auto = timed at load on this CPU. Ignored when SWIN_INTRA_OP_THREADS or "
        "SWIN_PARALLEL_BATCHES is set.",
    )
    max_batch_size: int = Field(
        0,
        ge=0,
        le=256,
        description="Images per model run, at most; 0 = auto (4 on CPU, 32 on CUDA). A larger "
        "batch waits for more images; what it gains in images/s depends on the machine "
        "(docs/benchmarks.md).",
    )
    max_batch_delay_ms: float = Field(
        5.0,
        ge=0.0,
        le=1000.0,
        description="How long a batch waits for more images after its first one (ms).",
    )
    queue_capacity: int = Field(
        64, ge=1, le=100_000, description="Images that may wait for a batch; past it, 503."
    )
    request_timeout_ms: int = Field(
        5000,
        ge=1,
        le=600_000,
        description="Default deadline of a request, for decoding its images and waiting in the queue (ms); clients may only shorten it.",
    )
    max_upload_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body, in bytes (413 past it)."
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest image, width*height, checked before decoding (413 past it).",
    )
    max_images_per_request: int = Field(
        16, ge=1, le=1000, description="Most images (multipart file parts) in one request."
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="Intra-op threads; 0 = auto (SWIN_CPU_LAYOUT decides). Set by hand (or with "
        "SWIN_PARALLEL_BATCHES), one session of this many threads, shared by the parallel "
        "batches, replaces the calibrated layout.",
    )
    parallel_batches: int = Field(
        0,
        ge=0,
        le=64,
        description="Batches that may run on the model at once; 0 = auto (on CPU the layout "
        "decides, SWIN_CPU_LAYOUT; on CUDA 1). Set by hand, they share one session of "
        "SWIN_INTRA_OP_THREADS threads (default one per CPU) in place of the calibrated layout.",
    )
    intra_op_spinning: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Whether ORT's idle intra-op threads spin-wait for work (on) or sleep (off); "
        "auto = off in the timed layout's lanes, whose runs may overlap, and where runs overlap "
        "in a manual layout, since a spinning thread holds a core another run or the image "
        "decoder needs; on for one manual CPU batch at a time (parallel_batches 1), where it "
        "shortens each run; off on CUDA, where the CPU threads have little to do.",
    )
    inter_op_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="ORT inter-op threads; 0 = auto (1: the graph runs sequentially).",
    )
    decode_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="Image-decode worker threads; 0 = auto (one per CPU, at least 2).",
    )
    # Decode work: what one image may cost before and after its answer (docs/reliability.md).
    max_jpeg_scans: int = Field(
        DEFAULT_MAX_SCANS,
        ge=1,
        le=100_000,
        description="Most scans a JPEG may declare, counted from its markers before decoding "
        "(413 past it): a progressive JPEG's decode time is its pixels times its scans. A large "
        "image may declare fewer: scans x pixels may not exceed 20 x SWIN_MAX_IMAGE_PIXELS.",
    )
    max_abandoned_decodes: int = Field(
        0,
        ge=0,
        le=1024,
        description="Decodes that may still run after their request was answered (deadline, "
        "client gone, drain), each on a spare thread; at the limit new decodes get 503 and "
        "readiness is 503 until one ends. 0 = auto (as many as decode threads).",
    )
    drain_timeout_s: float = Field(
        8.0,
        gt=0.0,
        le=3600.0,
        description="On SIGTERM, how long queued and running requests may take to finish (s). "
        "Keep it below the orchestrator's grace period (compose 10 s, Kubernetes 30 s).",
    )
    log_level: LogLevel = Field("info", description="Log level of the server and uvicorn.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log line format: text (time LEVEL logger: message, then the trace and span "
        "ids while tracing) or json (one object per line, for log collectors).",
    )
    access_log: bool = Field(
        True,
        description="One line per answered request on logger swin_serve.access, with its route "
        "template, status, duration and trace ids (INFO lines: hidden when SWIN_LOG_LEVEL is "
        "above info).",
    )
    # HTTP-level limits: they bound what slow or abusive clients can hold (see docs/reliability.md).
    header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        le=3600.0,
        description="A connection must deliver a complete request line and headers within this "
        "many seconds of opening (or of its previous response), or it is closed (s).",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="The whole request body must arrive within this many seconds of the request "
        "start, or the request is answered 408 and the connection closed (s).",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0.0, le=3600.0, description="Idle keep-alive connections are closed after this (s)."
    )
    max_concurrent_requests: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Inference requests in progress at once (reading, decoding, queued or "
        "running); past it, a JSON 503 at once. Bounds memory: at most this many bodies of "
        "max_upload_bytes are held. Probes and /metrics are not counted.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="Open TCP connections (uvicorn limit_concurrency). A backstop above "
        "max_concurrent_requests: past it uvicorn itself answers a plain-text 503.",
    )

    # API keys (docs/production.md#api-keys): off while both are unset.
    api_keys: SecretStr | None = Field(
        None,
        description="Comma-separated API keys (each at least 16 of A-Z a-z 0-9 -._~+/=). Set, "
        "API calls must carry one (HTTP Authorization: Bearer <key>, gRPC metadata "
        "authorization); probes, /metrics, /docs and the web page's files stay open.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of API keys, one per line (blank and # lines skipped), such as a "
        "mounted Kubernetes Secret; added to api_keys. Read at start.",
    )

    @model_validator(mode="after")
    def _check_api_keys(self) -> Settings:
        # Here, not in swin_serve.server.auth's import: it imports modules that import this one.
        from swin_serve.server.auth import configured_keys

        configured_keys(self)  # ApiKeyError (a ValueError) names the variable, never a key
        return self

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.max_images_per_request > self.queue_capacity:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must not exceed "
                f"queue_capacity ({self.queue_capacity}): such a request could never be queued"
            )
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"grpc_port and port are both {self.port}: give gRPC its own port")
        if self.max_connections <= self.max_concurrent_requests:
            raise ValueError(
                f"max_connections ({self.max_connections}) must exceed max_concurrent_requests "
                f"({self.max_concurrent_requests}), so that our JSON 503 fires before uvicorn's"
            )
        return self

    def resolved_max_batch_size(self, *, on_gpu: bool) -> int:
        return self.max_batch_size or (32 if on_gpu else 4)

    def resolved_parallel_batches(self, *, on_gpu: bool) -> int:
        if self.parallel_batches:
            return self.parallel_batches
        return 1 if on_gpu else min(available_cpus(), 4)

    def resolved_intra_op_threads(self) -> int:
        """One thread per CPU, in the one pool that the parallel batches share: a lone batch
        gets the whole machine, and batches side by side divide it between them."""
        return self.intra_op_threads or available_cpus()

    def resolved_intra_op_spinning(self, *, on_gpu: bool) -> bool:
        """Spin only where a thread's core is not wanted elsewhere (see intra_op_spinning)."""
        if self.intra_op_spinning != "auto":
            return self.intra_op_spinning == "on"
        return not on_gpu and self.resolved_parallel_batches(on_gpu=False) == 1

    def resolved_inter_op_threads(self) -> int:
        return self.inter_op_threads or 1

    def resolved_decode_threads(self) -> int:
        return self.decode_threads or max(2, available_cpus())

    def resolved_max_abandoned_decodes(self) -> int:
        return self.max_abandoned_decodes or self.resolved_decode_threads()

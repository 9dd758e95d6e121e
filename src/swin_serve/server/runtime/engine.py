"""The model runner: one shared ONNX Runtime session. Knows nothing of HTTP or batching.

``InferenceSession.run`` is thread-safe, so one session serves every batch. Shapes use
N = batch, S = input size, C_i/H_i/W_i = stage channels and map sizes (see the manifest).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from swin_serve.artifact.contract import GOLDEN_KEY, Manifest, ManifestError, manifest_from_metadata
from swin_serve.artifact.sessions import CUDA_PROVIDER_OPTIONS, session_options
from swin_serve.server.runtime import providers
from swin_serve.server.runtime.layout import Lane, Lanes, LayoutChoice, calibrate
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.settings import Settings, available_cpus

log = logging.getLogger(__name__)

# Substrings (lower-cased) of errors after which a CUDA context is unusable: every later call fails
# too, so the right move is to go not-ready and exit so the orchestrator restarts the process.
_FATAL_DEVICE_MARKERS = (
    "illegal memory access",
    "illegal address",
    "illegal instruction",
    "unspecified launch failure",
    "device-side assert",
    "launch timed out",
    "cudaerrorillegaladdress",
    "cudaerrorlaunchfailure",
    "hardware stack error",
    "ecc error",
)


class EngineError(RuntimeError):
    """A model run failed; the session is still usable (answers 500 for that batch only)."""


class FatalEngineError(EngineError):
    """The device is broken (e.g. CUDA illegal address); the process must be restarted."""


class ModelLoadError(RuntimeError):
    """The model file is missing, unreadable or lacks a usable manifest."""


def is_fatal_device_error(exc: BaseException) -> bool:
    """True for errors that poison the CUDA context, judged from the message ORT passes through."""
    msg = str(exc).lower()
    return ("cuda" in msg or "cudnn" in msg or "cublas" in msg) and any(
        marker in msg for marker in _FATAL_DEVICE_MARKERS
    )


def warmup_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including ``max_batch_size``: the shapes a warm server will meet first."""
    sizes, n = [], 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch_size)
    return sizes


class Engine(Protocol):
    """What the batcher and the app need from a model runner (the fake engine in tests too)."""

    manifest: Manifest
    provider: str
    golden_text: str | None  # the exporter's golden answers (artifact/golden.py), if any
    provider_warning: str | None  # e.g. a GPU the provider cannot use (runtime/providers.py)
    engine_name: str  # onnxruntime | openvino
    precision: str  # what runs (bf16 on a float32 file, say)
    exported_precision: str  # what the model's file holds
    precision_reason: str  # why that precision, for the log, the card and the v2 metadata
    served_file: dict[str, str | None]  # path and digest of the bytes that run
    layout: LayoutChoice | None  # how runs share the cores (runtime/layout.py)

    def runners(self) -> dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]]:
        """Each lane as a ``run``: the golden self-check covers them all."""
        ...

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """``batch`` float32 (N, 3, S, S) -> every output by name, each with N rows."""
        ...

    def warmup(self, batch_sizes: list[int]) -> None: ...


def _options(settings: Settings, *, on_gpu: bool):
    """The session options for the provider the model runs on."""
    return session_options(
        intra_op_threads=settings.resolved_intra_op_threads(),
        inter_op_threads=settings.resolved_inter_op_threads(),
        spinning=settings.resolved_intra_op_spinning(on_gpu=on_gpu),
        memory_pattern=on_gpu,
        shared_arena=True,  # the models of a repository hold one arena between them
    )


# Where ORT looks for external data files of a model loaded from bytes (else: the working
# directory). The model file itself is given: nothing can lie below a file, so any external data
# fails to load, as it must, since the digest of the file does not cover it.
_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


def _open(file: ModelFile, options, wanted: list):
    """A session on ``file``'s bytes (not its path, which may hold another file by now)."""
    import onnxruntime as ort

    options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, str(file.path))
    try:
        session = ort.InferenceSession(file.data, sess_options=options, providers=wanted)
    except Exception as exc:  # ORT raises its own pybind types; all mean "cannot serve this"
        if "external data" in str(exc).lower():
            raise ModelLoadError(
                f"cannot load ONNX model {file.path}: it keeps weights in external data files, "
                "which the server does not load (its digest covers one file): export it as one "
                f"file ({exc})"
            ) from exc
        raise ModelLoadError(f"cannot load ONNX model {file.path}: {exc}") from exc
    # ORT keeps the bytes (as large as the model) for as long as the session lives, only to
    # re-create the session on another provider after a provider error. Without its fallback
    # such an error reaches the batcher (a failed batch, or a fatal device error) instead of
    # quietly moving a GPU-configured session to the CPU.
    session.disable_fallback()
    if hasattr(session, "_model_bytes"):
        session._model_bytes = None
    return session


def read_model_file(settings: Settings, path: Path | str | None) -> ModelFile:
    """``path`` (default the model path) read once; a missing file is a ModelFile without data."""
    path = Path(settings.model_path if path is None else path)
    try:
        return ModelFile.read(path)
    except FileNotFoundError:
        return ModelFile(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc


class LaneEngine:
    """What both engines share: runs go through ``Lanes`` (runtime/layout.py) and come back as
    float32 arrays by output name; errors become EngineError (or FatalEngineError)."""

    engine_name = ""

    def __init__(self, manifest: Manifest, output_names: list[str], lanes: Lanes) -> None:
        self.manifest = manifest
        self.output_names = output_names
        self.golden_text: str | None = None
        self.provider_warning: str | None = None
        self.precision: str = manifest.precision  # what runs
        self.exported_precision: str = manifest.precision  # the model file's (not its int8 file's)
        self.precision_reason: str = f"the file is {manifest.precision}"
        self.served_file: dict[str, str | None] = {}  # path and digest of the bytes that run
        self.layout: LayoutChoice | None = None
        self._lanes = lanes
        self._input_dtype = np.float16 if manifest.input.dtype == "float16" else np.float32

    def runners(self) -> dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]]:
        """Each lane as a ``run``, for the golden self-check, which must cover every lane."""
        return {
            name: functools.partial(self._run, lane) for name, lane in self._lanes.runners().items()
        }

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run all outputs for ``batch`` (N, 3, S, S) float32; values come back as float32.

        Raises FatalEngineError for device errors that poison the process, EngineError otherwise.
        """
        return self._run(self._lanes, batch)

    def _run(self, runner, batch: np.ndarray) -> dict[str, np.ndarray]:
        feed = np.ascontiguousarray(batch, dtype=self._input_dtype)
        try:
            values = runner(feed)
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise FatalEngineError(f"fatal device error: {exc}") from exc
            raise EngineError(f"model run failed for batch {tuple(batch.shape)}: {exc}") from exc
        return {
            name: np.asarray(v, dtype=np.float32)
            for name, v in zip(self.output_names, values, strict=True)
        }

    def warmup(self, batch_sizes: list[int]) -> None:
        """Run each batch size once on every lane (and on every run slot of a narrow lane: each
        OpenVINO infer request meets a new shape cold), so the first real requests don't pay
        for allocation and tuning."""
        size = self.manifest.image_size
        narrow = self.layout.narrow if self.layout and self.layout.narrow else None
        for name, run in self.runners().items():
            repeats = narrow.runs if name == "narrow" and narrow else 1
            for n in batch_sizes:
                t0 = time.perf_counter()
                for _ in range(repeats):
                    run(np.zeros((n, 3, size, size), dtype=np.float32))
                log.debug("warm-up %s batch %d: %.1f ms", name, n, (time.perf_counter() - t0) * 1e3)


def manual_layout(settings: Settings) -> bool:
    """Threads or parallel batches set by hand: one runner as configured, no calibration."""
    return bool(settings.intra_op_threads or settings.parallel_batches)


class OnnxEngine(LaneEngine):
    """ONNX Runtime sessions configured from settings and the model's manifest: on the CPU, one
    per lane of the layout calibrated at load; on CUDA, one."""

    engine_name = "onnxruntime"

    def __init__(
        self,
        session,
        manifest: Manifest,
        *,
        use_io_binding: bool,
        golden_text: str | None = None,
    ) -> None:
        self._session = session
        self.provider: str = session.get_providers()[0]
        self.input_name: str = session.get_inputs()[0].name
        output_names = [o.name for o in session.get_outputs()]
        super().__init__(manifest, output_names, Lanes(None, self._runner(session, use_io_binding)))
        self.golden_text = golden_text

    def _runner(self, session, use_io_binding: bool):
        if use_io_binding:
            return functools.partial(self._run_io_binding, session)
        return lambda feed: session.run(self.output_names, {self.input_name: feed})

    @classmethod
    def load(cls, settings: Settings, source: ModelFile | Path | str | None = None) -> OnnxEngine:
        """An engine on ``source``: a file read already (the loader's, whose digest it then
        serves under), or a path read here (default ``settings.model_path``). Raises
        ModelLoadError with a message a human can act on."""
        import onnxruntime as ort  # imported here so that importing the service stays light

        file = source if isinstance(source, ModelFile) else read_model_file(settings, source)
        path = file.path
        if file.data is None:
            raise ModelLoadError(
                f"model file not found: {path.resolve()} (set SWIN_MODEL_PATH, or run `make export`)"
            )
        try:
            choice = providers.choose(
                settings.providers, ort.get_available_providers(), providers.visible_gpus()
            )
        except providers.ProviderError as exc:
            raise ModelLoadError(str(exc)) from exc
        on_cuda = choice.cuda
        providers.load_cuda_libraries(choice, ort)
        wanted = (
            [(providers.CUDA, CUDA_PROVIDER_OPTIONS), providers.CPU] if on_cuda else [providers.CPU]
        )
        options = _options(settings, on_gpu=on_cuda)
        session = _open(file, options, wanted)
        try:
            choice = providers.check_started(choice, session.get_providers()[0], settings.providers)
        except providers.ProviderError as exc:
            raise ModelLoadError(str(exc)) from exc
        if on_cuda and not choice.cuda:
            # CUDA did not start and the session fell back to the CPU: the batcher will now run
            # CPU batches side by side, which the CPU's options are made for.
            options = _options(settings, on_gpu=False)
            session = _open(file, options, [providers.CPU])
        engine = cls._from_session(session, path, use_io_binding=choice.cuda)
        engine.provider_warning = choice.warning
        engine.served_file = {"path": str(path), "digest": file.digest}
        if choice.warning:
            log.warning("%s", choice.warning)
        if choice.cuda:
            runs = settings.resolved_parallel_batches(on_gpu=True)
            engine.layout = LayoutChoice(
                "cuda", runs, None, None, f"CUDA: {runs} batch(es) at once"
            )
        elif manual_layout(settings):
            engine.layout = manual_choice(settings)
        else:
            del session  # the lanes open their own sessions: the probe is let go first
            engine._session, engine._lanes = None, None
            engine._calibrate(settings, file)
        log.info(
            "loaded %s (%s, %s weights) on %s (%s); layout %s: %s",
            engine.manifest.variant,
            engine.manifest.precision,
            engine.manifest.weights.source,
            engine.provider,
            choice.reason,
            engine.layout.name,
            engine.layout.reason,
        )
        return engine

    def _calibrate(self, settings: Settings, file: ModelFile) -> None:
        def open_lane(lane: Lane):
            options = _lane_options(lane, settings)
            return self._runner(_open(file, options, [providers.CPU]), False)

        size = self.manifest.image_size
        feed = np.zeros((1, 3, size, size), dtype=self._input_dtype)
        self.layout, wide, narrow = timed_layout(open_lane, feed, settings, file)
        self._lanes = Lanes(wide, narrow)

    @classmethod
    def _from_session(cls, session, path: Path, *, use_io_binding: bool) -> OnnxEngine:
        """An engine on an open session of ``path``, with the manifest its metadata carries."""
        metadata = session.get_modelmeta().custom_metadata_map
        try:
            manifest = manifest_from_metadata(metadata, source=str(path))
        except ManifestError as exc:
            raise ModelLoadError(str(exc)) from exc
        engine = cls(
            session, manifest, use_io_binding=use_io_binding, golden_text=metadata.get(GOLDEN_KEY)
        )
        missing = set(manifest.outputs) - set(engine.output_names)
        if missing:
            raise ModelLoadError(
                f"{path}: manifest names outputs the graph lacks: {sorted(missing)}"
            )
        return engine

    def _run_io_binding(self, session, feed: np.ndarray) -> list[np.ndarray]:
        # One binding per call: IOBinding objects are not shareable between threads. Outputs are
        # allocated on the device by ORT (no host round-trip per node) and copied back once.
        binding = session.io_binding()
        binding.bind_cpu_input(self.input_name, feed)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def timed_layout(open_lane, feed: np.ndarray, settings: Settings, file: ModelFile):
    """``calibrate`` on this machine's CPUs; a failure is the model's load error, with its path."""
    try:
        return calibrate(open_lane, available_cpus(), feed, settings.cpu_layout)
    except ModelLoadError:
        raise
    except Exception as exc:  # a run that fails while timed: ORT and OpenVINO raise their own
        raise ModelLoadError(f"{file.path}: a trial run failed: {exc}") from exc


def manual_choice(settings: Settings) -> LayoutChoice:
    runs = settings.resolved_parallel_batches(on_gpu=False)
    threads = settings.resolved_intra_op_threads()
    reason = (
        f"SWIN_INTRA_OP_THREADS / SWIN_PARALLEL_BATCHES set: {runs} runs at once sharing "
        f"{threads} threads"
    )
    return LayoutChoice("manual", runs, None, Lane(runs, max(1, threads // runs)), reason)


def _lane_options(lane: Lane, settings: Settings):
    """A lane's session: its threads, asleep when idle unless SWIN_INTRA_OP_SPINNING=on (the
    other lane may need the cores), and no per-shape memory pattern (runs side by side would
    each hold one)."""
    return session_options(
        intra_op_threads=lane.threads,
        inter_op_threads=settings.resolved_inter_op_threads(),
        spinning=settings.intra_op_spinning == "on",
        memory_pattern=False,
        shared_arena=True,
    )

"""The model runner: one shared ONNX Runtime session. Knows nothing of HTTP or batching.

``InferenceSession.run`` is thread-safe, so one session serves every batch. Shapes use
N = batch, S = input size, C_i/H_i/W_i = stage channels and map sizes (see the manifest).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from service import providers
from service.contract import GOLDEN_KEY, Manifest, ManifestError, manifest_from_metadata
from service.repository import ModelFile
from service.sessions import CUDA_PROVIDER_OPTIONS, session_options
from service.settings import Settings

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
    golden_text: str | None  # the exporter's golden answers (service/selfcheck.py), if any
    provider_warning: str | None  # e.g. a GPU the provider cannot use (service/providers.py)

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


def _read(settings: Settings, path: Path | str | None) -> ModelFile:
    path = Path(settings.model_path if path is None else path)
    try:
        return ModelFile.read(path)
    except FileNotFoundError:
        return ModelFile(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from exc


class OnnxEngine:
    """ONNX Runtime session configured from settings and the model's manifest."""

    def __init__(
        self,
        session,
        manifest: Manifest,
        *,
        use_io_binding: bool,
        golden_text: str | None = None,
    ) -> None:
        self._session = session
        self.manifest = manifest
        self.golden_text = golden_text
        self.provider: str = session.get_providers()[0]
        self.provider_warning: str | None = None
        self.output_names: list[str] = [o.name for o in session.get_outputs()]
        self.input_name: str = session.get_inputs()[0].name
        self._input_dtype = np.float16 if manifest.input.dtype == "float16" else np.float32
        self._use_io_binding = use_io_binding

    @classmethod
    def load(cls, settings: Settings, source: ModelFile | Path | str | None = None) -> OnnxEngine:
        """An engine on ``source``: a file read already (the loader's, whose digest it then
        serves under), or a path read here (default ``settings.model_path``). Raises
        ModelLoadError with a message a human can act on."""
        import onnxruntime as ort  # imported here so that importing the service stays light

        file = source if isinstance(source, ModelFile) else _read(settings, source)
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
        if choice.warning:
            log.warning("%s", choice.warning)
        log.info(
            "loaded %s (%s, %s weights) on %s (%s), intra_op_threads=%d, spinning=%s",
            engine.manifest.variant,
            engine.manifest.precision,
            engine.manifest.weights.source,
            engine.provider,
            choice.reason,
            options.intra_op_num_threads,
            settings.resolved_intra_op_spinning(on_gpu=choice.cuda),
        )
        return engine

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

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run all outputs for ``batch`` (N, 3, S, S) float32; values come back as float32.

        Raises FatalEngineError for device errors that poison the process, EngineError otherwise.
        """
        feed = np.ascontiguousarray(batch, dtype=self._input_dtype)
        try:
            if self._use_io_binding:
                values = self._run_io_binding(feed)
            else:
                values = self._session.run(self.output_names, {self.input_name: feed})
        except Exception as exc:
            if is_fatal_device_error(exc):
                raise FatalEngineError(f"fatal device error: {exc}") from exc
            raise EngineError(f"model run failed for batch {tuple(batch.shape)}: {exc}") from exc
        return {
            name: np.asarray(v, dtype=np.float32)
            for name, v in zip(self.output_names, values, strict=True)
        }

    def _run_io_binding(self, feed: np.ndarray) -> list[np.ndarray]:
        # One binding per call: IOBinding objects are not shareable between threads. Outputs are
        # allocated on the device by ORT (no host round-trip per node) and copied back once.
        binding = self._session.io_binding()
        binding.bind_cpu_input(self.input_name, feed)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def warmup(self, batch_sizes: list[int]) -> None:
        """Run each batch size once so the first real requests don't pay for allocation/tuning."""
        size = self.manifest.image_size
        for n in batch_sizes:
            t0 = time.perf_counter()
            self.run(np.zeros((n, 3, size, size), dtype=np.float32))
            log.debug("warm-up batch %d: %.1f ms", n, (time.perf_counter() - t0) * 1e3)

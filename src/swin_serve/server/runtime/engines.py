"""From a model file to the engine that serves it: the precision plan (server/runtime/precision.py),
the engine it names, and, under ``SWIN_PRECISION=auto``, the fall-back to ONNX Runtime fp32 when
the chosen precision fails its golden self-check on this machine."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from swin_serve.artifact.contract import GOLDEN_KEY, ManifestError, manifest_from_metadata
from swin_serve.artifact.cpu import cpu_features
from swin_serve.artifact.golden import SelfCheckFailed
from swin_serve.artifact.onnx_metadata import MetadataError, read_metadata
from swin_serve.server.runtime import precision, providers
from swin_serve.server.runtime.engine import (
    Engine,
    EngineError,
    ModelLoadError,
    OnnxEngine,
    read_model_file,
)
from swin_serve.server.runtime.model_file import ModelFile
from swin_serve.server.runtime.selfcheck import check_engine
from swin_serve.server.settings import Settings

log = logging.getLogger(__name__)


@functools.cache
def _openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def machine(settings: Settings) -> precision.Machine:
    """What the precision plan depends on, read from this process and its CPU."""
    import onnxruntime as ort

    try:
        cuda = providers.choose(
            settings.providers, ort.get_available_providers(), providers.visible_gpus()
        ).cuda
    except providers.ProviderError as exc:
        raise ModelLoadError(str(exc)) from exc
    features = cpu_features()
    has_openvino = _openvino_installed()
    if has_openvino:
        from swin_serve.server.runtime.openvino_engine import native_bf16

        bf16 = native_bf16()
    else:
        bf16 = bool(features.get("avx512_bf16") or features.get("amx_bf16"))
    int8 = any(features.get(k) for k in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return precision.Machine(cuda=cuda, native_bf16=bf16, int8_fast=int8, openvino=has_openvino)


def open_engine(settings: Settings, source: ModelFile | Path | str | None = None) -> Engine:
    """The engine for ``source`` (a file read already, or a path; default the model path) at
    the precision ``settings`` ask for; raises ModelLoadError with what to do instead."""
    file = source if isinstance(source, ModelFile) else read_model_file(settings, source)
    if file.data is None:
        return OnnxEngine.load(settings, file)  # says what no file means
    try:
        metadata = read_metadata(file.data)
        exported = manifest_from_metadata(metadata, source=str(file.path))
    except MetadataError as exc:
        raise ModelLoadError(f"cannot load ONNX model {file.path}: {exc}") from exc
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc
    try:
        plan = precision.plan(
            settings.precision, settings.engine, file.path, exported.precision, machine(settings)
        )
    except precision.PrecisionError as exc:
        raise ModelLoadError(f"{file.path}: {exc}") from exc
    if plan.fallback:
        engine = _checked_or_fp32(settings, file, plan, metadata)
    else:
        engine = _open_plan(settings, file, plan, metadata)
    _announce(file.path.name, exported.precision, engine)
    return engine


def _announce(name: str, exported: str, engine: Engine) -> None:
    """A model served at another precision than it was exported at is said at WARNING, so that
    nobody serves bf16 without seeing it; the usual case at INFO."""
    line = f"{name}: serving {engine.precision} on {engine.engine_name} ({engine.precision_reason})"
    if engine.precision == exported:
        log.info("%s", line)
    else:
        log.warning(
            "%s; exported at %s: SWIN_PRECISION=%s serves it unchanged", line, exported, exported
        )


def _open_plan(settings: Settings, file: ModelFile, plan: precision.Plan, metadata: dict) -> Engine:
    served = file if plan.path == file.path else _sibling(settings, file, plan.path, metadata)
    if plan.engine == precision.OPENVINO:
        from swin_serve.server.runtime.openvino_engine import OpenVinoEngine

        engine = OpenVinoEngine.load(settings, served, plan.precision)
    else:
        engine = OnnxEngine.load(settings, served)
        if engine.manifest.precision != plan.precision:
            raise ModelLoadError(
                f"{plan.path} was exported at {engine.manifest.precision}, not {plan.precision}"
            )
    exported = manifest_from_metadata(metadata)
    engine.precision_reason = plan.reason
    engine.exported_precision = exported.precision
    # The int8 file's manifest names it NAME.int8; the model keeps its own file's name whatever
    # precision it runs at, or a client's URLs would change with the machine.
    engine.manifest = engine.manifest.model_copy(update={"name": exported.name})
    return engine


def _broken(report) -> str:
    return "; ".join(f"{name}: {', '.join(found)}" for name, found in report.failures.items())


def _sibling(settings: Settings, file: ModelFile, path: Path, metadata: dict) -> ModelFile:
    """The int8 file beside ``file``, refused unless it is the same export: both carry the
    exporter's golden answers of the one PyTorch model, so a file left over from other weights
    (the model was re-exported, the int8 file was not) cannot pass for it."""
    sibling = read_model_file(settings, path)
    try:
        theirs = read_metadata(sibling.data) if sibling.data is not None else {}
    except MetadataError as exc:
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
    if theirs.get(GOLDEN_KEY) is None or theirs.get(GOLDEN_KEY) != metadata.get(GOLDEN_KEY):
        raise ModelLoadError(
            f"{path} is not the int8 export of {file.path.name} (their golden answers differ, "
            f"or one has none): export both again with swin-export --int8"
        )
    return sibling


def _checked_or_fp32(
    settings: Settings, file: ModelFile, plan: precision.Plan, metadata: dict
) -> Engine:
    """The planned engine if it loads here and passes its golden self-check, else fp32 with a
    warning that says why (what SWIN_PRECISION=auto promises): a reduced precision is never
    served unverified, so a file without golden answers stays at fp32 too."""
    try:
        engine = _open_plan(settings, file, plan, metadata)
        report = check_engine(engine)
        if report.status == "passed":
            return engine
        failure = (
            f"its golden self-check failed: {_broken(report)}"
            if report.status == "failed"
            else f"it cannot be verified: {report.reason}"
        )
    except (ModelLoadError, EngineError, SelfCheckFailed) as exc:
        failure = f"it did not load: {exc}"
    log.warning(
        "%s: %s is not served on this machine, fp32 is: %s", file.path.name, plan.precision, failure
    )
    fp32 = precision.plan("fp32", settings.engine, file.path, "fp32", machine(settings))
    fallback = _open_plan(settings, file, fp32, metadata)
    fallback.precision_reason = f"SWIN_PRECISION=auto fell back to fp32: {plan.precision} {failure}"
    return fallback

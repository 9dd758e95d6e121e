"""The model repository as the API shows it: the index of every model and one model's card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from swin_serve.artifact.contract import RANDOM_WEIGHTS_WARNING, WeightsInfo
from swin_serve.server.errors import ErrorResponse
from swin_serve.server.http.deps import StateDep
from swin_serve.server.http.schemas import BatchingInfo, ModelCard, ModelsIndex, ModelStatus
from swin_serve.server.lifecycle import Phase
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.repository.registry import ModelEntry, ModelState, not_ready
from swin_serve.server.state import ServiceState

router = APIRouter()


@router.get(
    "/v1/models",
    response_model=ModelsIndex,
    summary="Every model with its state, and the default model's card",
)
async def models_index(state: StateDep) -> ModelsIndex:
    registry = state.lifecycle.registry
    default = registry.default_name
    statuses = [
        ModelStatus.model_validate({**entry.summary(), "default": entry.name == default})
        for entry in registry.listing()
    ]
    entry = registry.default_entry()
    card: dict[str, Any] = {}
    if entry is not None and entry.model is not None:
        card = model_card(state, entry, entry.model).model_dump()
    return ModelsIndex(default_model=default, models=statuses, **card)


@router.get(
    "/v1/models/{name}",
    response_model=ModelCard,
    responses={
        404: {"model": ErrorResponse, "description": "No such model"},
        503: {"model": ErrorResponse, "description": "Not loaded: loading, or failed (why)"},
    },
    summary="One model: variant, provider, weights, parity report, batching, state",
)
async def model_card_route(state: StateDep, name: str) -> ModelCard:
    entry = state.lifecycle.registry.entry(name)
    if entry.model is None:
        raise not_ready(entry)
    return model_card(state, entry, entry.model)


def model_card(state: ServiceState, entry: ModelEntry, model: LoadedModel) -> ModelCard:
    s, batcher, manifest = state.settings, model.batcher, model.engine.manifest
    return ModelCard(
        name=entry.name,
        variant=manifest.variant,
        precision=model.engine.precision,
        exported_precision=model.engine.exported_precision,
        precision_reason=model.engine.precision_reason,
        engine=model.engine.engine_name,
        served_file=model.engine.served_file,
        layout=model.engine.layout.as_dict() if model.engine.layout else None,
        input_size=manifest.image_size,
        num_classes=manifest.num_classes,
        provider=model.engine.provider,
        provider_warning=model.engine.provider_warning,
        labels_source=manifest.labels_source,
        weights=WeightsInfo.model_validate(manifest.weights.model_dump()),
        warning=RANDOM_WEIGHTS_WARNING if manifest.weights.random else None,
        outputs={k: list(v) for k, v in manifest.outputs.items()},
        preprocess=manifest.preprocess.model_dump(),
        preprocessing_source=manifest.preprocessing_source,
        parity=manifest.parity,
        exporter=manifest.exporter,
        self_check=model.self_check.as_dict(),
        batching=BatchingInfo(
            max_batch_size=batcher.max_batch_size,
            parallel_batches=batcher.parallel_batches,
            max_batch_delay_ms=s.max_batch_delay_ms,
            queue_capacity=s.queue_capacity,
            request_timeout_ms=s.request_timeout_ms,
            max_images_per_request=s.max_images_per_request,
        ),
        ready=entry.state is ModelState.READY and state.lifecycle.phase is Phase.READY,
        state=entry.state.value,
        reason=entry.reason,
        reloading=entry.replacing,
        digest=model.digest,
        loaded_at=model.loaded_at,
    )

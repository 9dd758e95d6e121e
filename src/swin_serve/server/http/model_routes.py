"""The model repository as the API shows it: the index of every model and one model's card."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from swin_serve.artifact.contract import WeightsInfo
from swin_serve.server.dataplane import DataPlane, weights_warning
from swin_serve.server.errors import ErrorResponse
from swin_serve.server.http.deps import PlaneDep
from swin_serve.server.http.schemas import BatchingInfo, ModelCard, ModelsIndex, ModelStatus
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.repository.registry import ModelEntry

router = APIRouter()


@router.get(
    "/v1/models",
    response_model=ModelsIndex,
    summary="Every model with its state, and the default model's card",
)
async def models_index(plane: PlaneDep) -> ModelsIndex:
    default = plane.default_name()
    statuses = [
        ModelStatus.model_validate({**entry.summary(), "default": entry.name == default})
        for entry in plane.listing()
    ]
    entry = plane.default_entry()
    card: dict[str, Any] = {}
    if entry is not None and entry.model is not None:
        card = model_card(plane, entry, entry.model).model_dump()
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
async def model_card_route(plane: PlaneDep, name: str) -> ModelCard:
    entry, model = plane.loaded(name)
    return model_card(plane, entry, model)


def model_card(plane: DataPlane, entry: ModelEntry, model: LoadedModel) -> ModelCard:
    s, batcher, manifest = plane.settings, model.batcher, model.engine.manifest
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
        warning=weights_warning(manifest),
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
        ready=plane.serving(entry),
        state=entry.state.value,
        reason=entry.reason,
        reloading=entry.replacing,
        digest=model.digest,
        loaded_at=model.loaded_at,
    )

"""The plain HTTP API's inference routes: ``/classify`` and ``/features``, for the default
model and under a model's name.

Each reads and validates its request, hands the images to the data plane, and shapes the
answer. CPU-heavy work (decode, large JSON or npz answers) runs on the decode thread pool.
"""

from __future__ import annotations

import io
import json
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request, Response

from swin_serve.artifact.contract import FeatureName
from swin_serve.server.dataplane import DataPlane, weights_warning
from swin_serve.server.errors import INFERENCE_ERROR_RESPONSES, ApiError, ErrorCode
from swin_serve.server.http.deps import PlaneDep, ServedDep, TimingsDep
from swin_serve.server.http.disconnect import unless_client_left
from swin_serve.server.http.params import TimeoutHeader, TimeoutQuery
from swin_serve.server.http.schemas import (
    ClassifyResponse,
    FeaturesResponse,
    ImageClassification,
    PoolMode,
    Prediction,
)
from swin_serve.server.http.uploads import read_image_bodies
from swin_serve.server.observability import tracing
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.runtime.batcher import ImageResult
from swin_serve.server.runtime.postprocess import pool_feature, softmax, top_k
from swin_serve.server.state import RequestTimings

NPZ_MEDIA_TYPE = "application/x-npz"
router = APIRouter()

# The request body is read by hand (multipart or raw image), so describe it for OpenAPI here.
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One or more images as multipart `file` fields, or one image as the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
# The same routes under a model's name; FastAPI lists only the parameters a handler declares.
_NAMED = {
    **_IMAGE_BODY,
    "parameters": [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "A model of the repository (GET /v1/models lists them)",
            "schema": {"type": "string"},
        }
    ],
}


async def infer_images(
    request: Request,
    plane: DataPlane,
    model: LoadedModel,
    timings: RequestTimings,
    deadline: float,
) -> list[ImageResult]:
    """Read, decode (worker threads) and batch-run every image of the request."""
    plane.admit(model, model.name)
    bodies = await read_image_bodies(request, plane.settings.max_images_per_request)
    work = plane.infer_images(model, bodies, timings, deadline)
    del bodies  # only the work holds them now, and drops them once decoded
    return await unless_client_left(request, work)


@router.post(
    "/v1/models/{name}/classify",
    response_model=ClassifyResponse,
    responses=INFERENCE_ERROR_RESPONSES,
    openapi_extra=_NAMED,
    summary="Classify one or more images with the named model",
    description="`curl -F file=@cat.jpg 'http://localhost:8000/v1/models/swin_t/classify'`",
)
@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=INFERENCE_ERROR_RESPONSES,
    openapi_extra=_IMAGE_BODY,
    summary="Classify one or more images with the default model",
    description="`curl -F file=@cat.jpg 'http://localhost:8000/classify?top_k=3'`",
)
async def classify(
    request: Request,
    plane: PlaneDep,
    model: ServedDep,
    timings: TimingsDep,
    top_k_: Annotated[
        int,
        Query(alias="top_k", ge=1, le=100_000, description="Classes per image (1..num_classes)"),
    ] = 5,
    timeout_ms: TimeoutQuery = None,
    timeout_header: TimeoutHeader = None,
) -> ClassifyResponse:
    started = time.monotonic()
    manifest = model.engine.manifest
    if top_k_ > manifest.num_classes:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"top_k must be between 1 and {manifest.num_classes}, got {top_k_}",
        )
    deadline = plane.deadline(started, timeout_ms, timeout_header)
    results = await infer_images(request, plane, model, timings, deadline)
    labels = manifest.labels
    with tracing.step("response"):
        return _classification(model, results, labels, top_k_)


def _classification(
    model: LoadedModel, results: list[ImageResult], labels: tuple[str, ...], k: int
) -> ClassifyResponse:
    return ClassifyResponse(
        model=model.name,
        results=[
            ImageClassification(
                predictions=[
                    Prediction(label=labels[i], index=i, score=p)
                    for i, p in top_k(softmax(r.outputs["logits"]), k)
                ]
            )
            for r in results
        ],
        warning=weights_warning(model.engine.manifest),
    )


def _features_json(
    model: LoadedModel, stages: list[str], pool: str, results: list[ImageResult]
) -> bytes:
    per_image = [{s: pool_feature(r.outputs[s], pool) for s in stages} for r in results]
    body = {
        "model": model.name,
        "pool": pool,
        "shapes": {s: list(per_image[0][s].shape) for s in stages},
        "results": [{s: v.tolist() for s, v in feats.items()} for feats in per_image],
        "warning": weights_warning(model.engine.manifest),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _features_npz(stages: list[str], pool: str, results: list[ImageResult]) -> bytes:
    # One array per feature, images stacked on axis 0: (N, C) or (N, C, H, W), float32.
    arrays = {s: np.stack([pool_feature(r.outputs[s], pool) for r in results]) for s in stages}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


_FEATURES_RESPONSES: dict[int | str, dict] = {
    200: {
        "description": "Features as JSON, or as .npz (one (N, ...) float32 array per feature) "
        f"with `Accept: {NPZ_MEDIA_TYPE}`",
        "content": {NPZ_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    **INFERENCE_ERROR_RESPONSES,
}


@router.post(
    "/v1/models/{name}/features",
    response_model=FeaturesResponse,
    responses=_FEATURES_RESPONSES,
    openapi_extra=_NAMED,
    summary="Extract stage feature maps and/or the pooled embedding with the named model",
    description="`curl -F file=@cat.jpg 'http://localhost:8000/v1/models/swin_t/features'`",
)
@router.post(
    "/features",
    response_model=FeaturesResponse,
    responses=_FEATURES_RESPONSES,
    openapi_extra=_IMAGE_BODY,
    summary="Extract stage feature maps and/or the pooled embedding with the default model",
    description="`curl -F file=@cat.jpg 'http://localhost:8000/features?stages=stage4&stages=embedding&pool=avg'`",
)
async def features(
    request: Request,
    plane: PlaneDep,
    model: ServedDep,
    timings: TimingsDep,
    stages: Annotated[
        list[FeatureName],
        Query(description="Any of stage1..stage4, embedding (repeat the parameter)"),
    ] = ["embedding"],  # noqa: B006 - FastAPI copies defaults
    pool: Annotated[
        PoolMode, Query(description="avg: one C vector per stage; none: full [C, H, W] maps")
    ] = "avg",
    timeout_ms: TimeoutQuery = None,
    timeout_header: TimeoutHeader = None,
) -> Response:
    started = time.monotonic()
    wanted = list(dict.fromkeys(stages))  # de-duplicated, request order kept
    deadline = plane.deadline(started, timeout_ms, timeout_header)
    results = await infer_images(request, plane, model, timings, deadline)
    with tracing.step("response"):
        return await _features_response(request, plane, model, wanted, pool, results)


async def _features_response(
    request: Request,
    plane: DataPlane,
    model: LoadedModel,
    wanted: list[str],
    pool: str,
    results: list[ImageResult],
) -> Response:
    if NPZ_MEDIA_TYPE in request.headers.get("accept", ""):
        body = await plane.off_loop(_features_npz, wanted, pool, results)
        return Response(
            body,
            media_type=NPZ_MEDIA_TYPE,
            headers={"Content-Disposition": 'attachment; filename="features.npz"'},
        )
    body = await plane.off_loop(_features_json, model, wanted, pool, results)
    return Response(body, media_type="application/json")

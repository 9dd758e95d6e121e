"""Response bodies (pydantic), with the examples shown in the OpenAPI docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from swin_serve.artifact.contract import WeightsInfo

PoolMode = Literal["avg", "none"]


class Prediction(BaseModel):
    label: str = Field(examples=["tabby"])
    index: int = Field(ge=0, examples=[281])
    score: float = Field(ge=0.0, le=1.0, description="Softmax probability", examples=[0.73])


class ImageClassification(BaseModel):
    predictions: list[Prediction] = Field(description="top_k classes, most probable first")


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model": "swin_tiny_patch4_window7_224",
                "results": [{"predictions": [{"label": "tabby", "index": 281, "score": 0.73}]}],
            }
        }
    )
    model: str = Field(description="Name of the served model")
    results: list[ImageClassification] = Field(description="One entry per image, in request order")
    warning: str | None = Field(None, description="Set when the model's weights are random")


class FeaturesResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "model": "swin_tiny_patch4_window7_224",
                "pool": "avg",
                "shapes": {"embedding": [768]},
                "results": [{"embedding": [0.12, -0.53, 0.98]}],
            }
        }
    )
    model: str
    pool: PoolMode
    shapes: dict[str, list[int]] = Field(description="Per-image shape of each returned feature")
    results: list[dict[str, list[Any]]] = Field(
        description="One entry per image: feature name -> nested lists of that shape"
    )
    warning: str | None = None


class BatchingInfo(BaseModel):
    max_batch_size: int
    parallel_batches: int
    max_batch_delay_ms: float
    queue_capacity: int
    request_timeout_ms: int
    max_images_per_request: int


class SelfCheckInfo(BaseModel):
    status: Literal["passed", "failed", "skipped"] = Field(
        description="passed: the exporter's golden answers were reproduced at load"
    )
    precision: str
    provider: str = Field(description="Where the check ran: the serving provider")
    cpu: dict[str, bool | None] = Field(
        description="CPU features that decide ONNX Runtime's kernels (None: could not be read)"
    )
    tolerance: dict[str, float | None] | None = Field(
        None,
        description="The bounds for this precision: max_rel_diff, min_cosine, max_scale_error "
        "(null: not bounded)",
    )
    outputs: dict[str, dict[str, float]] | None = Field(
        None, description="Per output: max_rel_diff, min_cosine and scale_error against PyTorch"
    )
    failures: dict[str, list[str]] | None = Field(None, description="Per output, bounds broken")
    inputs: int = 0
    took_ms: float = 0.0
    reason: str | None = None
    preprocess: dict[str, Any] | None = Field(
        None,
        description="The golden image through this server's preprocessing against the "
        "exporter's tensor: status, max_levels (worst difference in 8-bit grey levels), "
        "bound_levels, the two Pillow versions, took_ms",
    )


class LayoutInfo(BaseModel):
    name: str = Field(
        description="wide (one run on every core), narrow (runs side by side), hybrid (wide "
        "when alone, narrow under load), manual (SWIN_INTRA_OP_THREADS / SWIN_PARALLEL_BATCHES) "
        "or cuda"
    )
    parallel_runs: int
    wide: dict[str, int] | None = Field(None, description="runs and threads of the wide lane")
    narrow: dict[str, int] | None = Field(None, description="runs and threads of the narrow lane")
    reason: str
    figures: dict[str, float] = Field(
        default_factory=dict,
        description="What the calibration timed at load: lone_wide_ms, lone_narrow_ms, "
        "loaded_narrow_img_s, loaded_wide_img_s (empty: not timed)",
    )


class ModelInfo(BaseModel):
    name: str
    variant: str
    precision: str = Field(
        description="The precision the model runs at here (bf16 on a float32 file, say); "
        "exported_precision is what the file holds"
    )
    exported_precision: str
    precision_reason: str = Field(description="Why this precision (SWIN_PRECISION)")
    engine: str = Field(description="onnxruntime or openvino")
    served_file: dict[str, str | None] = Field(
        default_factory=dict,
        description="path and digest of the file that runs (the int8 file beside the model, "
        "under int8)",
    )
    layout: LayoutInfo | None = Field(None, description="How runs share the CPU's cores")
    input_size: int = Field(description="S: the model input is (N, 3, S, S)")
    num_classes: int
    provider: str = Field(description="Active ONNX Runtime execution provider")
    provider_warning: str | None = Field(
        None,
        description="Set when the provider is not what the host suggests: a visible GPU that "
        "this onnxruntime cannot use, or a CUDA provider that did not start",
    )
    labels_source: str | None = Field(None, description="Where the exporter found the class names")
    weights: WeightsInfo
    warning: str | None = Field(None, description="Loud notice when the weights are random")
    outputs: dict[str, list[int | str]]
    preprocess: dict[str, Any] = Field(
        description="The input transform the model was exported with: resize_mode (crop or "
        "squash), resize_shorter, crop_size, crop_offset, interpolation, scale, mean, std"
    )
    preprocessing_source: str | None = Field(
        None,
        description="Where the exporter found the transform (null: an artefact exported before "
        "it was recorded, served with the fixed crop_pct 0.875 rule)",
    )
    parity: dict[str, Any] | None = Field(
        None, description="Exporter's PyTorch-vs-ONNX parity report"
    )
    exporter: dict[str, Any]
    self_check: SelfCheckInfo | None = Field(
        None, description="The golden self-check run when the model was loaded"
    )
    batching: BatchingInfo
    ready: bool


ModelStateName = Literal["loading", "ready", "failed", "unloading"]


class ModelStatus(BaseModel):
    """One model of the repository, in the index."""

    name: str
    state: ModelStateName = Field(
        description="loading (not yet taking requests), ready, failed (see reason), "
        "unloading (its file was removed; new requests get 404)"
    )
    reason: str | None = Field(
        None, description="Why it failed to load, or why the last replacement of a ready model did"
    )
    reloading: bool = Field(False, description="A new version is loading beside the served one")
    default: bool = Field(False, description="Served by /classify and /features without a name")
    variant: str | None = None
    precision: str | None = None
    provider: str | None = None
    digest: str | None = Field(None, description="SHA-256 of the file being served")


class ModelCard(ModelInfo):
    """One model's card: what it is, and where it stands."""

    state: ModelStateName
    reason: str | None = None
    reloading: bool = False
    digest: str | None = Field(None, description="SHA-256 of the file being served")
    loaded_at: float = Field(description="When the served version was loaded (Unix time)")


class ModelsIndex(BaseModel):
    """Every model with its state; and, when there is a default model, its card's fields at
    the top level (what this route answered when a server served one model)."""

    model_config = ConfigDict(extra="allow")

    default_model: str | None = Field(
        None, description="What /classify and /features serve (null: name a model)"
    )
    models: list[ModelStatus]


class Status(BaseModel):
    status: str = Field(examples=["ok"])

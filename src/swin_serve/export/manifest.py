"""Building the artefact's manifest and storing it in the ONNX metadata.

The schema is `artifact.contract.Manifest`, the model the server reads; the exporter builds one
and validates it again on the way out. The same JSON is written beside the model as
`<name>.json`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import onnx

from swin_serve.artifact.contract import (
    FORMAT_VERSION,
    INPUT_NAME,
    MANIFEST_KEY,
    OUTPUT_NAMES,
    Manifest,
    PreprocessSpec,
    WeightsRecord,
    manifest_from_metadata,
    parse_manifest,
)
from swin_serve.model import SwinConfig, class_labels

from .files import write_atomically


def output_shapes(config: SwinConfig) -> dict[str, list[int | str]]:
    shapes: dict[str, list[int | str]] = {
        "logits": ["batch", config.num_classes],
        "embedding": ["batch", config.num_features],
    }
    for i, geo in enumerate(config.stages()):
        shapes[f"stage{i + 1}"] = ["batch", geo.dim, geo.resolution, geo.resolution]
    assert list(shapes) == list(OUTPUT_NAMES)
    return shapes


def build_manifest(
    *,
    name: str,
    variant: str,
    config: SwinConfig,
    weights: WeightsRecord,
    exporter: dict[str, Any],
    labels: tuple[str, ...] | None = None,
    labels_source: str | None = None,
    preprocess: PreprocessSpec,
    preprocessing_source: str,
) -> Manifest:
    """The manifest of an fp32 export; `labels` default to the shipped names for the head."""
    size = config.img_size
    return Manifest.model_validate(
        {
            "format_version": 1 if preprocess.is_version_1() else FORMAT_VERSION,
            "name": name,
            "variant": variant,
            "precision": "fp32",
            "config": dataclasses.asdict(config),
            "input": {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": ["batch", config.in_chans, size, size],
            },
            "outputs": output_shapes(config),
            "preprocess": preprocess.model_dump(),
            "preprocessing_source": preprocessing_source,
            "labels": labels if labels is not None else class_labels(config.num_classes),
            **({"labels_source": labels_source} if labels_source else {}),
            "weights": weights,
            "exporter": exporter,
            "parity": None,
            "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )


def to_json(manifest: Manifest, *, indent: int | None = None) -> str:
    """The manifest as the server will read it; raises ManifestError if it would not validate.

    Fields the exporter never set are left out, so a manifest holds only what was recorded.
    """
    text = manifest.model_dump_json(exclude_unset=True, indent=indent)
    parse_manifest(text, source=f"the manifest of {manifest.name}")
    return text


def embed(proto: onnx.ModelProto, manifest: Manifest) -> None:
    """Store the manifest (replacing any earlier one) in the graph's metadata_props."""
    set_metadata(proto, MANIFEST_KEY, to_json(manifest))


def set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    """Set one metadata_props entry, replacing any earlier one of that key."""
    kept = [p for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=key, value=value)


def read(source: onnx.ModelProto | Path | str) -> Manifest:
    """The manifest of an in-memory graph or of a file (weights are not loaded)."""
    if isinstance(source, onnx.ModelProto):
        proto, name = source, "graph"
    else:
        proto, name = onnx.load(str(source), load_external_data=False), str(source)
    return manifest_from_metadata({p.key: p.value for p in proto.metadata_props}, source=name)


def write_report(manifest: Manifest, path: Path) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(to_json(manifest, indent=2) + "\n"))

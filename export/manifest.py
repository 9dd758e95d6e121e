"""The artefact's manifest: everything the server needs, stored in the ONNX metadata.

The same JSON is written beside the model as `<name>.json`. Its schema is in docs/CONTRACTS.md
and is what `service/manifest.py` validates.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import onnx

from model import SwinConfig, class_labels

from .graph import INPUT_NAME, OUTPUT_NAMES

METADATA_KEY = "swin.manifest"
FORMAT_VERSION = 1
CROP_PCT = 0.875  # the official evaluation: resize to size / 0.875, then center-crop
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    weights: dict[str, Any],
    exporter: dict[str, Any],
) -> dict[str, Any]:
    size = config.img_size
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "variant": variant,
        "precision": "fp32",
        "config": json.loads(
            json.dumps(dataclasses.asdict(config))
        ),  # tuples -> lists, as read back
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", config.in_chans, size, size],
        },
        "outputs": output_shapes(config),
        "preprocess": {
            "resize_shorter": int(size / CROP_PCT),
            "crop_size": size,
            "crop_pct": CROP_PCT,
            "interpolation": "bicubic",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "color": "RGB",
            "layout": "NCHW",
            "scale": 255.0,
        },
        "labels": list(class_labels(config.num_classes)),
        "weights": weights,
        "exporter": exporter,
        "parity": None,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def embed(proto: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    """Store the manifest (replacing any earlier one) in the graph's metadata_props."""
    set_metadata(proto, METADATA_KEY, json.dumps(manifest))


def set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    """Set one metadata_props entry, replacing any earlier one of that key."""
    kept = [p for p in proto.metadata_props if p.key != key]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=key, value=value)


def read(source: onnx.ModelProto | Path | str) -> dict[str, Any]:
    """The manifest of an in-memory graph or of a file (weights are not loaded)."""
    proto = (
        source
        if isinstance(source, onnx.ModelProto)
        else onnx.load(str(source), load_external_data=False)
    )
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(
        f"{source if not isinstance(source, onnx.ModelProto) else 'graph'} has no {METADATA_KEY!r} metadata: it was not written by `python -m export`"
    )


def write_report(manifest: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)

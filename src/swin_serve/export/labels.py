"""The exported head: how many classes it has and what they are called.

The size comes from `--num-classes`, else the checkpoint's own classifier, else the labels, else
ImageNet-1k. The names come from `--labels FILE`, else a HuggingFace `config.json` (`id2label`),
else the shipped ImageNet-1k names, else `class_<i>`. Any two sources that disagree stop the
export with a message naming both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from swin_serve.model import class_labels
from swin_serve.model.checkpoint import DIRECTORY_FILES
from swin_serve.model.labels import IMAGENET_1K


class LabelsError(ValueError):
    """A labels source that cannot be read, or that disagrees with the head's size."""


@dataclass(frozen=True)
class Head:
    num_classes: int
    labels: tuple[str, ...]
    labels_source: str  # where the names came from, for the manifest and the summary


def read_labels_file(path: Path) -> tuple[str, ...]:
    """Names from a text file (one per line, in class order) or a `.json` file: a list of names,
    an `{index: name}` object, or a HuggingFace `config.json` with `id2label`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read labels file {path}: {exc}") from exc
    if path.suffix == ".json":
        return _json_labels(text, str(path))
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise LabelsError(f"labels file {path}: line {empty[0]} is empty (one name per line)")
    if not lines:
        raise LabelsError(f"labels file {path} holds no names")
    return tuple(line.strip() for line in lines)


def huggingface_labels(checkpoint: str) -> tuple[str, ...] | None:
    """`id2label` of a HuggingFace checkpoint's `config.json`: in its folder, or beside its
    `model.safetensors` / `pytorch_model.bin`. Any other `config.json` (the official training
    script writes a YAML one beside its checkpoints) is not a HuggingFace config, and is left be."""
    path = Path(checkpoint)
    if path.is_dir():
        config = path / "config.json"
    elif path.name in DIRECTORY_FILES:
        config = path.parent / "config.json"
    else:
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "id2label" not in data:
        return None
    labels = _indexed(data["id2label"], str(config))
    if "num_labels" in data and data["num_labels"] != len(labels):
        raise LabelsError(
            f"{config}: num_labels is {data['num_labels']} but id2label names {len(labels)}"
        )
    return labels


def decide_head(
    *,
    num_classes: int | None,
    labels_file: Path | None,
    checkpoint_classes: int | None,
    checkpoint_labels: tuple[str, ...] | None,
) -> Head:
    """Reconcile every source of the head's size and names; raises LabelsError on a conflict."""
    file_labels = read_labels_file(labels_file) if labels_file is not None else None
    sizes = [
        (f"--num-classes {num_classes}", num_classes),
        (f"the checkpoint's classifier ({checkpoint_classes} classes)", checkpoint_classes),
        (f"labels file {labels_file} ({len(file_labels or ())} names)", _len(file_labels)),
        (
            f"the checkpoint's config.json id2label ({len(checkpoint_labels or ())} names)",
            _len(checkpoint_labels),
        ),
    ]
    known = [(what, n) for what, n in sizes if n is not None]
    size = known[0][1] if known else IMAGENET_1K
    if size < 1:
        raise LabelsError(f"{known[0][0]}: a head needs at least one class")
    for what, n in known[1:]:
        if n != size:
            raise LabelsError(f"{what} disagrees with {known[0][0]}: the head has one size")
    if file_labels is not None:
        return Head(size, file_labels, f"labels file {labels_file.name}")
    if checkpoint_labels is not None:
        return Head(size, checkpoint_labels, "the checkpoint's config.json (id2label)")
    source = "shipped ImageNet-1k names" if size == IMAGENET_1K else "none given: class_<i>"
    return Head(size, class_labels(size), source)


def _len(labels: tuple[str, ...] | None) -> int | None:
    return None if labels is None else len(labels)


def _json_labels(text: str, source: str) -> tuple[str, ...]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise LabelsError(f"labels file {source} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and "id2label" in data:
        data = data["id2label"]
    if isinstance(data, list) and data and all(isinstance(n, str) and n.strip() for n in data):
        return tuple(n.strip() for n in data)
    if isinstance(data, dict) and data:
        return _indexed(data, source)
    raise LabelsError(
        f"labels file {source}: expected a list of names or an {{index: name}} object"
    )


def _indexed(mapping: object, source: str) -> tuple[str, ...]:
    """`{"0": "cat", "1": "dog"}` -> ("cat", "dog"); the indices must be 0..n-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise LabelsError(f"{source}: id2label must be a non-empty {{index: name}} object")
    try:
        by_index = {int(k): str(v).strip() for k, v in mapping.items()}
    except ValueError as exc:
        raise LabelsError(f"{source}: id2label keys must be class indices: {exc}") from exc
    if sorted(by_index) != list(range(len(by_index))):
        raise LabelsError(f"{source}: id2label indices must be 0..{len(by_index) - 1}, each once")
    if not all(by_index.values()):
        raise LabelsError(f"{source}: id2label has an empty name")
    return tuple(by_index[i] for i in range(len(by_index)))

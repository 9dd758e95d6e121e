"""The model repository on disk: which files are models, what they are called, and whether a
file has changed since it was loaded. Knows nothing of engines or HTTP.

A repository is a directory; every ``NAME.onnx`` directly in it is a model called NAME (the file
stem, so ``swin_b.int8.onnx`` is ``swin_b.int8``). Hidden files (``.NAME.onnx``) are skipped: they
are how a new file is written before it is renamed into place, which is atomic on one filesystem.

A file copied in place instead is seen half-written. Two guards keep that harmless: a file whose
size or modification time changed within ``SETTLE_S`` is left for a later look, and a file that
fails to load is retried only once it changes again.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from swin_serve.server.runtime.model_file import FileStamp

SUFFIX = ".onnx"
# URL-safe, and short enough for a metric label and a log line.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass
class Listing:
    """One look at the repository: the model files that are ready to load, by name."""

    files: dict[str, Path] = field(default_factory=dict)
    stamps: dict[str, FileStamp] = field(default_factory=dict)
    unsettled: set[str] = field(default_factory=set)  # changed within SETTLE_S: look again later
    misnamed: set[str] = field(default_factory=set)  # .onnx files whose stem is not a usable name


def model_name(path: Path) -> str | None:
    """The model name a file in a repository stands for, or None if it is not a model file."""
    if path.name.startswith(".") or not path.name.endswith(SUFFIX):
        return None
    name = path.name[: -len(SUFFIX)]
    return name if NAME_PATTERN.fullmatch(name) else None


def scan(directory: Path) -> Listing:
    """Every model file directly in ``directory``; raises OSError if it cannot be read."""
    listing = Listing()
    now_ns = time.time_ns()
    for path in sorted(directory.iterdir()):
        name = model_name(path)
        if name is None:
            if path.name.endswith(SUFFIX) and not path.name.startswith("."):
                listing.misnamed.add(path.name[:200])
            continue
        try:
            if not path.is_file():
                continue
            stamp = FileStamp.of(path)
        except OSError:  # removed between listing and stat
            continue
        listing.stamps[name] = stamp
        if stamp.settled(now_ns):
            listing.files[name] = path
        else:
            listing.unsettled.add(name)
    return listing


def single_file(path: Path, name: str) -> Listing:
    """The listing of a one-model repository (``SWIN_MODEL_PATH``): that file, under ``name``."""
    listing = Listing()
    try:
        stamp = FileStamp.of(path)
    except OSError:
        return listing
    listing.stamps[name] = stamp
    if stamp.settled(time.time_ns()):
        listing.files[name] = path
    else:
        listing.unsettled.add(name)
    return listing


def check_directory(directory: Path) -> None:
    """Raise OSError with a message a human can act on unless ``directory`` can be listed."""
    if not directory.is_dir():
        raise OSError(f"model repository {directory} is not a directory")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise OSError(f"model repository {directory} cannot be read")

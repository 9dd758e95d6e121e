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

import errno
import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

SUFFIX = ".onnx"
SETTLE_S = 1.0  # a file younger than this may still be being written
# URL-safe, and short enough for a metric label and a log line.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class FileStamp:
    """What says cheaply that a file may have changed: a new inode (renamed into place), a new
    size or modification time, or a new status-change time (a ``chmod`` that makes a refused
    file readable, or a ``touch`` to ask for another try)."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        return cls.of_stat(path.stat())

    @classmethod
    def of_stat(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def settled(self, now_ns: int) -> bool:
        # Either way: a clock ahead of ours (a network filesystem) must not defer a file forever.
        return abs(now_ns - self.mtime_ns) >= SETTLE_S * 1e9


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


@dataclass(eq=False)
class ModelFile:
    """One read of a model file: its bytes, their SHA-256, and the file's stamp as it was read.

    A model is hashed and loaded from these same bytes, never by opening its path again: a file
    renamed into place between two opens would otherwise be served under the other's digest,
    and, once that file was published again, its digest would match and it would never load.
    ``data`` is None once ``release``d (the session holds the model by then), and for a path
    with no file (``ModelFile(path)``: the opener says what that means)."""

    path: Path
    data: bytes | None = None
    digest: str | None = None
    stamp: FileStamp | None = None

    @classmethod
    def read(cls, path: Path) -> ModelFile:
        """Read ``path`` through one descriptor; FileNotFoundError unless it is a regular file."""
        # O_NONBLOCK: a FIFO put in the model's place must not hang the load (no effect on files).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            st = os.fstat(fd)  # before the read: a write during it leaves the stamp out of date
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
            data = f.read()
        return cls(path, data, hashlib.sha256(data).hexdigest(), FileStamp.of_stat(st))

    def release(self) -> None:
        """Drop the bytes (as large as the model); the digest and stamp stay."""
        self.data = None


def content_digest(path: Path) -> str:
    """SHA-256 of the file, read in chunks (for tools; the server hashes a ModelFile's bytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_directory(directory: Path) -> None:
    """Raise OSError with a message a human can act on unless ``directory`` can be listed."""
    if not directory.is_dir():
        raise OSError(f"model repository {directory} is not a directory")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise OSError(f"model repository {directory} cannot be read")

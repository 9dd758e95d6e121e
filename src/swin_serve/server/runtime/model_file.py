"""A model file as the server reads it: once, through one descriptor, with the stamp that says
later whether the file has changed. The engines load from these bytes; the repository compares
the stamps."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

SETTLE_S = 1.0  # a file younger than this may still be being written


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

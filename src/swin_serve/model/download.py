"""The official Microsoft Swin V1 release weights: URLs, checksums and a cached download.

File names and release tags are those of microsoft/Swin-Transformer's MODELHUB.md (the same
URLs timm's `default_cfgs` point to). The release publishes no checksums, so `KNOWN_SHA256`
pins none yet: a download then records the SHA-256 it computed next to the file
(`<file>.sha256`) and logs that it could not verify it against a pinned value; later cache
hits are checked against that record. Never fill in a value that was not verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.parse
from pathlib import Path

from torch.hub import download_url_to_file

from .labels import IMAGENET_1K, IMAGENET_22K

log = logging.getLogger(__name__)

RELEASE_URL = "https://github.com/SwinTransformer/storage/releases/download"
CACHE_ENV = "SWIN_CACHE_DIR"

# (variant, num_classes) -> (release tag, file). 1000 classes: the ImageNet-1k-trained file
# where there is one, else (Swin-L) the ImageNet-22k model fine-tuned on 1k. 21841 classes: the
# ImageNet-22k pretrained file (Swin-T and Swin-S 22k came later, in release v1.0.8).
RELEASES: dict[tuple[str, int], tuple[str, str]] = {
    ("swin_tiny_patch4_window7_224", IMAGENET_1K): ("v1.0.0", "swin_tiny_patch4_window7_224.pth"),
    ("swin_tiny_patch4_window7_224", IMAGENET_22K): (
        "v1.0.8",
        "swin_tiny_patch4_window7_224_22k.pth",
    ),
    ("swin_small_patch4_window7_224", IMAGENET_1K): (
        "v1.0.0",
        "swin_small_patch4_window7_224.pth",
    ),
    ("swin_small_patch4_window7_224", IMAGENET_22K): (
        "v1.0.8",
        "swin_small_patch4_window7_224_22k.pth",
    ),
    ("swin_base_patch4_window7_224", IMAGENET_1K): ("v1.0.0", "swin_base_patch4_window7_224.pth"),
    ("swin_base_patch4_window7_224", IMAGENET_22K): (
        "v1.0.0",
        "swin_base_patch4_window7_224_22k.pth",
    ),
    ("swin_base_patch4_window12_384", IMAGENET_1K): (
        "v1.0.0",
        "swin_base_patch4_window12_384.pth",
    ),
    ("swin_base_patch4_window12_384", IMAGENET_22K): (
        "v1.0.0",
        "swin_base_patch4_window12_384_22k.pth",
    ),
    ("swin_large_patch4_window7_224", IMAGENET_1K): (
        "v1.0.0",
        "swin_large_patch4_window7_224_22kto1k.pth",
    ),
    ("swin_large_patch4_window7_224", IMAGENET_22K): (
        "v1.0.0",
        "swin_large_patch4_window7_224_22k.pth",
    ),
    ("swin_large_patch4_window12_384", IMAGENET_1K): (
        "v1.0.0",
        "swin_large_patch4_window12_384_22kto1k.pth",
    ),
    ("swin_large_patch4_window12_384", IMAGENET_22K): (
        "v1.0.0",
        "swin_large_patch4_window12_384_22k.pth",
    ),
}

# File name -> SHA-256 of the official file. None: no public value could be verified (the
# release and MODELHUB.md publish none), so downloads are recorded, not verified.
KNOWN_SHA256: dict[str, str | None] = {file: None for _, file in RELEASES.values()}


class DownloadError(OSError):
    """The weights could not be fetched (offline, HTTP error, disk)."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the expected one; the file was deleted."""


class NoReleasedWeights(ValueError):
    """The official release has no file for this variant and head size."""


def pretrained_url(name: str, *, num_classes: int = IMAGENET_1K) -> str:
    """The official release URL of preset `name` with a `num_classes` head (1000 or 21841)."""
    try:
        tag, file = RELEASES[(name, num_classes)]
    except KeyError:
        known = sorted({variant for variant, _ in RELEASES})
        raise NoReleasedWeights(
            f"no official weights for {name!r} with {num_classes} classes; released variants "
            f"(num_classes {IMAGENET_1K} or {IMAGENET_22K}): {', '.join(known)}"
        ) from None
    return f"{RELEASE_URL}/{tag}/{file}"


def has_official_weights(name: str, *, num_classes: int = IMAGENET_1K) -> bool:
    """Whether the official release has preset `name` with a `num_classes` head."""
    return (name, num_classes) in RELEASES


def default_cache_dir() -> Path:
    """`$SWIN_CACHE_DIR`, else `~/.cache/swin-serve` (read at call time, not import time)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "swin-serve")


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def download_weights(
    name_or_url: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Path of the cached weights file, downloading it first if needed.

    `name_or_url` is a preset name (its ImageNet-1k weights), a release file name such as
    `swin_base_patch4_window7_224_22k.pth`, or any URL (https://, file://). The file lands in
    `cache_dir` (default `default_cache_dir()`) under the URL's file name. The expected
    checksum is `sha256`, else the pinned `KNOWN_SHA256` entry, else the one recorded when the
    file was first downloaded. A cached file that matches is returned without a download; one
    that does not is deleted and fetched again. The download goes to a temporary file in the
    cache directory, is verified, and only then renamed into place, so an interrupted or bad
    download never leaves a file that looks complete.

    Raises `DownloadError` (an OSError) when the file cannot be fetched, e.g. offline, and
    `ChecksumError` (a ValueError) when a fresh download does not match the expected SHA-256.
    """
    url = _resolve_url(name_or_url)
    file = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not file:
        raise ValueError(f"cannot tell a file name from URL {url!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / file
    record = dest.with_name(dest.name + ".sha256")
    pinned = (sha256 or KNOWN_SHA256.get(file) or "").lower() or None
    if _cached_file_is_good(dest, pinned or _read_record(record)):
        return dest
    actual = _download_verified(url, dest, pinned, progress=progress)
    record.write_text(actual + "\n")
    if pinned is None:
        log.warning(
            "downloaded %s with sha256 %s; could not verify it against a pinned value "
            "(none is known), recorded it in %s",
            dest,
            actual,
            record,
        )
    else:
        log.info("downloaded %s (sha256 verified)", dest)
    return dest


def _cached_file_is_good(dest: Path, expected: str | None) -> bool:
    """True when `dest` can be used as is; a cached file that fails its checksum is deleted."""
    if not dest.is_file():
        return False
    if expected is None:
        log.info("using cached %s (no checksum to compare)", dest)
        return True
    actual = sha256_file(dest)
    if actual == expected:
        log.info("using cached %s (sha256 ok)", dest)
        return True
    log.warning("cached %s has sha256 %s, expected %s: downloading again", dest, actual, expected)
    dest.unlink()
    return False


def _download_verified(url: str, dest: Path, pinned: str | None, *, progress: bool) -> str:
    """Fetch `url` to a temporary file beside `dest`, check it, rename it; its sha256."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DownloadError(f"cannot write to the cache directory {dest.parent}: {e}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch(url, tmp, progress=progress)
        actual = sha256_file(tmp)
        if pinned is not None and actual != pinned:
            raise ChecksumError(
                f"checksum mismatch for {url}: got sha256 {actual}, expected {pinned}; "
                "the download was deleted"
            )
        os.replace(tmp, dest)  # atomic on one filesystem: readers see no partial file
    finally:
        tmp.unlink(missing_ok=True)
    return actual


def _resolve_url(name_or_url: str) -> str:
    if "://" in name_or_url:
        return name_or_url
    if any(variant == name_or_url for variant, _ in RELEASES):
        return pretrained_url(name_or_url)
    for tag, file in RELEASES.values():
        if name_or_url in (file, file.removesuffix(".pth")):
            return f"{RELEASE_URL}/{tag}/{file}"
    raise ValueError(
        f"{name_or_url!r} is neither a URL, a released variant nor a release file name; "
        f"released variants: {', '.join(sorted({v for v, _ in RELEASES}))}"
    )


def _fetch(url: str, dest: Path, *, progress: bool) -> None:
    """Download `url` to `dest` (torch.hub: progress bar, temp file + rename)."""
    try:
        download_url_to_file(url, str(dest), progress=progress)
    # URLError covers HTTPError; OSError: sockets and disk; HTTPException: a cut-off response.
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(
            f"could not download {url} ({reason}) (offline?) - pass a local checkpoint path "
            "or use --checkpoint random"
        ) from e


def _read_record(record: Path) -> str | None:
    try:
        value = record.read_text().strip().lower()
    except OSError:
        return None
    return value or None

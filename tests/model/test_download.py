"""Official weight URLs and the cached, checksummed download. Never touches the network:
downloads use file:// URLs to files the test writes, or a patched fetch function."""

import hashlib
import logging
import re
import urllib.error

import pytest
import torch

import swin_serve.model.download as weights
from swin_serve.model.checkpoint import load_checkpoint
from swin_serve.model.config import PRESETS, SwinConfig
from swin_serve.model.download import (
    KNOWN_SHA256,
    RELEASE_URL,
    ChecksumError,
    DownloadError,
    download_weights,
    pretrained_url,
    sha256_file,
)
from swin_serve.model.swin import SwinTransformer

RELEASED = [name for name in PRESETS if name != "swin_micro_patch4_window4_64"]


@pytest.fixture
def fetches(monkeypatch):
    """Count the URLs actually fetched, while still fetching them (file:// only)."""
    calls = []
    real = weights.download_url_to_file

    def counting(url, dst, *args, **kwargs):
        assert url.startswith("file://"), f"a test tried to reach the network: {url}"
        calls.append(url)
        return real(url, dst, *args, **kwargs)

    monkeypatch.setattr(weights, "download_url_to_file", counting)
    return calls


@pytest.fixture
def remote(tmp_path):
    """A 'remote' weights file and its file:// URL and SHA-256."""
    path = tmp_path / "remote" / "swin_test_weights.pth"
    path.parent.mkdir()
    path.write_bytes(b"pretend these are weights " * 1000)
    return path, path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------- URLs


@pytest.mark.parametrize("name", RELEASED)
@pytest.mark.parametrize("num_classes", [1000, 21841])
def test_every_released_preset_has_an_official_url(name, num_classes):
    url = pretrained_url(name, num_classes=num_classes)
    m = re.fullmatch(re.escape(RELEASE_URL) + r"/v1\.0\.[08]/(.+)\.pth", url)
    assert m, url
    file = m.group(1)
    assert file.startswith(name)
    if num_classes == 21841:
        assert file.endswith("_22k")
    else:
        assert not file.endswith("_22k")


def test_urls_match_the_official_model_hub_table():
    # microsoft/Swin-Transformer MODELHUB.md
    base = RELEASE_URL + "/v1.0.0/"
    assert (
        pretrained_url("swin_tiny_patch4_window7_224") == base + "swin_tiny_patch4_window7_224.pth"
    )
    assert (
        pretrained_url("swin_base_patch4_window12_384")
        == base + "swin_base_patch4_window12_384.pth"
    )
    assert (
        pretrained_url("swin_large_patch4_window7_224")
        == base + "swin_large_patch4_window7_224_22kto1k.pth"
    )
    assert (
        pretrained_url("swin_large_patch4_window12_384", num_classes=21841)
        == base + "swin_large_patch4_window12_384_22k.pth"
    )
    assert pretrained_url("swin_tiny_patch4_window7_224", num_classes=21841) == (
        RELEASE_URL + "/v1.0.8/swin_tiny_patch4_window7_224_22k.pth"
    )


@pytest.mark.parametrize(
    ("name", "num_classes"),
    [("swin_micro_patch4_window4_64", 1000), ("swin_tiny_patch4_window7_224", 10)],
)
def test_unreleased_combinations_are_refused(name, num_classes):
    with pytest.raises(ValueError, match="no official weights"):
        pretrained_url(name, num_classes=num_classes)


def test_known_checksums_are_unset_or_well_formed():
    files = {url.rsplit("/", 1)[1] for url in map(pretrained_url, RELEASED)}
    assert files <= KNOWN_SHA256.keys()
    for file, digest in KNOWN_SHA256.items():
        assert digest is None or re.fullmatch(r"[0-9a-f]{64}", digest), file


def test_sha256_file(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ----------------------------------------------------------------- download


def test_download_from_a_url_lands_in_the_cache(remote, tmp_path, fetches, caplog):
    path, url, digest = remote
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="swin_serve.model.download"):
        got = download_weights(url, cache_dir=cache, progress=False)
    assert got == cache / path.name
    assert got.read_bytes() == path.read_bytes()
    assert fetches == [url]
    # No pinned checksum: the computed one is recorded and the log says it is unverified.
    assert (cache / (path.name + ".sha256")).read_text().strip() == digest
    assert "could not verify" in caplog.text and digest in caplog.text
    assert sorted(p.name for p in cache.iterdir()) == [path.name, path.name + ".sha256"]


def test_cache_hit_does_not_download_again(remote, tmp_path, fetches):
    _, url, digest = remote
    cache = tmp_path / "cache"
    first = download_weights(url, cache_dir=cache, progress=False)
    second = download_weights(url, cache_dir=cache, progress=False)
    third = download_weights(url, cache_dir=cache, sha256=digest, progress=False)
    assert first == second == third
    assert len(fetches) == 1


def test_matching_checksum_is_accepted(remote, tmp_path, fetches):
    _, url, digest = remote
    got = download_weights(url, cache_dir=tmp_path / "c", sha256=digest.upper(), progress=False)
    assert sha256_file(got) == digest


def test_checksum_mismatch_deletes_the_download_and_raises(remote, tmp_path, fetches):
    _, url, _ = remote
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download_weights(url, cache_dir=cache, sha256="0" * 64, progress=False)
    assert list(cache.iterdir()) == []  # neither the file nor a temporary part is left


def test_corrupted_cache_entry_is_downloaded_again(remote, tmp_path, fetches):
    path, url, _ = remote
    cache = tmp_path / "cache"
    cached = download_weights(url, cache_dir=cache, progress=False)
    cached.write_bytes(b"truncated")

    again = download_weights(url, cache_dir=cache, progress=False)  # checked against the record

    assert again.read_bytes() == path.read_bytes()
    assert len(fetches) == 2


def test_pinned_checksum_is_enforced(remote, tmp_path, fetches, monkeypatch):
    path, url, digest = remote
    monkeypatch.setitem(KNOWN_SHA256, path.name, "f" * 64)
    with pytest.raises(ChecksumError):
        download_weights(url, cache_dir=tmp_path / "c", progress=False)
    monkeypatch.setitem(KNOWN_SHA256, path.name, digest)
    assert download_weights(url, cache_dir=tmp_path / "c", progress=False).is_file()


def test_offline_gives_a_clear_error(tmp_path, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights, "download_url_to_file", offline)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        download_weights("swin_tiny_patch4_window7_224", cache_dir=cache, progress=False)
    message = str(err.value)
    assert pretrained_url("swin_tiny_patch4_window7_224") in message
    assert "offline?" in message and "--checkpoint random" in message
    assert "name resolution" in message
    assert isinstance(err.value, OSError)
    assert list(cache.iterdir()) == []


def test_a_missing_remote_file_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match="could not download"):
        download_weights((tmp_path / "gone.pth").as_uri(), cache_dir=tmp_path / "c", progress=False)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224.pth"),
        ("swin_base_patch4_window7_224_22k.pth", "swin_base_patch4_window7_224_22k.pth"),
        ("swin_large_patch4_window7_224_22kto1k", "swin_large_patch4_window7_224_22kto1k.pth"),
    ],
)
def test_names_resolve_to_release_urls(name, expected, tmp_path, monkeypatch):
    seen = []

    def fake(url, dst, *args, **kwargs):
        seen.append(url)
        with open(dst, "wb") as f:
            f.write(b"x")

    monkeypatch.setattr(weights, "download_url_to_file", fake)
    got = download_weights(name, cache_dir=tmp_path, progress=False)
    assert got.name == expected
    assert len(seen) == 1
    assert seen[0].startswith(RELEASE_URL + "/") and seen[0].endswith("/" + expected)


def test_unknown_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="neither a URL"):
        download_weights("swin_huge", cache_dir=tmp_path)


def test_cache_dir_comes_from_the_environment(remote, tmp_path, monkeypatch, fetches):
    _, url, _ = remote
    monkeypatch.setenv("SWIN_CACHE_DIR", str(tmp_path / "env-cache"))
    assert download_weights(url, progress=False).parent == tmp_path / "env-cache"
    monkeypatch.delenv("SWIN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.default_cache_dir() == tmp_path / "home" / ".cache" / "swin-serve"


def test_downloaded_official_checkpoint_loads(tmp_path, fetches):
    config = SwinConfig(24, (2, 2, 2, 2), (1, 2, 4, 8), 4, 64, num_classes=10)
    torch.manual_seed(0)
    source = SwinTransformer(config).eval()
    remote = tmp_path / "swin_micro.pth"
    torch.save({"model": source.state_dict()}, remote)

    path = download_weights(remote.as_uri(), cache_dir=tmp_path / "cache", progress=False)
    torch.manual_seed(1)
    fresh = SwinTransformer(config).eval()
    load_checkpoint(fresh, path)

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), source(x))

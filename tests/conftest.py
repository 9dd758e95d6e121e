"""Fixtures shared by every part of the suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Servers the tests start (in-process or as subprocesses) leave gRPC off unless a test asks for
# it on a free port: the default port, 8001, would be contended between them.
os.environ.setdefault("SWIN_GRPC_PORT", "0")
# Servers compare with PyTorch at fp32's bound unless a test names another precision: under the
# default (auto) the precision would depend on the CPU the suite runs on.
os.environ.setdefault("SWIN_PRECISION", "fp32")

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "samples" / "images"
MICRO = "swin_micro_patch4_window4_64"
TINY = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="session")
def images_dir() -> Path:
    """samples/images: Pillow's test photos and broken files, kept in the repository."""
    return IMAGES


def _export_micro(out: Path, **variants: object):
    from swin_serve.export.pipeline import ExportOptions, Progress, run_export

    options = ExportOptions(variant=MICRO, checkpoint="random", out_dir=out, **variants)
    return run_export(options, Progress())


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The micro preset exported with random weights (seed 0): the fp32 artefact alone, so that
    a failing reduced-precision variant cannot take the tests of the served model down with it."""
    return _export_micro(tmp_path_factory.mktemp("micro-export"))


@pytest.fixture(scope="session")
def tiny_variants(tmp_path_factory):
    """The same export with its fp16 and int8 variants and a Triton repository."""
    out = tmp_path_factory.mktemp("micro-variants")
    return _export_micro(out, fp16=True, int8=True, triton_repo=out / "triton")


@pytest.fixture(scope="session")
def tiny_model_path(tiny_export) -> Path:
    """Path of the exported micro model: a served artefact with its `swin.manifest`."""
    return tiny_export.model_path


@pytest.fixture(scope="session")
def swin_t_export(tmp_path_factory):
    """The real Swin-T (random weights) exported once per session: about a minute on 2 cores."""
    from swin_serve.export.pipeline import ExportOptions, Progress, run_export

    out = tmp_path_factory.mktemp("swin-t-export")
    return run_export(ExportOptions(variant=TINY, checkpoint="random", out_dir=out), Progress())


@pytest.fixture(scope="session")
def tiny_other_head(tmp_path_factory):
    """The micro preset with another head: 7 classes (labels class_0..class_6) and other random
    weights (seed 1), for a model replaced by one whose answers cannot be mistaken for the old."""
    return _export_micro(tmp_path_factory.mktemp("micro-other-head"), num_classes=7, seed=1)

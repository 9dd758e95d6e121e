"""Fixtures shared by every part of the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MICRO = "swin_micro_patch4_window4_64"
TINY = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the suite reads the shared test images from there")
    return SHARED


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The micro preset exported with random weights (seed 0), with fp16, int8 and Triton."""
    from export.pipeline import ExportOptions, Progress, run_export

    out = tmp_path_factory.mktemp("micro-export")
    options = ExportOptions(
        variant=MICRO,
        checkpoint="random",
        out_dir=out,
        fp16=True,
        int8=True,
        triton_repo=out / "triton",
    )
    return run_export(options, Progress(8))


@pytest.fixture(scope="session")
def tiny_model_path(tiny_export) -> Path:
    """Path of the exported micro model: a served artefact with its `swin.manifest`."""
    return tiny_export.model_path


@pytest.fixture(scope="session")
def swin_t_export(tmp_path_factory):
    """The real Swin-T (random weights) exported once per session: about a minute on 2 cores."""
    from export.pipeline import ExportOptions, Progress, run_export

    out = tmp_path_factory.mktemp("swin-t-export")
    return run_export(ExportOptions(variant=TINY, checkpoint="random", out_dir=out), Progress(6))

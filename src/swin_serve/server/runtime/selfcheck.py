"""The golden self-check of a loaded engine: ``run_self_check`` (artifact/golden.py) on each of
its lanes, on this CPU."""

from __future__ import annotations

from typing import Any

from swin_serve.artifact.cpu import cpu_features
from swin_serve.artifact.golden import SelfCheckReport, run_self_check


def check_engine(engine: Any) -> SelfCheckReport:
    """``run_self_check`` on a loaded engine (engine.py's Engine) and this CPU, on each
    of its lanes: the first failure, else the report of the last lane checked."""
    report = None
    for run in engine.runners().values():
        report = run_self_check(
            run,
            engine.golden_text,
            precision=engine.precision,
            provider=engine.provider,
            cpu=cpu_features(),
            spec=engine.manifest.preprocess,
        )
        if report.status != "passed":
            return report
    assert report is not None, "an engine has at least one lane"
    return report

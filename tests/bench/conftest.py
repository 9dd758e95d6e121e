"""Fixtures of the benchmark's tests: the results of a whole run, made up, to report on."""

from __future__ import annotations

import pytest

from tests.bench.made_up_results import made_up_results


@pytest.fixture
def make_results():
    """A factory of results dicts as ``python -m bench`` writes them (engine, service with the
    naive peer, protocols), with the figures the targets compare as keyword arguments."""
    return made_up_results

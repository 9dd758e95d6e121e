"""The registry's transitions on their own, without a loader: each state a name can be in, what
each change does to the metrics, and that the registry is the only code that changes an entry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from swin_serve.server.errors import ApiError
from swin_serve.server.observability.metrics import Metrics
from swin_serve.server.repository import registry as registry_module
from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.repository.registry import ModelState, Registry
from swin_serve.server.settings import Settings
from tests.support import metric, parse_metrics
from tests.support.fakes import FakeEngine

REPOSITORY_PACKAGE = Path(registry_module.__file__).parent
ENTRY_FIELDS = {"state", "model", "reason", "stamp", "refused", "replacing"}


class Recorded:
    """A registry on its own metrics, counting the ``on_change`` calls."""

    def __init__(self) -> None:
        self.changes = 0
        self.metrics = Metrics(CollectorRegistry())
        self.registry = Registry(Settings(), self.metrics, on_change=self._changed)

    def _changed(self) -> None:
        self.changes += 1

    def metric(self, name: str, **labels: str) -> float:
        return metric(parse_metrics(self.metrics.render().decode()), name, **labels)


def a_model(name: str) -> LoadedModel:
    return LoadedModel(name, FakeEngine(), batcher=None, self_check=None, digest=name, warm=True)


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


def test_a_new_name_loads_then_takes_requests_once_published(recorded):
    registry = recorded.registry
    entry = registry.add("a", Path("a.onnx"))
    assert entry.state is ModelState.LOADING and registry.entry("a") is entry
    with pytest.raises(ApiError, match="loading or warming up"):
        registry.model_for_requests("a")
    model = a_model("a")
    assert registry.publish(entry, model) is None
    assert entry.state is ModelState.READY and registry.model_for_requests("a") is model
    assert recorded.metric("swin_model_ready", model="a") == 1
    assert recorded.metric("swin_model_loads_total", model="a", outcome="loaded") == 1
    assert recorded.changes == 2


def test_a_replacement_retires_the_old_model_and_clears_the_old_failure(recorded):
    registry = recorded.registry
    entry = registry.add("a", Path("a.onnx"))
    old, new = a_model("a"), a_model("a")
    registry.publish(entry, old)
    registry.begin_replacing(entry)
    registry.fail(entry, "SelfCheckFailed: no")  # a first replacement failed ...
    assert entry.state is ModelState.READY and entry.reason == "SelfCheckFailed: no"
    assert not entry.replacing and registry.model_for_requests("a") is old
    registry.begin_replacing(entry)
    assert registry.publish(entry, new) is old  # ... the next one succeeds
    assert entry.reason is None and registry.retiring == {old}
    assert registry.live_models() == [new, old]
    registry.unloaded(old)
    assert registry.live_models() == [new]


def test_a_name_serving_nothing_fails_and_is_retried_once_asked(recorded):
    registry = recorded.registry
    entry = registry.add("a", Path("a.onnx"))
    registry.fail(entry, "ModelLoadError: broken")
    assert entry.state is ModelState.FAILED
    assert recorded.metric("swin_model_ready", model="a") == 0
    with pytest.raises(ApiError, match="failed to load: ModelLoadError: broken"):
        registry.model_for_requests("a")
    registry.begin_loading(entry)
    assert entry.state is ModelState.LOADING and entry.reason is None


def test_a_refused_name_is_failed_until_it_loads_with_its_new_stamp(recorded):
    registry = recorded.registry
    entry = registry.add("b", Path("b.onnx"))
    registry.refuse(entry, "not loaded: SWIN_MAX_MODELS=1 models are served already")
    assert entry.state is ModelState.FAILED and entry.refused
    assert recorded.metric("swin_model_loads_total", model="b", outcome="refused") == 1
    assert registry.serving() == 0
    stamp = object()
    registry.begin_loading(entry, stamp=stamp)
    assert entry.state is ModelState.LOADING and not entry.refused and entry.stamp is stamp
    assert registry.serving() == 1


def test_a_removed_name_is_404_at_once_and_unloads_its_model(recorded):
    registry = recorded.registry
    entry = registry.add("a", Path("a.onnx"))
    model = a_model("a")
    registry.publish(entry, model)
    assert registry.remove(entry) is model
    assert entry.state is ModelState.UNLOADING and registry.unloading == {"a": entry}
    with pytest.raises(ApiError, match="unknown model 'a'"):
        registry.entry("a")
    assert registry.live_models() == [model]
    registry.unloaded(model)
    assert not registry.unloading and registry.live_models() == []
    assert 'model="a"' not in recorded.metrics.render().decode()


def test_a_start_up_model_is_held_while_warming_and_withdrawn_if_it_cannot_warm(recorded):
    registry = recorded.registry
    entry = registry.add("a", Path("a.onnx"))
    model = a_model("a")
    registry.hold(entry, model)
    assert entry.state is ModelState.LOADING and registry.default_entry().model is model
    registry.withdraw(entry)
    assert entry.model is None and registry.live_models() == []


def _assignments_to_entries(path: Path) -> list[str]:
    """``X.entries[...] = ...`` and ``X.<entry field> = ...`` in ``path``, as ``line: text``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for part in target.elts if isinstance(target, ast.Tuple) else [target]:
                field = isinstance(part, ast.Attribute) and part.attr in ENTRY_FIELDS
                keyed = (
                    isinstance(part, ast.Subscript)
                    and isinstance(part.value, ast.Attribute)
                    and part.value.attr == "entries"
                )
                if (field and ast.unparse(part.value) != "self") or keyed:
                    found.append(f"{node.lineno}: {ast.unparse(part)}")
    return found


@pytest.mark.parametrize(
    "module",
    sorted(p.name for p in REPOSITORY_PACKAGE.glob("*.py") if p.name != "registry.py"),
)
def test_only_the_registry_changes_an_entry(module):
    assert _assignments_to_entries(REPOSITORY_PACKAGE / module) == []

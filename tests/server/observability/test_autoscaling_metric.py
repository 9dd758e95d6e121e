"""The series the autoscaler reads exists, as the prometheus-adapter rule expects it.

deploy/k8s/prometheus-adapter/rules.yaml turns ``rate(<series>[2m])`` per pod into the HPA's
``swin_queued_images``. These tests run the real app on the real ONNX engine (the exported
micro model) and read its ``/metrics`` with Prometheus's own parser: the series is there, it
has no label of its own that would clash with the ``namespace`` and ``pod`` labels Prometheus
adds at scrape time, and it grows by exactly the time images spent queued, so its rate is the
mean number of images waiting (Little's law).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from swin_serve.server.http.app import create_app
from swin_serve.server.settings import Settings

pytestmark = pytest.mark.anyio

RULES = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "prometheus-adapter" / "rules.yaml"
# Labels that Prometheus attaches to every series of a scraped pod (ServiceMonitor or the
# kubernetes-pods job). A series carrying one of its own would have it renamed exported_*.
TARGET_LABELS = {"namespace", "pod", "service", "endpoint", "container", "job", "instance"}


def rule_series() -> tuple[str, set[str]]:
    """The series name the adapter rule queries, and the label names it matches on."""
    (rule,) = yaml.safe_load(RULES.read_text())["rules"]
    match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}", rule["seriesQuery"])
    assert match, rule["seriesQuery"]
    labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*!?=~?", match[2]))
    return match[1], labels | set(rule["resources"]["overrides"])


def samples(text: str, name: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def server_timing_ms(header: str, metric: str) -> float:
    match = re.search(rf"\b{metric};dur=([0-9.]+)", header)
    assert match, header
    return float(match[1])


@pytest.fixture
def real_app(tiny_model_path):
    def factory(**overrides):
        opts = {"model_path": tiny_model_path, "providers": "cpu", "max_batch_delay_ms": 1}
        opts.update(overrides)
        return create_app(Settings(**opts))

    return factory


async def test_the_series_the_adapter_rule_reads_is_exposed_without_the_labels_prometheus_adds(
    real_app, serve, png
):
    series, rule_labels = rule_series()
    async with serve(real_app()) as client:
        before = (await client.get("/metrics")).text
        resp = await client.post("/classify", files={"file": ("a.png", png(), "image/png")})
        assert resp.status_code == 200
        after = (await client.get("/metrics")).text
    # Exposed from the start (a pod that has served nothing yet reads as 0, not as missing),
    # as a single series per pod.
    (start,) = samples(before, series)
    (end,) = samples(after, series)
    assert start.value == 0.0 and end.value > 0.0
    assert rule_labels == {"namespace", "pod"}
    assert not set(end.labels) & TARGET_LABELS, end.labels
    # The histogram it belongs to counts the same images.
    family = series.removesuffix("_sum")
    (count,) = samples(after, f"{family}_count")
    assert count.value == 1


async def test_the_series_grows_by_the_time_images_spent_queued(real_app, serve, png):
    """One run slot, one image per batch, eight requests at once: all but one wait. The
    counter grows by the sum of their waits (each request's Server-Timing `queue`), so
    rate(series) over a window is the time-averaged number of images queued."""
    series, _ = rule_series()
    app = real_app(max_batch_size=1, parallel_batches=1, queue_capacity=16)
    n = 8
    async with serve(app) as client:
        before = samples((await client.get("/metrics")).text, series)[0].value
        responses = await asyncio.gather(
            *(
                client.post("/classify", files={"file": (f"{i}.png", png((i, 0, 0)), "image/png")})
                for i in range(n)
            )
        )
        after = samples((await client.get("/metrics")).text, series)[0].value
    assert [r.status_code for r in responses] == [200] * n
    waits_s = [server_timing_ms(r.headers["Server-Timing"], "queue") / 1e3 for r in responses]
    # Eight images behind one slot: the queue held several of them for a while.
    assert sorted(waits_s)[-1] > 0
    # Server-Timing rounds each wait to 0.01 ms.
    assert after - before == pytest.approx(sum(waits_s), abs=n * 1e-5 + 1e-9)

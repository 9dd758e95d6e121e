"""The CPU layout (src/swin_serve/server/runtime/layout.py): the decision from timings, the lanes each layout keeps,
and where each run goes. Runners here are plain functions, so nothing is timed for real except
where a test says so."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from swin_serve.server.runtime.layout import Lane, Lanes, calibrate, decide, lanes_for

FEED = np.zeros((1, 3, 4, 4), np.float32)


def test_lanes_split_the_cpus_into_at_most_four_runs():
    assert lanes_for(2) == (Lane(1, 2), Lane(2, 1))
    assert lanes_for(16) == (Lane(1, 16), Lane(4, 4))
    assert lanes_for(1) == (Lane(1, 1), Lane(1, 1))


@pytest.mark.parametrize(
    ("lone_wide", "lone_narrow", "loaded_narrow", "expected"),
    [
        # fp32 on two cores: two threads cut a lone run by a third, two runs side by side
        # out-run one after the other.
        (70.0, 110.0, 18.0, "hybrid"),
        # int8: a second thread buys a lone run nothing.
        (50.0, 50.0, 40.0, "narrow"),
        (60.0, 50.0, 40.0, "narrow"),
        # side by side clearly slower than one wide run after another (1000 / 50 = 20 img/s).
        (50.0, 100.0, 15.0, "wide"),
    ],
)
def test_the_layout_follows_the_timings(lone_wide, lone_narrow, loaded_narrow, expected):
    name, reason = decide(lone_wide, lone_narrow, loaded_narrow)
    assert name == expected
    assert f"{lone_wide:.1f} ms wide" in reason and f"{loaded_narrow:.1f} img/s narrow" in reason


def test_a_lane_is_dropped_only_on_clear_evidence():
    # The wide lane must be 10% faster alone to be worth its copy of the weights.
    assert decide(92.0, 100.0, 100.0)[0] == "narrow"
    assert decide(85.0, 100.0, 100.0)[0] == "hybrid"
    # The narrow lanes stay unless 20% slower than one wide run after another (12.5 img/s here).
    assert decide(80.0, 100.0, 10.5)[0] == "hybrid"
    assert decide(80.0, 100.0, 9.5)[0] == "wide"


class _Opened:
    def __init__(self) -> None:
        self.lanes: list[Lane] = []

    def __call__(self, lane: Lane):
        self.lanes.append(lane)
        return lambda feed, lane=lane: [np.full(1, lane.threads, np.float32)]


@pytest.mark.parametrize(
    ("wanted", "wide", "narrow", "runs"),
    [("wide", True, False, 1), ("narrow", False, True, 2), ("hybrid", True, True, 2)],
)
def test_a_named_layout_opens_only_its_lanes_and_times_nothing(wanted, wide, narrow, runs):
    opened = _Opened()
    choice, run_wide, run_narrow = calibrate(opened, 2, FEED, wanted)
    assert choice.name == wanted and choice.parallel_runs == runs and choice.figures == {}
    assert (run_wide is not None, run_narrow is not None) == (wide, narrow)
    assert len(opened.lanes) == wide + narrow
    assert choice.reason == f"SWIN_CPU_LAYOUT={wanted}"


def test_one_cpu_is_one_wide_lane():
    opened = _Opened()
    choice, _, run_narrow = calibrate(opened, 1, FEED, "hybrid")
    assert (choice.name, choice.parallel_runs, run_narrow) == ("wide", 1, None)
    assert opened.lanes == [Lane(1, 1)]


def test_calibration_times_both_lanes_and_keeps_what_it_chose(monkeypatch):
    from swin_serve.server.runtime import layout

    monkeypatch.setattr(layout, "time_lone", lambda run, feed: 70.0 if run(feed)[0] == 2 else 110.0)
    monkeypatch.setattr(layout, "time_loaded", lambda run, feed, runs: 18.0)
    opened = _Opened()
    choice, run_wide, run_narrow = calibrate(opened, 2, FEED)
    assert choice.name == "hybrid" and choice.parallel_runs == 2
    assert choice.figures == {
        "lone_wide_ms": 70.0,
        "lone_narrow_ms": 110.0,
        "loaded_narrow_img_s": 18.0,
        "loaded_wide_img_s": 14.29,
    }
    assert sorted(opened.lanes, key=lambda lane: lane.runs) == [Lane(1, 2), Lane(2, 1)]
    assert run_wide(FEED)[0] == 2 and run_narrow(FEED)[0] == 1

    monkeypatch.setattr(layout, "time_lone", lambda run, feed: 50.0)
    choice, run_wide, run_narrow = calibrate(_Opened(), 2, FEED)
    assert (choice.name, choice.parallel_runs, run_wide) == ("narrow", 2, None)


def test_a_real_timing_measures_what_it_runs():
    from swin_serve.server.runtime.layout import time_loaded, time_lone

    calls = []
    assert time_lone(lambda feed: calls.append(1), FEED, reps=3) >= 0 and len(calls) == 4
    calls.clear()
    rate = time_loaded(lambda feed: calls.append(1), FEED, runs=2, reps=3)
    assert rate > 0 and len(calls) == 1 + 2 * 3


def test_a_lone_run_takes_the_wide_lane_and_one_beside_it_a_narrow_one():
    inside, release = threading.Event(), threading.Event()
    seen = []

    def wide(feed):
        seen.append("wide")
        inside.set()
        assert release.wait(10)
        return ["wide"]

    def narrow(feed):
        seen.append("narrow")
        return ["narrow"]

    lanes = Lanes(wide, narrow)
    first = threading.Thread(target=lanes, args=(FEED,))
    first.start()
    assert inside.wait(10)
    assert lanes(FEED) == ["narrow"]  # started while the wide run was in progress
    release.set()
    first.join(10)
    assert lanes(FEED) == ["wide"]  # alone again
    assert seen == ["wide", "narrow", "wide"]


def test_a_layout_with_one_lane_sends_every_run_there():
    assert Lanes(None, lambda feed: ["n"])(FEED) == ["n"]
    assert Lanes(lambda feed: ["w"], None)(FEED) == ["w"]
    assert set(Lanes(lambda f: 1, lambda f: 2).runners()) == {"wide", "narrow"}
    with pytest.raises(ValueError):
        Lanes(None, None)


def test_a_failed_run_gives_its_lane_back():
    def boom(feed):
        raise RuntimeError("kernel")

    lanes = Lanes(boom, lambda feed: ["narrow"])
    with pytest.raises(RuntimeError):
        lanes(FEED)
    with pytest.raises(RuntimeError):
        lanes(FEED)  # still alone: the failed run did not leave itself counted

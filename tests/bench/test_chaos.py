"""The chaos soak's verdict on made-up runs: each criterion passes a clean run and fails one with a
planted violation (no server is started; nothing here is timed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.chaos_client import classification_top, classify_top, dechunk, parse_reply
from bench.chaos_inputs import scan_bomb
from bench.chaos_models import Model, identify
from bench.chaos_verdict import (
    AFTER_TERM,
    AT_TERM,
    CANCELLED,
    FD_BAND,
    NO_RESPONSE,
    RUN,
    UNKNOWN_MODEL,
    Answer,
    CardObservation,
    ProcSample,
    SwapRecord,
    allowed,
    allowed_models,
    answer_key,
    check_exit,
    check_flat,
    check_models,
    check_statuses,
    check_swaps,
    check_traced,
    phase_of,
)

DIGESTS = {"dA": "A", "dB": "B"}


def card(*reads: tuple[float, str]) -> list[CardObservation]:
    """Card reads, each taking 0.1 s from its time."""
    return [CardObservation(t, t + 0.1, d) for t, d in reads]


# A card that named A until a swap between the reads at 10 and 11, then B.
SWAPPED = card((9.0, "dA"), (10.0, "dA"), (11.0, "dB"), (12.0, "dB"))


def served(model: str, started: float, ended: float, kind: str = "http_good") -> Answer:
    return Answer(kind, "200", started, ended, RUN, model, True)


# -- statuses ------------------------------------------------------------------------------------


def test_answer_keys_tell_codes_and_retry_after_apart():
    assert answer_key(0) == NO_RESPONSE
    assert answer_key(400, "invalid_image") == "400 invalid_image"
    assert answer_key(503, "overloaded", "1") == "503 overloaded"  # the code wins
    assert answer_key(503, "", "1") == "503 retry-after 1"  # v2: no code, Retry-After tells
    assert answer_key(503) == "503"  # uvicorn's plain one


def test_a_clean_run_passes_the_status_check():
    answers = [
        Answer("http_good", "200", 0, 1),
        Answer("http_good", "503 overloaded", 0, 1),
        Answer("http_junk", "400 invalid_image", 0, 1),
        Answer("http_junk", "503 deadline_exceeded", 0, 1),  # admission comes first
        Answer("v2_bomb", "413", 0, 1),
        Answer("grpc_bomb", "RESOURCE_EXHAUSTED", 0, 1),
        Answer("grpc_good", "UNAVAILABLE", 0, 1),
        Answer("http_scan_bomb", "413 image_too_large", 0, 1),
        Answer("grpc_cancel", CANCELLED, 0, 1),
        Answer("http_good", "503 draining", 0, 1, AT_TERM),
        Answer("http_good", NO_RESPONSE, 0, 1, AFTER_TERM),
    ]
    assert check_statuses(answers) == []


@pytest.mark.parametrize(
    "planted",
    [
        Answer("http_good", "500 internal_error", 0, 1),  # a 5xx
        Answer("http_junk", "200", 0, 1),  # junk served
        Answer("http_bomb", "400 invalid_image", 0, 1),  # a bomb must be 413
        Answer("v2_good", "503 retry-after 5", 0, 1),  # not_ready while serving
        Answer("http_good", "503 not_ready", 0, 1),  # a swap must not make the model unready
        Answer("grpc_junk", "INTERNAL", 0, 1),
        Answer("grpc_good", "CANCELLED", 0, 1),  # only the clients that cancel may see it
        Answer("http_good", NO_RESPONSE, 0, 1),  # dropped while running
        Answer("http_good", NO_RESPONSE, 0, 1, AT_TERM),  # accepted, then dropped by the drain
        Answer("http_good", "503 draining", 0, 1),  # draining before SIGTERM
        Answer("http_good", "200 unparsable", 0, 1),
    ],
)
def test_a_planted_status_fails_the_status_check(planted):
    bad = check_statuses([Answer("http_good", "200", 0, 1), planted])
    assert len(bad) == 1 and planted.kind in bad[0] and planted.key in bad[0]


def test_phases_follow_sigterm():
    assert phase_of(0, 1, None) == RUN
    assert phase_of(0, 1, 2) == RUN
    assert phase_of(0, 3, 2) == AT_TERM
    assert phase_of(2.5, 3, 2) == AFTER_TERM
    assert NO_RESPONSE in allowed("grpc_good", AFTER_TERM)
    assert NO_RESPONSE not in allowed("grpc_good", AT_TERM)


# -- models --------------------------------------------------------------------------------------


def test_allowed_models_before_during_and_after_a_swap():
    assert allowed_models(SWAPPED, DIGESTS, 9.3, 9.8) == {"A"}
    assert allowed_models(SWAPPED, DIGESTS, 10.3, 10.6) == {"A", "B"}  # between the two reads
    assert allowed_models(SWAPPED, DIGESTS, 9.5, 11.5) == {"A", "B"}  # straddles the swap
    assert allowed_models(SWAPPED, DIGESTS, 11.3, 11.8) == {"B"}
    assert allowed_models(SWAPPED, DIGESTS, 13.0, 14.0) == {"B"}  # after the last read


def test_a_clean_run_passes_the_model_check():
    answers = [
        served("A", 9.2, 9.9),
        served("A", 10.5, 11.5),  # sent before the swap: the old model finishes it
        served("B", 10.5, 11.5, "grpc_good"),
        served("B", 11.2, 12.5, "v2_good"),
        Answer("http_junk", "400 invalid_image", 11.2, 11.3),  # not a served answer
    ]
    bad, figures = check_models(answers, SWAPPED, DIGESTS)
    assert bad == []
    assert figures == {"checked": 4, "straddled_a_swap": 2}


@pytest.mark.parametrize(
    "planted",
    [
        served("B", 9.2, 9.9),  # B before the card ever named it
        served("A", 11.2, 11.9),  # the old model after the card showed the new one
        Answer("http_good", "200", 9.2, 9.9, RUN, UNKNOWN_MODEL, None),  # labels of no model
        Answer("v2_good", "200", 9.2, 9.9, RUN, "A", False),  # A's labels, not A's answer
    ],
)
def test_a_planted_answer_fails_the_model_check(planted):
    bad, _ = check_models([served("A", 9.2, 9.9), planted], SWAPPED, DIGESTS)
    assert len(bad) == 1 and planted.kind in bad[0]


def test_answers_are_identified_by_labels_and_checked_against_the_golden():
    a = Model("A", None, "dA", frozenset(f"A{i}" for i in range(4)))
    b = Model("B", None, "dB", frozenset(f"B{i}" for i in range(4)))
    a.golden_logits["x.jpg"] = np.array([0.1, 2.0, 0.3, 1.9999])
    models = {"A": a, "B": b}
    assert identify(["A1", "A3"], models) == "A"
    assert identify(["A1", "B3"], models) == UNKNOWN_MODEL
    assert identify(["C1"], models) == UNKNOWN_MODEL
    assert a.golden_ok("x.jpg", 1, 2.0, softmax=False)
    assert a.golden_ok("x.jpg", 3, 1.9999, softmax=False)  # a tie within the tolerance
    assert not a.golden_ok("x.jpg", 2, 0.3, softmax=False)  # not the top-1
    assert not a.golden_ok("x.jpg", 1, 2.5, softmax=False)  # the top-1, but not its value
    probs = np.exp(a.golden_logits["x.jpg"]) / np.exp(a.golden_logits["x.jpg"]).sum()
    assert a.golden_ok("x.jpg", 1, float(probs[1]), softmax=True)


def test_answers_are_parsed_from_each_protocol():
    body = json.dumps(
        {"results": [{"predictions": [{"label": "A7", "index": 7, "score": 0.4}]}]}
    ).encode()
    assert classify_top(body) == (["A7"], 7, 0.4)
    assert classification_top([b"1.500000:3:B3", b"0.2:1:B1"]) == (["B3", "B1"], 3, 1.5)
    raw = (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'7\r\n{"error\r\na\r\n": "full"}\r\n0\r\n\r\n'
    )
    reply = parse_reply(raw, 0, 1)
    assert (reply.status, reply.retry_after, reply.body) == (503, "1", b'{"error": "full"}')
    assert parse_reply(b"", 0, 1).status == 0
    assert dechunk(b"3\r\nabc\r\n0\r\n\r\n") == b"abc"


# -- swaps ---------------------------------------------------------------------------------------


def test_a_clean_run_passes_the_swap_check():
    swaps = [
        SwapRecord("swap", "B", 10.0, 0.5, True),
        SwapRecord("truncated", None, 20.0, 0.1, True, True),
    ]
    assert check_swaps(swaps, SWAPPED, DIGESTS) == []


@pytest.mark.parametrize(
    ("swaps", "reads"),
    [
        ([SwapRecord("swap", "B", 10.0, None, False)], SWAPPED),  # never on the card
        ([SwapRecord("garbage", None, 20.0, None, False)], SWAPPED),  # not refused
        ([SwapRecord("truncated", None, 20.0, 0.1, True, False)], SWAPPED),  # card changed
        ([], [*SWAPPED, CardObservation(13.0, 13.1, "d-broken")]),  # a broken file on the card
    ],
)
def test_a_planted_swap_problem_fails_the_swap_check(swaps, reads):
    assert len(check_swaps(swaps, reads, DIGESTS)) == 1


# -- memory, fds, exit, spans --------------------------------------------------------------------


def samples(rss: list[float], fds: list[int]) -> list[ProcSample]:
    return [ProcSample(10.0 * i, r, f) for i, (r, f) in enumerate(zip(rss, fds, strict=True))]


def test_flat_second_half_passes_whatever_the_first_half_did():
    # The first half rises to the arenas' high-water mark; the second stays within the bands.
    run = samples([100, 150, 180, 185, 182, 186], [20, 30, 26, 26, 27, 26 + FD_BAND // 2])
    assert check_flat(run, half_t=25.0) == []


@pytest.mark.parametrize(
    ("rss", "fds"),
    [
        ([180, 180, 180, 190, 200, 215], [26] * 6),  # a leak: +25 MiB over 200 MiB
        ([180] * 6, [26, 26, 26, 26, 30, 26 + FD_BAND + 1]),  # an fd leak
    ],
)
def test_a_planted_leak_fails_the_flat_check(rss, fds):
    assert len(check_flat(samples(rss, fds), half_t=25.0)) == 1


def test_rss_that_swings_with_the_swaps_but_does_not_grow_passes():
    # Settled samples 12 % apart, up and down, as model swaps leave them; no trend.
    swings = [180, 166, 187, 168, 186, 167, 185, 169, 186, 168]
    assert check_flat(samples(swings, [26] * 10), half_t=0.0) == []


def test_too_few_samples_fail_the_flat_check():
    assert check_flat(samples([180, 180], [26, 26]), half_t=15.0)


def test_exit_must_be_zero_and_within_the_bound():
    assert check_exit(0, 6.0, 13.0) == []
    assert check_exit(1, 6.0, 13.0)
    assert check_exit(0, 14.0, 13.0)
    assert check_exit(None, None, 13.0)  # killed


def test_no_span_fails_the_tracing_check():
    assert check_traced(12) == []
    assert check_traced(0)


# -- inputs --------------------------------------------------------------------------------------


def test_the_scan_bomb_is_a_small_valid_progressive_jpeg_with_a_thousand_extra_scans():
    data = scan_bomb()
    assert data.endswith(b"\xff\xd9") and len(data) < 200_000
    assert data.count(b"\xff\xda") > 1000
    with Image.open(io.BytesIO(data)) as im:  # the header is intact: size 4096x4096, progressive
        assert im.size == (4096, 4096) and im.info.get("progressive")


def test_the_figures_docs_reliability_quotes_are_the_last_runs():
    """docs/reliability.md quotes bench/results/chaos.json: a new run must update the page."""
    root = Path(__file__).resolve().parents[2]
    run = json.loads((root / "bench" / "results" / "chaos.json").read_text())
    page = " ".join((root / "docs" / "reliability.md").read_text(encoding="utf-8").split())
    swaps = [s for s in run["swaps"] if s["kind"] == "swap"]
    assert run["passed"] is True
    assert f"{run['model_check']['checked']:,} served answers checked" in page
    assert f"{run['model_check']['straddled_a_swap']:,} of them straddling a swap" in page
    assert f"{len(swaps)} swaps and {len(run['swaps']) - len(swaps)} broken files" in page
    assert f"{run['scan_bombs']['count']} scan bombs" in page
    assert f"the slowest answer {run['scan_bombs']['seconds_median_max'][1]} s" in page
    assert f"exited 0 after {run['exit_s']} s" in page
    assert f"rising {run['flatness']['rss_growth_mib']} MiB" in page

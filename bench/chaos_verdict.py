"""The chaos soak's verdict: what each kind of request may get, and the pure pass/fail criteria.

Nothing here sends a request or reads a clock; bench.chaos gathers the answers, card reads, swaps
and process samples, and these functions judge them (the module docstring of bench.chaos lists
the criteria). Times are in seconds.
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SWAP_WAIT_S = 60.0
RSS_BAND = 0.10
FD_BAND = 8

NO_RESPONSE = "no_response"
CANCELLED = "cancelled"
UNKNOWN_MODEL = "?"  # a 200 whose labels are not all of one model's

# -- what each kind of request may get -----------------------------------------------------------
# An answer's key: "200", "400 invalid_image" (status and the JSON error code), "503 retry-after 1"
# (v2 errors carry no code; Retry-After tells overloaded/deadline (1) from not_ready/draining (5)),
# "503" (uvicorn's own plain 503 past SWIN_MAX_CONNECTIONS), a gRPC status name ("OK",
# "INVALID_ARGUMENT"), NO_RESPONSE, or CANCELLED (the client gave up first).

ADMISSION = {  # any inference request: admission and the deadline come before the body is looked at
    "http": {"503 overloaded", "503 deadline_exceeded", "503"},
    "v2": {"503 retry-after 1", "503"},
    "grpc": {"UNAVAILABLE", "DEADLINE_EXCEEDED"},
}
DRAIN = {  # in flight when SIGTERM came: what the drain time did not finish gets this
    "http": {"503 draining"},
    "v2": {"503 retry-after 5"},
    "grpc": {"UNAVAILABLE"},
}
# A scan bomb is a valid image: served (200) or refused for its decode work (400, 413, or 503
# deadline_exceeded, which ADMISSION has); never a 5xx.
KINDS: dict[str, tuple[str, frozenset[str]]] = {
    "http_good": ("http", frozenset({"200"})),
    "http_junk": ("http", frozenset({"400 invalid_image"})),
    "http_truncated": ("http", frozenset({"400 invalid_image"})),
    "http_empty": ("http", frozenset({"400 invalid_image"})),
    "http_bad_multipart": ("http", frozenset({"400 bad_request"})),
    "http_wrong_type": ("http", frozenset({"415 unsupported_media_type"})),
    "http_top_k": ("http", frozenset({"422 validation_error"})),
    "http_too_big": ("http", frozenset({"413 payload_too_large"})),
    "http_bomb": ("http", frozenset({"413 image_too_large"})),
    "http_unknown_model": ("http", frozenset({"404 not_found"})),
    "http_scan_bomb": ("http", frozenset({"200", "400 invalid_image", "413 image_too_large"})),
    "http_cancel_body": ("http", frozenset({CANCELLED})),
    "http_cancel_wait": ("http", frozenset({CANCELLED})),
    "v2_good": ("v2", frozenset({"200"})),
    "v2_bad_json": ("v2", frozenset({"400"})),
    "v2_bad_base64": ("v2", frozenset({"400"})),
    "v2_truncated": ("v2", frozenset({"400"})),
    "v2_bomb": ("v2", frozenset({"413"})),
    "v2_unknown_model": ("v2", frozenset({"404"})),
    "v2_scan_bomb": ("v2", frozenset({"200", "400", "413"})),
    "grpc_good": ("grpc", frozenset({"OK"})),
    "grpc_junk": ("grpc", frozenset({"INVALID_ARGUMENT"})),
    "grpc_truncated": ("grpc", frozenset({"INVALID_ARGUMENT"})),
    "grpc_bad_tensor": ("grpc", frozenset({"INVALID_ARGUMENT"})),
    "grpc_bomb": ("grpc", frozenset({"RESOURCE_EXHAUSTED"})),
    "grpc_unknown_model": ("grpc", frozenset({"NOT_FOUND"})),
    "grpc_scan_bomb": ("grpc", frozenset({"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"})),
    "grpc_cancel": ("grpc", frozenset({CANCELLED, "OK"})),
}
HOSTILE = {
    p: [
        k
        for k, (proto, _) in KINDS.items()
        if proto == p and "good" not in k and "cancel" not in k and "scan_bomb" not in k
    ]
    for p in ("http", "v2", "grpc")
}

# Phases of a request with respect to the final SIGTERM.
RUN, AT_TERM, AFTER_TERM = "run", "at_term", "after_term"


def answer_key(status: int, code: str = "", retry_after: str = "") -> str:
    """An HTTP answer's key (see above); status 0 is no answer at all."""
    if status == 0:
        return NO_RESPONSE
    if code:
        return f"{status} {code}"
    if status == 503 and retry_after:
        return f"503 retry-after {retry_after}"
    return str(status)


def allowed(kind: str, phase: str = RUN) -> frozenset[str]:
    """The answers a request of ``kind`` may get; ``phase`` says where it was at SIGTERM."""
    protocol, own = KINDS[kind]
    out = set(own) | ADMISSION[protocol]
    if phase in (AT_TERM, AFTER_TERM):
        out |= DRAIN[protocol]
    if phase == AFTER_TERM:  # new connections are refused once the server drains
        out.add(NO_RESPONSE)
    return frozenset(out)


def phase_of(started: float, ended: float, t_term: float | None) -> str:
    if t_term is None or ended < t_term:
        return RUN
    return AFTER_TERM if started >= t_term else AT_TERM


# -- the criteria --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's outcome; ``model`` and ``golden_ok`` only for a 200 that carries labels."""

    kind: str
    key: str
    started: float
    ended: float
    phase: str = RUN
    model: str | None = None  # the model its labels name; UNKNOWN_MODEL: no single model's
    golden_ok: bool | None = None  # None: no golden for this input (a scan bomb)


@dataclass(frozen=True, slots=True)
class CardObservation:
    """One read of the card: sent at ``sent``, answered at ``answered``, naming ``digest``."""

    sent: float
    answered: float
    digest: str
    state: str = "ready"


def check_statuses(answers: Sequence[Answer]) -> list[str]:
    """Criterion 1: one line per (kind, phase, key) outside the documented set, with its count."""
    bad: Counter[tuple[str, str, str]] = Counter()
    for a in answers:
        if a.key not in allowed(a.kind, a.phase):
            bad[(a.kind, a.phase, a.key)] += 1
    return [f"{kind} ({phase}) got {key} x{n}" for (kind, phase, key), n in sorted(bad.items())]


def allowed_models(
    observations: Sequence[CardObservation],
    models_by_digest: dict[str, str],
    started: float,
    ended: float,
) -> set[str]:
    """The models the card may have named at some moment of [started, ended].

    ``observations`` are in order and do not overlap (one poller). The card changed at most once
    between two neighbouring reads, somewhere between them, so over the request it named what
    every read overlapping it says, and what the last read before it and the first after it say.
    A request sent before a swap and answered after it may get either model: the old version
    finishes what it was given, and a swap's exact moment is known only to the poll interval.
    """
    answered = [o.answered for o in observations]
    sent = [o.sent for o in observations]
    lo = bisect.bisect_left(answered, started)  # the first read that ends at or after the start
    hi = bisect.bisect_right(sent, ended)  # the first read that starts after the end
    first, last = max(lo - 1, 0), min(hi, len(observations) - 1)
    return {
        models_by_digest[o.digest]
        for o in observations[first : last + 1]
        if o.digest in models_by_digest
    }


def check_models(
    answers: Sequence[Answer],
    observations: Sequence[CardObservation],
    models_by_digest: dict[str, str],
) -> tuple[list[str], dict[str, int]]:
    """Criterion 2: (violations, figures). Every 200 with labels must name one model, match its
    golden and be a model the card named while the request was out."""
    bad: Counter[str] = Counter()
    figures: Counter[str] = Counter()
    for a in answers:
        if a.model is None:  # not a served answer
            continue
        figures["checked"] += 1
        if a.model == UNKNOWN_MODEL:
            bad[f"{a.kind}: labels of no single model"] += 1
            continue
        if a.golden_ok is False:
            bad[f"{a.kind}: model {a.model}'s labels, not its golden top-1"] += 1
        could = allowed_models(observations, models_by_digest, a.started, a.ended)
        if len(could) > 1:
            figures["straddled_a_swap"] += 1
        if a.model not in could:
            bad[f"{a.kind}: model {a.model} while the card named {sorted(could) or 'nothing'}"] += 1
    return [f"{line} x{n}" for line, n in sorted(bad.items())], dict(figures)


@dataclass
class SwapRecord:
    """One repository change. ``kind``: "swap" (to ``to``), or "truncated"/"garbage" (broken)."""

    kind: str
    to: str | None
    published: float
    seconds: float | None = None  # publish to observed (swap) or refused (broken)
    observed: bool = False  # swap: the card showed the new digest; broken: the load failed
    card_unchanged: bool | None = None  # broken: the card still names the serving file, ready
    during_overload: bool = False


def check_swaps(
    swaps: Sequence[SwapRecord],
    observations: Sequence[CardObservation],
    models_by_digest: dict[str, str],
) -> list[str]:
    """Criterion 3: swaps seen, broken files refused with the card unchanged, no stray digest."""
    bad = []
    for i, s in enumerate(swaps):
        if s.kind == "swap" and not s.observed:
            bad.append(f"swap {i + 1} to {s.to}: not on the card within {SWAP_WAIT_S:g} s")
        if s.kind != "swap" and not s.observed:
            bad.append(f"broken file {i + 1} ({s.kind}): no failed load within {SWAP_WAIT_S:g} s")
        if s.kind != "swap" and s.card_unchanged is False:
            bad.append(f"broken file {i + 1} ({s.kind}): the card changed or is not ready")
    stray = Counter(o.digest[:12] for o in observations if o.digest not in models_by_digest)
    bad += [f"the card named digest {d}... (neither model) x{n}" for d, n in stray.items()]
    return bad


@dataclass(frozen=True, slots=True)
class ProcSample:
    t: float  # seconds since the run started
    rss_mib: float
    fds: int


def flatness(samples: Sequence[ProcSample], half_t: float) -> dict[str, Any]:
    """RSS and fd figures of the samples taken at or after ``half_t``. ``rss_growth_mib`` is the
    least-squares line's rise across those samples: what a leak adds, where the spread (max -
    min) also holds the allocator's ups and downs as models are swapped in and out."""
    second = [s for s in samples if s.t >= half_t]
    if not second:
        return {"samples": 0}
    rss = [s.rss_mib for s in second]
    fds = [s.fds for s in second]
    return {
        "samples": len(second),
        "rss_median_mib": round(statistics.median(rss), 1),
        "rss_spread_mib": round(max(rss) - min(rss), 1),
        "rss_growth_mib": round(_growth([s.t for s in second], rss), 1),
        "rss_first_last_mib": [round(rss[0], 1), round(rss[-1], 1)],
        "fds_min_max": [min(fds), max(fds)],
        "fd_spread": max(fds) - min(fds),
    }


def _growth(ts: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` over ``ts``, times the span of ``ts``."""
    if len(ts) < 2 or ts[-1] == ts[0]:
        return 0.0
    mean_t, mean_y = statistics.fmean(ts), statistics.fmean(ys)
    slope = sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True)) / sum(
        (t - mean_t) ** 2 for t in ts
    )
    return slope * (ts[-1] - ts[0])


def check_flat(
    samples: Sequence[ProcSample], half_t: float, rss_band: float = RSS_BAND, fd_band: int = FD_BAND
) -> list[str]:
    """Criterion 4: over the second half, RSS grows (least-squares) by less than ``rss_band`` x
    its median, and fds max - min <= ``fd_band``. At least two samples are needed to say
    anything."""
    f = flatness(samples, half_t)
    if f["samples"] < 2:
        return [f"{f['samples']} settled sample(s) in the second half: run longer"]
    bad = []
    if f["rss_growth_mib"] >= rss_band * f["rss_median_mib"]:
        bad.append(
            f"RSS grew {f['rss_growth_mib']} MiB >= {rss_band:.0%} of the median "
            f"{f['rss_median_mib']} MiB (first, last {f['rss_first_last_mib']})"
        )
    if f["fd_spread"] > fd_band:
        bad.append(f"open fds {f['fds_min_max'][0]}..{f['fds_min_max'][1]}: spread > {fd_band}")
    return bad


def check_exit(rc: int | None, seconds: float | None, bound_s: float) -> list[str]:
    """Criterion 5: exit status 0 within ``bound_s`` of SIGTERM."""
    if rc is None or seconds is None:
        return [f"still running {bound_s:g} s after SIGTERM (killed)"]
    bad = []
    if rc != 0:
        bad.append(f"exit status {rc}")
    if seconds > bound_s:
        bad.append(f"exited {seconds:.1f} s after SIGTERM > {bound_s:g} s")
    return bad


def check_traced(spans: int) -> list[str]:
    """Criterion 6: tracing really ran."""
    return [] if spans > 0 else ["the collector received no span"]


# -- all of them --------------------------------------------------------------------------------


def judge(
    result: dict[str, Any],
    answers: Sequence[Answer],
    observations,
    models_by_digest,
    swaps,
    settled,
    half_t: float,
    spans: int,
) -> list[dict[str, Any]]:
    model_bad, model_figures = check_models(answers, observations, models_by_digest)
    result["model_check"] = model_figures
    checks = [
        ("statuses in the documented set", check_statuses(answers)),
        ("every 200 from the model the card named", model_bad),
        ("swaps seen, broken files refused", check_swaps(swaps, observations, models_by_digest)),
        (
            f"RSS growth < {RSS_BAND:.0%} of median, fds spread <= {FD_BAND} (second half, "
            "settled)",
            check_flat(settled, half_t),
        ),
        (
            f"SIGTERM: exit 0 within {result['exit_bound_s']:g} s",
            check_exit(result["exit_status"], result["exit_s"], result["exit_bound_s"]),
        ),
        ("spans received", check_traced(spans)),
    ]
    return [
        {"check": name, "ok": not bad, "problems": bad[:20], "more": max(0, len(bad) - 20)}
        for name, bad in checks
    ]

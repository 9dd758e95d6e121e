"""The chaos soak's results: the figures of one run, ``chaos.json`` and ``chaos.md``."""

from __future__ import annotations

import bisect
import dataclasses
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.chaos_models import Model
from bench.chaos_process import SAMPLE_EVERY_S
from bench.chaos_swaps import CARD_POLL_S
from bench.chaos_traffic import (
    BASE_LOAD,
    CANCELS_PER_S,
    HOSTILE_PER_S,
    OVERLOAD,
    SCAN_BOMB_EVERY_S,
    SHARES,
)
from bench.chaos_verdict import (
    AT_TERM,
    FD_BAND,
    KINDS,
    RSS_BAND,
    RUN,
    Answer,
    ProcSample,
    flatness,
)
from bench.common import ROOT, describe_cpu
from bench.config import Chaos as ChaosConfig
from bench.run_record import RunClock

if TYPE_CHECKING:
    from bench.chaos import Chaos, Outcome


def counts(answers: Sequence[Answer]) -> dict[str, dict[str, int]]:
    """{protocol: {answer key: count}} and {kind: {key: count}}."""
    by_protocol: dict[str, Counter[str]] = {}
    for a in answers:
        by_protocol.setdefault(KINDS[a.kind][0], Counter())[a.key] += 1
    return {p: dict(sorted(c.items())) for p, c in sorted(by_protocol.items())}


def by_kind(answers: Sequence[Answer]) -> dict[str, dict[str, int]]:
    out: dict[str, Counter[str]] = {}
    for a in answers:
        out.setdefault(a.kind, Counter())[a.key] += 1
    return {k: dict(sorted(c.items())) for k, c in sorted(out.items())}


def good_by_window(
    answers: Sequence[Answer], windows: Sequence[tuple[float, float]]
) -> dict[str, dict[str, int]]:
    """The good requests' answers, by whether they were sent in an overload window."""
    starts = [w[0] for w in windows]
    out: dict[str, Counter[str]] = {"base": Counter(), "overload": Counter()}
    for a in answers:
        if a.kind.endswith("_good") and a.phase == RUN:
            i = bisect.bisect_right(starts, a.started) - 1
            inside = i >= 0 and a.started < windows[i][1]
            out["overload" if inside else "base"][a.key] += 1
    return {w: dict(sorted(c.items())) for w, c in out.items()}


def series_summary(series: Sequence[ProcSample]) -> dict[str, Any]:
    if not series:
        return {}
    rss = [s.rss_mib for s in series]
    fds = [s.fds for s in series]
    return {
        "samples": len(series),
        "every_s": SAMPLE_EVERY_S,
        "rss_mib_first_min_median_max_last": [
            round(x, 1) for x in (rss[0], min(rss), statistics.median(rss), max(rss), rss[-1])
        ],
        "fds_first_min_max_last": [fds[0], min(fds), max(fds), fds[-1]],
    }


def scan_bomb_summary(rows: Sequence[tuple[str, str, float]]) -> dict[str, Any]:
    if not rows:
        return {"count": 0}
    secs = [s for _, _, s in rows]
    return {
        "count": len(rows),
        "answers": dict(Counter(k for _, k, _ in rows)),
        "seconds_median_max": [round(statistics.median(secs), 2), round(max(secs), 2)],
    }


# -- chaos.json ----------------------------------------------------------------------------------


def describe_run(
    outcome: Outcome, models: dict[str, Model], cfg: ChaosConfig, *, quick: bool, clock: RunClock
) -> dict[str, Any]:
    """What was run, where, and with which settings and models."""
    constants = {
        "base_load": BASE_LOAD,
        "overload": OVERLOAD,
        "shares": SHARES,
        "hostile_per_s": HOSTILE_PER_S,
        "cancels_per_s": CANCELS_PER_S,
        "scan_bomb_every_s": SCAN_BOMB_EVERY_S,
        "card_poll_s": CARD_POLL_S,
        "rss_band": RSS_BAND,
        "fd_band": FD_BAND,
    }
    return {
        **clock.meta(quick=quick, config=cfg, constants=constants, minutes=cfg.minutes),
        "server_env": {k: v for k, v in outcome.server_env.items() if k != "SWIN_MODEL_REPOSITORY"},
        "models": {
            m.id: {
                "file": str(m.path.relative_to(ROOT)),
                "digest": m.digest,
                "labels": sorted(m.labels),
            }
            for m in models.values()
        },
    }


def figures(chaos: Chaos) -> dict[str, Any]:
    """What the run's clients got, and what the card, the swaps and the samples showed."""
    traffic, repository = chaos.traffic, chaos.repository
    answers = traffic.answers
    return {
        "good_by_window": good_by_window(answers, chaos.overload_windows),
        "requests": len(answers),
        "sent": dict(sorted(traffic.sent.items())),
        "by_protocol": counts(answers),
        "by_kind": by_kind(answers),
        "cancels": dict(traffic.cancels),
        "transport_errors": dict(sorted(traffic.transport_errors.items())),
        "scan_bombs": scan_bomb_summary(traffic.scan_bomb_s),
        "card_reads": len(repository.observations),
        "card_read_failures": repository.card_failures,
        "swaps": [
            vars(s) | {"published": round(s.published - chaos.t0, 2)} for s in repository.swaps
        ],
    }


def build_results(outcome: Outcome, meta: dict[str, Any]) -> dict[str, Any]:
    """chaos.json, less the verdict."""
    chaos = outcome.chaos
    answers = chaos.traffic.answers
    return {
        "meta": meta,
        "capacity": round(chaos.capacity, 2),
        "classify_capacity": round(outcome.classify_capacity, 2),
        **figures(chaos),
        "spans": outcome.spans,
        "run_s": round(chaos.run_s, 1),
        "settled": [dataclasses.asdict(s) for s in chaos.settled],
        "flatness": flatness(chaos.settled, chaos.run_s / 2),
        "series": series_summary(chaos.series),
        "drain": {
            "in_flight_at_term": sum(a.phase == AT_TERM for a in answers),
            "answers_at_term": by_kind([a for a in answers if a.phase != RUN]),
        },
        **outcome.result,
    }


# -- chaos.md ------------------------------------------------------------------------------------


def render_markdown(results: dict[str, Any]) -> str:
    lines = markdown_head(results)
    lines += ["", "**Answers by protocol** (status and error code, or gRPC status)", ""]
    for protocol, c in results["by_protocol"].items():
        lines.append(f"- {protocol}: " + ", ".join(f"`{k}` {n}" for k, n in c.items()))
    lines += ["", "**Good requests by window**", ""]
    for window, c in results["good_by_window"].items():
        lines.append(f"- {window}: " + ", ".join(f"`{k}` {n}" for k, n in c.items()))
    lines += markdown_paragraphs(results)
    return "\n".join(lines) + "\n"


def markdown_head(results: dict[str, Any]) -> list[str]:
    """The run's setting, the verdict and the table of checks."""
    meta, machine, cfg = results["meta"], results["meta"]["machine"], results["meta"]["config"]
    lines = [
        "### Chaos soak",
        "",
        f"{machine['cpus']} CPUs: {describe_cpu(machine)}. Run of {meta['started']} "
        f"({meta['minutes']:g} min asked, {results['run_s']:.0f} s of chaos; load average "
        f"{machine['loadavg_at_start']} at its start). Capacity for the good mix "
        f"~{results['capacity']:.1f} images/s (`/classify` alone ~{results['classify_capacity']:.1f}); "
        f"good load {BASE_LOAD:g}x, and {OVERLOAD:g}x for {cfg['overload_s']:g} s of every "
        f"{cfg['cycle_s']:g} s cycle.",
        "",
        f"**Verdict: {'PASS' if results['passed'] else 'FAIL'}**",
        "",
        "| Check | Result | Problems |",
        "|---|---|---|",
    ]
    for c in results["checks"]:
        problems = "; ".join(c["problems"]) + (f"; and {c['more']} more" if c["more"] else "")
        lines.append(f"| {c['check']} | {'ok' if c['ok'] else 'FAIL'} | {problems or '-'} |")
    return lines


def markdown_paragraphs(results: dict[str, Any]) -> list[str]:
    """Models, swaps, tracing, the process, the exit, cancels and scan bombs: one line each."""
    m, sw = results["model_check"], results["swaps"]
    swaps = [s for s in sw if s["kind"] == "swap"]
    broken = [s for s in sw if s["kind"] != "swap"]
    seen = [s["seconds"] for s in swaps if s["observed"]]
    flat, series = results["flatness"], results["series"]
    return [
        "",
        f"**Models.** {m.get('checked', 0)} served answers checked against the card "
        f"({results['card_reads']} reads, every {CARD_POLL_S:g} s); "
        f"{m.get('straddled_a_swap', 0)} straddled a swap (either model allowed).",
        "",
        f"**Swaps.** {len(swaps)} swaps, publish to card in "
        f"{min(seen, default=0):.2f}..{max(seen, default=0):.2f} s; {len(broken)} broken files "
        f"({', '.join(s['kind'] for s in broken) or 'none'}), "
        f"{sum(s['observed'] for s in broken)} refused; "
        f"{sum(s['during_overload'] for s in sw)} of the {len(sw)} changes in an overload window.",
        "",
        f"**Tracing.** {results['spans']['spans']} spans in {results['spans']['exports']} exports.",
        "",
        f"**Process** (second half, {flat.get('samples', 0)} settled samples): RSS median "
        f"{flat.get('rss_median_mib')} MiB, spread {flat.get('rss_spread_mib')} MiB; fds "
        f"{flat.get('fds_min_max')}. Every {SAMPLE_EVERY_S:g} s under load, first / min / median "
        f"/ max / last: RSS {series.get('rss_mib_first_min_median_max_last')} MiB, fds (first, "
        f"min, max, last) {series.get('fds_first_min_max_last')}.",
        "",
        f"**Exit.** SIGTERM with {results['drain']['in_flight_at_term']} requests in flight: "
        f"exit status {results['exit_status']} after {results['exit_s']} s "
        f"(bound {results['exit_bound_s']:g} s).",
        "",
        f"**Cancels.** Clients that gave up: {results['cancels']}; the server counted "
        f"{results['server_counts']['client_disconnected_499']:.0f} 499 `client_disconnected`.",
        "",
        f"**Scan bombs.** {results['scan_bombs']}.",
    ]

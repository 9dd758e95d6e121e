"""Two things loaded in turn, round after round, the order alternating (so that a machine whose
speed drifts favours neither): the rounds, and their summary as medians over rounds and the
median of the per-round ratios (not the ratio of the medians: each round's two runs share that
moment's machine). Used by protocols (two paths), tracing (off, on) and baseline (base, head)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import median
from bench.server_process import Server

FIGURES = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_s_per_request", "mean_batch_size")


def alternate(pair: tuple[str, ...], index: int) -> tuple[str, ...]:
    """The order round ``index`` (from 0) loads ``pair`` in: alternately each first."""
    return pair if index % 2 == 0 else pair[::-1]


def throughput_ratio(runs: dict[str, dict[str, Any]], pair: tuple[str, str]) -> float | None:
    """pair[1] / pair[0] throughput of one round, to 4 places; None when pair[0] did nothing."""
    base = runs[pair[0]]["throughput_rps"]
    return round(runs[pair[1]]["throughput_rps"] / base, 4) if base else None


def is_clean(run: dict[str, Any]) -> bool:
    """Every answer a 200 and no socket error (an uncounted non-200 is not clean either)."""
    return run["error_count"] == 0 and run.get("non_200") == 0


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(median(values), 4) if values else None


def per_side(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The median over ``rounds`` of each figure of side ``name``, and its every throughput."""
    runs = [r["runs"][name] for r in rounds]
    return {
        **{k: median_of(runs, k) for k in FIGURES},
        "throughput_all_rounds": [r["throughput_rps"] for r in runs],
    }


def ratios(rounds: list[dict[str, Any]], pair: tuple[str, ...]) -> dict[str, Any]:
    """The median of the per-round ratios, all of them, and the runs that were not clean."""
    every = [r["ratio"] for r in rounds if r["ratio"] is not None]
    return {
        "ratio": round(median(every), 4) if every else None,
        "ratio_all_rounds": every,
        "unclean_runs": sum(not is_clean(r["runs"][n]) for r in rounds for n in pair),
    }


def server_rounds(
    servers: dict[str, Server], pair: tuple[str, str], script: Path, *, cfg, ratio, **load: Any
) -> list[dict[str, Any]]:
    """``cfg.rounds`` rounds of ``cfg.duration_s`` runs, each of the two ``servers`` loaded
    alone (bench.service.load_in_turn); ``ratio(runs)`` is each round's figure."""
    from bench.service import load_in_turn

    done = []
    for i in range(cfg.rounds):
        order = alternate(pair, i)
        label = f"round {i + 1}/{cfg.rounds}"
        runs = load_in_turn(servers, order, script, duration_s=cfg.duration_s, label=label, **load)
        done.append({"round": i + 1, "order": list(order), "runs": runs, "ratio": ratio(runs)})
    return done

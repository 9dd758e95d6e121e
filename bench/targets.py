"""Results -> the targets the benchmarks page reports: each a figure from one run, with its bar.

Pure given the results dict, so it is unit-tested without timing anything. A figure the run did
not measure is NOT RUN, with the reason, never a guess.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Any

from bench.common import interpolate_log2, median
from bench.loadgen import unexpected_answers

OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt}
# Swin-T fp32's resident memory under load that the service must stay within, in MB.
PEAK_RSS_MB = 810.0
IDLE_CPU_PCT = 2.0  # of one core
LITSERVE = "litserve"  # the prefix of every LitServe configuration's server name


def _img_s(results: dict[str, Any], runtime: str, batch: int) -> float | None:
    try:
        return results["engine"]["runtimes"][runtime]["batches"][str(batch)]["img_per_s"]
    except (KeyError, TypeError):
        return None


def _level(results: dict[str, Any], server: str, c: int) -> dict[str, Any] | None:
    try:
        return results["service"]["servers"][server]["levels"][str(c)]
    except (KeyError, TypeError):
        return None


def _target(
    tid: str,
    name: str,
    measured: float | None,
    threshold: float,
    detail: str,
    extra_ok=True,
    op: str = ">=",
) -> dict[str, Any]:
    """One target row: PASS when ``measured op threshold`` holds (and ``extra_ok``)."""
    row = {"id": tid, "name": name, "op": op, "threshold": threshold, "detail": detail}
    if measured is None:
        return {**row, "measured": None, "status": "NOT RUN"}
    met = OPS[op](measured, threshold) and extra_ok
    return {**row, "measured": round(measured, 3), "status": "PASS" if met else "MISS"}


def paired_ratio(results: dict[str, Any], fast: str, slow: str, batch: int) -> float | None:
    """img/s of ``fast`` over ``slow`` at ``batch``: the median of the per-repetition ratios.

    Each repetition timed both runtimes back to back, so a ratio within one repetition cancels
    the machine's load of that moment; the median then drops the repetitions a burst upset.
    Falls back to the ratio of the medians when the samples do not pair up.
    """
    try:
        a = results["engine"]["runtimes"][fast]["batches"][str(batch)]
        b = results["engine"]["runtimes"][slow]["batches"][str(batch)]
    except (KeyError, TypeError):
        return None
    sa, sb = a.get("samples_ms") or [], b.get("samples_ms") or []
    if sa and len(sa) == len(sb):
        return median([tb / ta for ta, tb in zip(sa, sb, strict=True)])
    return a["img_per_s"] / b["img_per_s"]


def compute_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets the benchmarks page reports, each from this one run."""
    return [
        *_engine_targets(results),
        _service_vs_engine(results),
        _service_vs_peer(results),
        _c1_latency(results),
        _v2_vs_classify(results),
        *peer_targets(results),
        *precision_targets(results),
    ]


def auto_precision(results: dict[str, Any]) -> str | None:
    """What the default service (SWIN_PRECISION=auto) ran at, as the run recorded it."""
    servers = (results.get("service") or {}).get("servers") or {}
    return ((servers.get("service") or {}).get("info") or {}).get("precision")


def fp32_server(results: dict[str, Any]) -> str | None:
    """The service at fp32: its own server, or the default one where auto chose fp32."""
    servers = (results.get("service") or {}).get("servers") or {}
    if "service_fp32" in servers:
        return "service_fp32"
    return "service" if auto_precision(results) == "fp32" else None


def precision_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The service at fp32 (its CPU layout) and at auto against LitServe's best fp32
    configuration and against fp32, all from the same interleaved run."""
    fp32, auto = fp32_server(results), auto_precision(results)
    rows = [
        _vs_best_litserve(results, fp32, 1, 1.0, "fp32_c1_vs_litserve", "fp32"),
        _vs_best_litserve(results, fp32, 16, 0.95, "fp32_c16_vs_litserve", "fp32"),
    ]
    label = f"auto ({auto})" if auto else "auto"
    rows.append(_vs_best_litserve(results, "service", 16, 1.6, "auto_c16_vs_litserve", label))
    name = f"service at {label} p50 at c=1 / the fp32 service's"
    rss_name = f"service at {label} peak RSS / the fp32 service's"
    if auto == "fp32" or not fp32:
        why = "auto is fp32 on this CPU" if auto == "fp32" else "no fp32 service in this run"
        rows += [
            _target("auto_c1_p50_vs_fp32", name, None, 0.65, why, op="<="),
            _target("auto_rss_vs_fp32", rss_name, None, 1.15, why, op="<="),
        ]
        return rows
    mine, ref = _level(results, "service", 1), _level(results, fp32, 1)
    servers = results["service"]["servers"]
    p50 = mine["p50_ms"] / ref["p50_ms"] if mine and ref else None
    rows.append(
        _target(
            "auto_c1_p50_vs_fp32",
            name,
            p50,
            0.65,
            f"p50 {mine['p50_ms']:.1f} vs {ref['p50_ms']:.1f} ms" if p50 else "c=1 not run",
            op="<=",
        )
    )
    rss = servers["service"]["peak_rss_mb"], servers[fp32]["peak_rss_mb"]
    rows.append(
        _target(
            "auto_rss_vs_fp32",
            rss_name,
            rss[0] / rss[1],
            1.15,
            f"{rss[0]:.0f} vs {rss[1]:.0f} MB, the largest of every run",
            op="<=",
        )
    )
    return rows


def _vs_best_litserve(
    results: dict[str, Any], server: str | None, c: int, threshold: float, tid: str, label: str
) -> dict[str, Any]:
    name = f"service at {label} / best LitServe configuration (fp32) throughput at c={c}"
    svc, best = (_level(results, server, c) if server else None), best_litserve(results, c)
    if not (svc and best and best[1]["throughput_rps"]):
        why = "" if svc else f"no service at {label} run at c={c}; "
        why += "" if best else f"no LitServe configuration run at c={c}"
        return _target(tid, name, None, threshold, why.rstrip("; "))
    ratio, how = paired_throughput(svc, best[1])
    return _target(
        tid,
        name,
        ratio,
        threshold,
        f"best: {best[0]}; {how}; shown runs {svc['throughput_rps']:.2f} vs "
        f"{best[1]['throughput_rps']:.2f} req/s; p50 {svc['p50_ms']:.0f} vs "
        f"{best[1]['p50_ms']:.0f} ms, p99 {svc['p99_ms']:.0f} vs {best[1]['p99_ms']:.0f} ms",
    )


def _engine_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    engine = results.get("engine", {})
    threads = engine.get("threads", "?")
    eager8, fp32_8, int8_8 = (
        _img_s(results, r, 8) for r in ("torch_eager", "ort_fp32", "ort_int8")
    )
    targets = [
        _target(
            "ort_vs_eager",
            f"ORT fp32 / PyTorch eager img/s at batch 8, {threads} thread(s) (the service's setting)",
            paired_ratio(results, "ort_fp32", "torch_eager", 8),
            1.3,
            f"medians {fp32_8} vs {eager8} img/s; median of per-repetition ratios",
        )
    ]
    all_ort = next((k for k in engine.get("runtimes", {}) if k.startswith("ort_fp32_t")), None)
    if all_ort:
        n = all_ort.rsplit("_t", 1)[1]
        targets.append(
            _target(
                "ort_vs_eager_all_cpus",
                f"ORT fp32 / PyTorch eager img/s at batch 8, {n} threads (every CPU)",
                paired_ratio(results, all_ort, f"torch_eager_t{n}", 8),
                1.3,
                f"medians {_img_s(results, all_ort, 8)} vs {_img_s(results, f'torch_eager_t{n}', 8)} img/s",
            )
        )
    targets.append(
        _target(
            "int8_vs_fp32",
            "ORT int8 / ORT fp32 img/s at batch 8",
            paired_ratio(results, "ort_int8", "ort_fp32", 8),
            1.3,
            f"medians {int8_8} vs {fp32_8} img/s{_agreement(engine.get('int8_agreement', {}))}",
        )
    )
    return targets


def _agreement(agreement: dict[str, Any]) -> str:
    if not agreement:
        return ""
    cos = agreement.get("cosine_min", {}).get("logits")
    return (
        f"; int8 vs fp32 on {agreement.get('images')} images: top-1 agreement "
        f"{agreement.get('top1_agreement'):.3f}, top-5 overlap {agreement.get('top5_overlap'):.3f}, "
        f"min logits cosine {cos:.5f}"
    )


def _service_vs_engine(results: dict[str, Any]) -> dict[str, Any]:
    svc16 = _level(results, "service", 16)
    curve = results.get("engine", {}).get("runtimes", {}).get("ort_fp32", {}).get("batches", {})
    fp32_curve = {int(b): v["img_per_s"] for b, v in curve.items()}
    name = "service c=16 / raw ORT fp32 engine at the batcher's mean batch size"
    probe = (svc16 or {}).get("engine_probe") or {}
    if svc16 and svc16.get("mean_batch_size") and probe.get("img_per_s"):
        return _target(
            "service_vs_engine",
            name,
            svc16["throughput_rps"] / probe["img_per_s"],
            0.85,
            f"{svc16['throughput_rps']:.2f} req/s at mean batch {svc16['mean_batch_size']:.2f} vs "
            f"engine {probe['img_per_s']:.2f} img/s at batch {probe['batch']}, measured right "
            "after that load run",
        )
    if svc16 and svc16.get("mean_batch_size") and fp32_curve:
        mb = svc16["mean_batch_size"]
        engine_at = interpolate_log2(fp32_curve, mb)
        return _target(
            "service_vs_engine",
            name,
            svc16["throughput_rps"] / engine_at,
            0.85,
            f"{svc16['throughput_rps']:.2f} req/s vs engine {engine_at:.2f} img/s at mean batch "
            f"{mb:.2f} (engine table)",
        )
    return _target("service_vs_engine", name, None, 0.85, "")


def _service_vs_peer(results: dict[str, Any]) -> dict[str, Any]:
    svc16, peer16 = _level(results, "service", 16), _level(results, "peer", 16)
    name = "service / naive peer throughput at c=16, with a lower p99"
    if not (svc16 and peer16 and peer16["throughput_rps"]):
        return _target("service_vs_peer", name, None, 1.5, "")
    lower_p99 = svc16["p99_ms"] < peer16["p99_ms"]
    ratio, how = paired_throughput(svc16, peer16)
    return _target(
        "service_vs_peer",
        name,
        ratio,
        1.5,
        f"{how}; shown runs {svc16['throughput_rps']:.2f} vs {peer16['throughput_rps']:.2f} req/s; p99 "
        f"{svc16['p99_ms']:.0f} vs {peer16['p99_ms']:.0f} ms ({'lower' if lower_p99 else 'NOT lower'})",
        extra_ok=lower_p99,
    )


def paired_throughput(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, str]:
    """Throughput of level ``a`` over level ``b``, and how it was taken.

    Both servers were loaded back to back in each repetition, so the median of the
    per-repetition ratios cancels the machine's drift, as for the engines; else the shown runs.
    """
    reps_a, reps_b = a.get("throughput_all_reps"), b.get("throughput_all_reps")
    if reps_a and reps_b and len(reps_a) == len(reps_b) and all(reps_b):
        ratio = median([x / y for x, y in zip(reps_a, reps_b, strict=True)])
        return ratio, "median of per-repetition ratios"
    return a["throughput_rps"] / b["throughput_rps"], "shown runs"


def _c1_latency(results: dict[str, Any]) -> dict[str, Any]:
    engine = results.get("engine", {})
    svc1 = _level(results, "service", 1)
    name = "service p50 at c=1 within 1.2x (engine batch-1 latency + decode)"
    probe1 = (svc1 or {}).get("engine_probe") or {}
    lat1, decode, where = probe1.get("latency_ms"), probe1.get("decode_ms"), "measured right after"
    if lat1 is None:
        where = "engine table"
        decode = engine.get("decode_ms")
        with contextlib.suppress(KeyError, TypeError):
            lat1 = engine["runtimes"]["ort_fp32"]["batches"]["1"]["latency_ms"]
    if not (svc1 and lat1 is not None and decode is not None):
        return _target("c1_latency", name, None, 1.0, "")
    budget = lat1 + decode
    # Expressed as 1.2 * budget / p50 so that, like the others, >= threshold passes.
    return _target(
        "c1_latency",
        name,
        1.2 * budget / svc1["p50_ms"],
        1.0,
        f"p50 {svc1['p50_ms']:.1f} ms vs 1.2 x ({lat1:.1f} + {decode:.1f}) = {1.2 * budget:.1f} ms "
        f"({where}); p50 / (engine + decode) = {svc1['p50_ms'] / budget:.2f}",
    )


def _v2_vs_classify(results: dict[str, Any]) -> dict[str, Any]:
    prot = results.get("protocols") or {}
    name = "v2 infer (binary BYTES image, classification 5) / /classify (raw JPEG, top_k 5) req/s at c=16"
    if prot.get("ratio") is None:
        return _target("v2_vs_classify", name, None, 0.95, "")
    paths = prot["paths"]
    unclean, same = prot.get("unclean_runs", 0), prot.get("answers", {}).get("same_top", False)
    problems = [f"{unclean} run(s) with a non-200 or socket error: INVALID"] if unclean else []
    problems += [] if same else ["the two paths' top 5 differ: INVALID"]
    return _target(
        "v2_vs_classify",
        name,
        prot["ratio"],
        0.95,
        f"median of {len(prot['ratio_all_rounds'])} per-round ratios; medians "
        f"{paths['v2_binary']['throughput_rps']:.2f} vs {paths['classify']['throughput_rps']:.2f} "
        f"req/s; p99 {paths['v2_binary']['p99_ms']:.0f} vs {paths['classify']['p99_ms']:.0f} ms"
        + "".join(f"; {p}" for p in problems),
        extra_ok=not problems,
    )


def peer_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The service against the best engine and LitServe configurations, and its footprint."""
    return [
        _c1_vs_engine_all_cpus(results),
        _vs_litserve(results, 1, 1.0),
        _c16_vs_best_engine(results),
        _vs_litserve(results, 16, 1.05, lower_p99=True),
        _peak_rss(results),
        _idle_cpu(results),
        _c64_answers(results),
    ]


def best_litserve(results: dict[str, Any], c: int) -> tuple[str, dict[str, Any]] | None:
    """(name, level) of the LitServe configuration with the highest throughput at ``c`` clients."""
    servers = (results.get("service") or {}).get("servers") or {}
    levels = [
        (name, s["levels"][str(c)])
        for name, s in servers.items()
        if name.startswith(LITSERVE) and str(c) in s["levels"]
    ]
    return max(levels, key=lambda nl: nl[1]["throughput_rps"], default=None)


def all_cpus_engine(results: dict[str, Any]) -> tuple[str, int] | None:
    """(runtime, threads) of ORT fp32 run with every CPU, if the engine benchmark has it."""
    engine = results.get("engine") or {}
    runtimes = engine.get("runtimes") or {}
    key = next((k for k in runtimes if k.startswith("ort_fp32_t")), None)
    if key:
        return key, int(key.rsplit("_t", 1)[1])
    cpus = engine.get("cpus") or (results.get("meta") or {}).get("machine", {}).get("cpus")
    if "ort_fp32" in runtimes and cpus and engine.get("threads") == cpus:
        return "ort_fp32", cpus
    return None


def _c1_vs_engine_all_cpus(results: dict[str, Any]) -> dict[str, Any]:
    svc1 = _level(results, "service", 1)
    engine = all_cpus_engine(results)
    threads = f" ({engine[1]} threads)" if engine else ""
    name = f"service p50 at c=1 / (ORT fp32 batch-1 latency on every CPU{threads} + decode)"
    decode = (results.get("engine") or {}).get("decode_ms")
    lat1 = None
    if engine:
        with contextlib.suppress(KeyError, TypeError):
            lat1 = results["engine"]["runtimes"][engine[0]]["batches"]["1"]["latency_ms"]
    if not (svc1 and lat1 is not None and decode is not None):
        why = "" if svc1 else "service c=1 not run; "
        why += (
            ""
            if lat1 is not None
            else "the engine benchmark has no ORT fp32 batch-1 latency with every CPU; "
        )
        why += "" if decode is not None else "no decode time in the engine benchmark"
        return _target("c1_vs_engine_all_cpus", name, None, 1.1, why.rstrip("; "), op="<=")
    budget = lat1 + decode
    return _target(
        "c1_vs_engine_all_cpus",
        name,
        svc1["p50_ms"] / budget,
        1.1,
        f"p50 {svc1['p50_ms']:.1f} ms vs {lat1:.1f} + {decode:.1f} ms (engine table)",
        op="<=",
    )


def _vs_litserve(
    results: dict[str, Any], c: int, threshold: float, *, lower_p99: bool = False
) -> dict[str, Any]:
    tid = f"c{c}_vs_litserve"
    name = f"service / best LitServe configuration throughput at c={c}"
    name += ", with a lower p99" if lower_p99 else ""
    svc, best = _level(results, "service", c), best_litserve(results, c)
    if not (svc and best and best[1]["throughput_rps"]):
        why = "" if svc else f"service c={c} not run; "
        why += "" if best else f"no LitServe configuration run at c={c}"
        return _target(tid, name, None, threshold, why.rstrip("; "))
    peer_name, peer = best
    ratio, how = paired_throughput(svc, peer)
    p99_ok = svc["p99_ms"] < peer["p99_ms"]
    detail = (
        f"best: {peer_name}; {how}; shown runs {svc['throughput_rps']:.2f} vs "
        f"{peer['throughput_rps']:.2f} req/s; p99 {svc['p99_ms']:.0f} vs {peer['p99_ms']:.0f} ms"
    )
    if lower_p99:
        detail += f" ({'lower' if p99_ok else 'NOT lower'})"
    return _target(tid, name, ratio, threshold, detail, extra_ok=p99_ok or not lower_p99)


def _c16_vs_best_engine(results: dict[str, Any]) -> dict[str, Any]:
    svc16 = _level(results, "service", 16)
    name = (
        "service c=16 / best ORT fp32 engine configuration (service's threads, every CPU, or "
        "single-threaded runs side by side; any batch)"
    )
    runtimes = (results.get("engine") or {}).get("runtimes") or {}
    keys = {"ort_fp32"} | {k for k in runtimes if k.startswith("ort_fp32_x")}
    if every_cpu := all_cpus_engine(results):
        keys.add(every_cpu[0])
    candidates = [
        (v["img_per_s"], runtimes[key]["label"], b)
        for key in sorted(keys & runtimes.keys())
        for b, v in runtimes[key]["batches"].items()
    ]
    if not (svc16 and candidates):
        why = "" if svc16 else "service c=16 not run; "
        why += "" if candidates else "no ORT fp32 figures in the engine benchmark"
        return _target("c16_vs_best_engine", name, None, 0.95, why.rstrip("; "))
    best, label, batch = max(candidates)
    return _target(
        "c16_vs_best_engine",
        name,
        svc16["throughput_rps"] / best,
        0.95,
        f"{svc16['throughput_rps']:.2f} req/s vs {best:.2f} img/s ({label}, batch {batch}; engine "
        "table)",
    )


def _footprint(results: dict[str, Any], key: str, digits: int) -> tuple[float | None, str]:
    """The service's ``key`` (a per-server figure), and the peers' beside it for the detail."""
    servers = (results.get("service") or {}).get("servers") or {}
    peers = ", ".join(
        f"{name} {s[key]:.{digits}f}"
        for name, s in servers.items()
        if name != "service" and s.get(key) is not None
    )
    return (servers.get("service") or {}).get(key), f"; peers: {peers}" if peers else ""


def _peak_rss(results: dict[str, Any]) -> dict[str, Any]:
    label = f"service peak RSS under load, MB (Swin-T fp32; at most {PEAK_RSS_MB:g})"
    measured = "largest sampled over every load run"
    figure = ("peak_rss_mb", 0, PEAK_RSS_MB, "<=")  # the bar may be reached
    return _footprint_target(results, "peak_rss", figure, label, measured)


def _idle_cpu(results: dict[str, Any]) -> dict[str, Any]:
    label = f"service idle CPU, % of a core (under {IDLE_CPU_PCT:g})"
    measured = "after the warm-up, no load"
    figure = ("idle_cpu_pct", 1, IDLE_CPU_PCT, "<")
    return _footprint_target(results, "idle_cpu", figure, label, measured)


def _footprint_target(
    results: dict[str, Any],
    name: str,
    figure: tuple[str, int, float, str],
    label: str,
    measured: str,
) -> dict[str, Any]:
    """The service's ``figure`` (key, digits, bar, comparison) against its bar."""
    key, digits, bar, op = figure
    value, peers = _footprint(results, key, digits)
    detail = f"{measured}{peers}" if value is not None else "not recorded"
    return _target(name, label, value, bar, detail, op=op)


def _c64_answers(results: dict[str, Any]) -> dict[str, Any]:
    svc64 = _level(results, "service", 64)
    name = "service at c=64: answers other than 200 and 503, plus socket errors (every repetition)"
    if not svc64:
        return _target("c64_answers", name, None, 0, "service c=64 not run", op="<=")
    counts = svc64.get("unexpected_all_reps") or [unexpected_answers(svc64)]
    if None in counts:
        return _target(
            "c64_answers", name, None, 0, "this run did not count answers by status", op="<="
        )
    statuses = svc64.get("statuses") or {}
    return _target(
        "c64_answers",
        name,
        sum(counts),
        0,
        f"shown run: {statuses.get('200', 0)} x 200, {statuses.get('503', 0)} x 503; how fast the "
        "503s came is not measured apart from the 200s",
        op="<=",
    )

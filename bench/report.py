"""Results -> target figures (ratios from one run), a Markdown report, two PNG plots, the section
of the benchmarks page (docs/benchmarks.md) between the bench markers.

Everything here is pure given the results dict, so it is unit-tested without timing anything.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any

from bench.common import interpolate_log2, median

BENCH_PAGE = Path("docs/benchmarks.md")  # relative to the repository root
BENCH_HEADING = "## Engines and service"  # the generated section goes under it
BENCH_START = "<!-- bench:start -->"
BENCH_END = "<!-- bench:end -->"
ENGINE_PLOT = "engine_throughput.png"
SERVICE_PLOT = "service_latency_throughput.png"


def describe_cpu(machine: dict[str, Any]) -> str:
    """The CPU model and, when the run recorded them, its vector instruction sets."""
    model = machine.get("cpu_model", "?")
    features = machine.get("cpu_features")
    return (
        f"{model}; {', '.join(features) or 'no AVX2 or newer'}" if features is not None else model
    )


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
    tid: str, name: str, measured: float | None, threshold: float, detail: str, extra_ok=True
) -> dict[str, Any]:
    if measured is None:
        return {
            "id": tid,
            "name": name,
            "measured": None,
            "threshold": threshold,
            "status": "NOT RUN",
            "detail": detail,
        }
    return {
        "id": tid,
        "name": name,
        "measured": round(measured, 3),
        "threshold": threshold,
        "status": "PASS" if measured >= threshold and extra_ok else "MISS",
        "detail": detail,
    }


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
    """The targets the benchmarks page reports, each a ratio from this one run."""
    return [
        *_engine_targets(results),
        _service_vs_engine(results),
        _service_vs_peer(results),
        _c1_latency(results),
        _v2_vs_classify(results),
    ]


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
    ratio = svc16["throughput_rps"] / peer16["throughput_rps"]
    reps_s, reps_p = svc16.get("throughput_all_reps"), peer16.get("throughput_all_reps")
    how = "shown runs"
    if reps_s and reps_p and len(reps_s) == len(reps_p) and all(reps_p):
        # Both were loaded back to back in each repetition: pair them, as for the engines.
        ratio = median([a / b for a, b in zip(reps_s, reps_p, strict=True)])
        how = "median of per-repetition ratios"
    return _target(
        "service_vs_peer",
        name,
        ratio,
        1.5,
        f"{how}; shown runs {svc16['throughput_rps']:.2f} vs {peer16['throughput_rps']:.2f} req/s; p99 "
        f"{svc16['p99_ms']:.0f} vs {peer16['p99_ms']:.0f} ms ({'lower' if lower_p99 else 'NOT lower'})",
        extra_ok=lower_p99,
    )


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


def engine_table(results: dict[str, Any]) -> str:
    runtimes = results.get("engine", {}).get("runtimes", {})
    if not runtimes:
        return "_engine benchmark not run_\n"
    batches = sorted({int(b) for r in runtimes.values() for b in r["batches"]})
    head = "| runtime | " + " | ".join(f"b={b}" for b in batches) + " |\n"
    head += "|---|" + "---:|" * len(batches) + "\n"
    rows = []
    for r in runtimes.values():
        cells = []
        for b in batches:
            v = r["batches"].get(str(b))
            cells.append(f"{v['img_per_s']:.2f}" if v else "")
        rows.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def service_table(results: dict[str, Any]) -> str:
    servers = results.get("service", {}).get("servers", {})
    if not servers:
        return "_service benchmark not run_\n"
    out = [
        "| server | clients | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch | server CPU s/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    levels = sorted({int(c) for s in servers.values() for c in s["levels"]})
    for c in levels:
        for name, s in servers.items():
            v = s["levels"].get(str(c))
            if not v:
                continue
            mb = v.get("mean_batch_size")
            cpu = v.get("server_cpu_s_per_request")
            out.append(
                f"| {name} | {c} | {v['throughput_rps']:.2f} | {v['p50_ms']:.0f} | "
                f"{v['p95_ms']:.0f} | {v['p99_ms']:.0f} | {v['error_count']} | "
                f"{f'{mb:.2f}' if mb else '-'} | {f'{cpu:.3f}' if cpu is not None else '-'} |"
            )
    return "\n".join(out) + "\n"


def breakdown_table(results: dict[str, Any]) -> str:
    servers = results.get("service", {}).get("servers", {})
    svc = servers.get("service")
    if not svc:
        return ""
    out = [
        "| clients | decode ms/img | queue wait ms/img | inference ms/batch | in-server ms/req | wrk p50 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c, v in sorted(svc["levels"].items(), key=lambda kv: int(kv[0])):
        b = v.get("server_breakdown_ms") or {}

        def f(x):
            return "-" if x is None else f"{x:.1f}"

        out.append(
            f"| {c} | {f(b.get('decode_per_image'))} | {f(b.get('queue_wait_per_image'))} | "
            f"{f(b.get('inference_per_batch'))} | {f(b.get('request_in_server'))} | {v['p50_ms']:.1f} |"
        )
    return "\n".join(out) + "\n"


def protocols_section(results: dict[str, Any]) -> str:
    prot = results.get("protocols") or {}
    if not prot.get("rounds"):
        return ""
    meta = prot.get("meta") or results.get("meta", {})
    machine = meta.get("machine", {})
    config = meta.get("config", {})
    out = [
        "\n### Open Inference Protocol (v2) vs /classify (same server, same JPEG, interleaved)\n\n",
        f"Run {meta.get('started', '?')} ({meta.get('mode', '?')} mode), {machine.get('cpus', '?')} "
        f"CPUs ({describe_cpu(machine)}), load average at start "
        f"{machine.get('loadavg_at_start', '?')}. One `python -m service` (ORT fp32, defaults), "
        f"{prot.get('body', '?')}, wrk with {prot.get('connections')} closed-loop clients, "
        f"{len(prot['rounds'])} rounds of {config.get('duration_s', '?')} s per path after a "
        "warm-up of each; each round loads both paths back to back, which one goes first "
        "alternating. Figures per path are medians over the rounds; the ratio is the median of "
        "the per-round ratios. `python -m bench protocols` reruns this comparison alone.\n\n",
        "| path | request | req/s | p50 ms | p99 ms | server CPU s/req | mean batch |\n",
        "|---|---|---:|---:|---:|---:|---:|\n",
    ]
    for name, v in prot["paths"].items():
        route = prot.get("routes", {}).get(name, {})
        out.append(
            f"| {name} | `{route.get('path', '?')}`: {route.get('label', '')} | "
            f"{v['throughput_rps']:.2f} | {v['p50_ms']:.0f} | {v['p99_ms']:.0f} | "
            f"{_num(v.get('server_cpu_s_per_request'), 3)} | {_num(v.get('mean_batch_size'), 2)} |\n"
        )
    out += [
        "\n| round | first | classify req/s | v2_binary req/s | v2 / classify "
        "| other processes, cores (classify / v2) | non-200 + socket errors |\n",
        "|---:|---|---:|---:|---:|---:|---:|\n",
    ]
    for r in prot["rounds"]:
        runs = r["runs"]
        errors = sum(_failed(v) for v in runs.values())
        out.append(
            f"| {r['round']} | {r['order'][0]} | {runs['classify']['throughput_rps']:.2f} | "
            f"{runs['v2_binary']['throughput_rps']:.2f} | {_num(r['ratio'], 3)} | "
            f"{_num(runs['classify'].get('others_cores'), 2)} / "
            f"{_num(runs['v2_binary'].get('others_cores'), 2)} | {errors} |\n"
        )
    top = prot.get("answers", {}).get("top", {})
    out.append(
        f"\nv2 / classify throughput: **{prot['ratio']:.3f}** (median of "
        f"{', '.join(f'{x:.3f}' for x in prot['ratio_all_rounds'])}). Checked before the load: "
        f"both paths answer 200 with the top 5 {top.get('classify')} (classify) and "
        f"{top.get('v2_binary')} (v2).\n"
    )
    return "".join(out)


def _failed(run: dict[str, Any]) -> int:
    """Requests without a 200: socket errors plus non-200 answers (wrk's >= 400 count if the
    script did not count them)."""
    non_200 = run["non_2xx"] if run.get("non_200") is None else run["non_200"]
    return run["error_count"] - run["non_2xx"] + non_200


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def targets_table(targets: list[dict[str, Any]]) -> str:
    out = ["| target | measured | needed | result | detail |", "|---|---:|---:|---|---|"]
    for t in targets:
        m = "-" if t["measured"] is None else f"{t['measured']:.2f}"
        out.append(
            f"| {t['name']} | {m} | >= {t['threshold']} | **{t['status']}** | {t.get('detail', '')} |"
        )
    return "\n".join(out) + "\n"


def render_markdown(results: dict[str, Any], *, image_prefix: str = "", notes: str = "") -> str:
    """The report; ``image_prefix`` makes plot links relative to where the Markdown lives.

    ``notes`` (bench/results/NOTES.md, written by a person after looking at a run) is included
    as the analysis: the reasons behind misses cannot be generated.
    """
    meta = results.get("meta", {})
    targets = results.get("targets") or compute_targets(results)
    machine = meta.get("machine", {})
    parts = [
        "`make bench` (`python -m bench`; `python -m bench --quick` is a smoke run of a few "
        "minutes) benchmarks the engines, the HTTP service against a naive FastAPI + PyTorch "
        "peer, and `/classify` against the Open Inference Protocol's v2 infer, and regenerates "
        "this section from `bench/results/`.\n\n",
        f"Run {meta.get('started', '?')} ({meta.get('mode', '?')} mode, {meta.get('seconds', 0):.0f} s), "
        f"{machine.get('cpus', '?')} CPUs ({describe_cpu(machine)}), load average at start "
        f"{machine.get('loadavg_at_start', '?')}. Swin-T 224, random weights, the same in every "
        f"runtime. Every figure below is from this one run{_own_run_note(results)}; ratios are "
        "what to compare, since the machine is shared and absolute times drift.\n",
        "\n### Targets\n\n",
        targets_table(targets),
        "\n### Engine: images/s by batch size (median of interleaved repetitions)\n\n",
        engine_table(results),
        _engine_notes(results),
        "\n### Service vs naive peer (same JPEG, same run, interleaved)\n\n",
        service_table(results),
        _service_notes(results),
        protocols_section(results),
        _profile_section(results),
    ]
    if notes:
        parts.append(f"\n### Analysis\n\n{notes.strip()}\n")
    parts.append(
        f"\n![engine]({image_prefix}{ENGINE_PLOT}) ![service]({image_prefix}{SERVICE_PLOT})\n"
    )
    return "".join(parts)


def _own_run_note(results: dict[str, Any]) -> str:
    """Where the v2 comparison was measured in a run of its own (``python -m bench protocols``)."""
    own = (results.get("protocols") or {}).get("meta") or {}
    if own and own.get("started") != results.get("meta", {}).get("started"):
        return f" but the v2 comparison, measured on {own.get('started')}"
    return ""


def _engine_notes(results: dict[str, Any]) -> str:
    engine = results.get("engine", {})
    if not engine:
        return ""
    return (
        f"\n{engine.get('threads')} thread(s) per run for every CPU runtime, as the service runs "
        "its model (ORT intra-op threads = CPUs - 1; torch.set_num_threads the same); rows "
        "marked 'N threads' use every CPU. Decode + preprocess of the benchmark JPEG "
        f"({engine.get('decode_image', '?')}): {engine.get('decode_ms', 0):.1f} ms. "
        f"GPU: {engine.get('gpu', 'not run')}.\n"
    )


def _service_notes(results: dict[str, Any]) -> str:
    service = results.get("service", {})
    if not service:
        return ""
    return "".join(
        [
            "\nClosed-loop clients, each with one request in flight; the median-throughput "
            "repetition is shown. Errors are non-2xx answers (the service's 503s past its "
            "5 s default deadline) plus socket errors. Server CPU s/req is the server process's "
            "CPU time over the run divided by the requests answered.\n",
            f"\n{service.get('pinning', '')} Load generator: {service.get('loadgen', '')}.\n",
            "\nWhere a request's time goes in the service (its /metrics, same runs):\n\n",
            breakdown_table(results),
        ]
    )


def _profile_section(results: dict[str, Any]) -> str:
    prof = results.get("profile", {})
    if not prof:
        return ""
    parts = ["\n### Profile\n"]
    spy = prof.get("service_pyspy", {})
    if spy.get("share"):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in spy["share"].items())
        parts.append(
            f"\npy-spy, server Python threads under c=16 ({spy['samples']} samples): {shares}.\n"
        )
    ort_p = prof.get("engine_ort", {})
    if ort_p.get("share"):
        top = list(ort_p["share"].items())[:8]
        shares = ", ".join(f"{k} {v:.0%}" for k, v in top)
        parts.append(
            f"\nONNX Runtime profiler, fp32 batch {ort_p['batch']} ({ort_p['intra_op_threads']} "
            f"threads), kernel time by operator: {shares}.\n"
        )
    return "".join(parts)


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Two PNGs; none when matplotlib is missing (the `bench` extra installs it), said loudly,
    since the PNGs left from an earlier run would then sit beside newer tables."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "bench: matplotlib is missing, so the plots were NOT redrawn and show an earlier run"
            " (make bench installs it)",
            file=sys.stderr,
        )
        return []
    written = []
    runtimes = results.get("engine", {}).get("runtimes", {})
    if runtimes:
        written.append(_plot_engine(plt, runtimes, out_dir / ENGINE_PLOT))
    servers = results.get("service", {}).get("servers", {})
    if servers:
        written.append(_plot_service(plt, servers, out_dir / SERVICE_PLOT))
    return written


def _plot_engine(plt, runtimes: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    for r in runtimes.values():
        bs = sorted(int(b) for b in r["batches"])
        ax.plot(bs, [r["batches"][str(b)]["img_per_s"] for b in bs], marker="o", label=r["label"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title("Swin-T 224 engine throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_service(plt, servers: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5.2), dpi=90)
    for s in servers.values():
        cs = sorted(int(c) for c in s["levels"])
        xs = [s["levels"][str(c)]["throughput_rps"] for c in cs]
        ys = [s["levels"][str(c)]["p99_ms"] for c in cs]
        ax.plot(xs, ys, marker="o", label=re.sub(r"=\S*/", "=", s["label"]))
        for c, x, y in zip(cs, xs, ys, strict=True):
            ax.annotate(f"c={c}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests / s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("End to end: JPEG upload -> top-5 (labels: clients)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def replace_bench_section(page: str, section: str) -> str:
    """Put ``section`` between the bench markers; add the markers under BENCH_HEADING if absent."""
    block = f"{BENCH_START}\n{section.rstrip()}\n{BENCH_END}"
    if BENCH_START in page and BENCH_END in page:
        pattern = re.compile(re.escape(BENCH_START) + r".*?" + re.escape(BENCH_END), re.S)
        return pattern.sub(lambda _: block, page, count=1)
    heading = re.search(rf"^{re.escape(BENCH_HEADING)}[^\n]*\n", page, re.M)
    if heading is None:
        raise ValueError(f"{BENCH_PAGE} has no '{BENCH_HEADING}' heading to put the section under")
    # After the heading's first paragraph (the hand-written intro), before the next heading.
    nxt = re.search(r"^## ", page[heading.end() :], re.M)
    end = heading.end() + (nxt.start() if nxt else len(page) - heading.end())
    body = page[heading.end() : end].strip("\n")
    intro = f"\n{body}\n\n" if body else "\n"
    return page[: heading.end()] + intro + block + "\n\n" + page[end:]

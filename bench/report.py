"""Results -> a Markdown report (targets from bench.targets, tables) and two PNG plots named for
the run's machine; bench.page puts the report on the benchmarks page.

Everything here is pure given the results dict, so it is unit-tested without timing anything.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

from bench.common import describe_cpu, machine_fingerprint
from bench.loadgen import unexpected_answers
from bench.targets import compute_targets

ENGINE_PLOT = "engine_throughput"
SERVICE_PLOT = "service_latency_throughput"


def plot_names(results: dict[str, Any]) -> tuple[str, str]:
    """The two PNGs' file names, which name the run's machine: the benchmarks page keeps other
    machines' sections, and their plots must stay beside them."""
    key = machine_fingerprint(results.get("meta", {}).get("machine", {}))
    tag = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{ENGINE_PLOT}-{tag}.png", f"{SERVICE_PLOT}-{tag}.png"


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


def servers_table(results: dict[str, Any]) -> str:
    servers = results.get("service", {}).get("servers", {})
    if not servers:
        return ""
    out = [
        "| server | what | idle CPU, % of a core | peak RSS under load, MB |",
        "|---|---|---:|---:|",
    ]
    for name, s in servers.items():
        out.append(
            f"| {name} | {s['label']} | {_num(s.get('idle_cpu_pct'), 1)} | "
            f"{_num(s.get('peak_rss_mb'), 0)} |"
        )
    return "\n".join(out) + "\n\n"


def service_table(results: dict[str, Any]) -> str:
    servers = results.get("service", {}).get("servers", {})
    if not servers:
        return "_service benchmark not run_\n"
    out = [
        "| server | clients | req/s | p50 ms | p95 ms | p99 ms | 503 | other errors | mean batch "
        "| server CPU s/req | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    levels = sorted({int(c) for s in servers.values() for c in s["levels"]})
    for c in levels:
        for name, s in servers.items():
            v = s["levels"].get(str(c))
            if not v:
                continue
            mb = v.get("mean_batch_size")
            out.append(
                f"| {name} | {c} | {v['throughput_rps']:.2f} | {v['p50_ms']:.0f} | "
                f"{v['p95_ms']:.0f} | {v['p99_ms']:.0f} | {_answers(v)} | "
                f"{f'{mb:.2f}' if mb else '-'} | {_num(v.get('server_cpu_s_per_request'), 3)} | "
                f"{_num(v.get('peak_rss_mb'), 0)} |"
            )
    return "\n".join(out) + "\n"


def _answers(run: dict[str, Any]) -> str:
    """The 503 and other-errors cells; a run that did not count answers by status has every
    error in the second (as its table had them)."""
    unexpected = unexpected_answers(run)
    if unexpected is None:
        return f"- | {run['error_count']}"
    return f"{(run.get('statuses') or {}).get('503', 0)} | {unexpected}"


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
        f"{machine.get('loadavg_at_start', '?')}. One `swin-serve` (ORT fp32, defaults), "
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
        needed = f"{t.get('op', '>=')} {t['threshold']}"
        out.append(f"| {t['name']} | {m} | {needed} | **{t['status']}** | {t.get('detail', '')} |")
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
        "minutes) benchmarks the engines, the HTTP service against its peers (a naive FastAPI + "
        "PyTorch server and LitServe), and `/classify` against the Open Inference Protocol's v2 "
        "infer, and regenerates this machine's section from `bench/results/`.\n\n",
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
        "\n### Service vs peers (same JPEG, same preprocessing, same run, interleaved)\n\n",
        servers_table(results),
        service_table(results),
        _service_notes(results),
        protocols_section(results),
        _profile_section(results),
    ]
    if notes:
        parts.append(f"\n### Analysis\n\n{notes.strip()}\n")
    engine_png, service_png = plot_names(results)
    parts.append(
        f"\n![engine]({image_prefix}{engine_png}) ![service]({image_prefix}{service_png})\n"
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
        "its model (ORT intra-op threads = CPUs; torch.set_num_threads the same); the 'side by "
        "side' row runs one single-threaded session per CPU at once. Decode + preprocess of the benchmark JPEG "
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
            "repetition is shown. 503: the service's answer when overloaded (queue full, or "
            "past its 5 s default deadline). Other errors: every other answer that is not a 200, "
            "plus socket errors (connect, read, write, timeout); there should be none. A run "
            "that did not count answers by status shows `-` for 503 and every error under other "
            "errors. ",
            _measurement_note(service),
            f"\n\n{service.get('pinning', '')} Load generator: {service.get('loadgen', '')}.\n",
            "\nWhere a request's time goes in the service (its /metrics, same runs):\n\n",
            breakdown_table(results),
        ]
    )


def _measurement_note(service: dict[str, Any]) -> str:
    """How server CPU (and, where recorded, memory and idle use) were measured in this run."""
    if not any("idle_cpu_pct" in s for s in service.get("servers", {}).values()):
        # Runs from before peers with worker processes: the one process, servers not frozen.
        return (
            "Server CPU s/req is the server process's CPU time over the run divided by the "
            "requests answered."
        )
    return (
        "Server CPU s/req is the CPU time of the server's whole process tree over the run "
        "divided by the requests answered; peak RSS is the largest resident memory of that tree "
        "(VmRSS added over its processes, so memory they share counts once per process), "
        "sampled every 0.2 s during the run and its drain. Idle CPU is the tree's CPU use with "
        "no load, after the warm-up. Servers not under load are frozen (SIGSTOP) meanwhile, so "
        "that one polling while idle takes nothing from the server measured."
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
    engine_png, service_png = plot_names(results)
    runtimes = results.get("engine", {}).get("runtimes", {})
    if runtimes:
        written.append(_plot_engine(plt, runtimes, out_dir / engine_png))
    servers = results.get("service", {}).get("servers", {})
    if servers:
        written.append(_plot_service(plt, servers, out_dir / service_png))
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

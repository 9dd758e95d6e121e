"""``python -m bench tracing``: what OpenTelemetry tracing costs the server under load.

Two servers of the same model: *off*, with no OTEL_* variable at all (the default, today's
server), and *on*, tracing every request (``OTEL_TRACES_SAMPLER=always_on``) through the SDK's
OTLP/HTTP exporter to a collector that this process runs on the loopback interface
(``SpanSink``: it decodes each export and counts its spans, as a collector must, and keeps
nothing). The OTEL_* variables of the shell running the benchmark reach neither server.

Both run for the whole benchmark and are loaded in turn by the same wrk, ``CONNECTIONS`` clients
POSTing the benchmark JPEG to ``/classify``, the one not under load frozen (SIGSTOP). Each round
loads both, the order alternating between rounds (off first, then on first, ...) so that a
machine whose speed drifts favours neither; the overhead is one minus the median over rounds of
each round's on / off throughput. The issue's budget: under 3 %.

That tracing really ran, and only where asked: the sink must have received spans, one
``POST /classify`` span per ``/classify`` request the *on* server answered (by its own
``swin_requests_total``) and ``model run`` spans linked to them; and the *off* server's latency
histograms must carry no trace-id exemplar while the *on* server's do (both scraped as
OpenMetrics at the end). A run that fails any of these is INVALID.

Results: ``tracing.json`` and ``tracing.md`` in bench/results/ (``--quick``: raw/quick/).
Times are in seconds unless a name says ``_ms``.
"""

from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from bench import span_cost
from bench.common import (
    RESULTS_DIR,
    SAMPLE_IMAGE,
    describe_cpu,
    machine_fingerprint,
    progress,
    read_json,
)
from bench.config import TRACING, Tracing
from bench.interleaved import alternate, per_side, ratios, server_rounds, throughput_ratio
from bench.loadgen import lua_script
from bench.run_record import Run, RunClock, write_results
from bench.server_process import Server, measure_idle
from bench.service import running, service_server, warm_up_each
from bench.span_sink import SpanSink, without_inherited_otel

OFF, ON = "off", "on"
MODES = (OFF, ON)
CONNECTIONS = 16
BUDGET = 0.03  # the issue's: tracing on costs under 3 % of the throughput
CLASSIFY_SPAN = "POST /classify"  # the server span of each request the load sends
RUN_SPAN = "model run"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
SPAN_WAIT_S = 15.0  # three times the SDK's default export interval


# -- the servers -------------------------------------------------------------------------------


def tracing_env(endpoint: str) -> dict[str, str]:
    """The *on* server's variables: every request traced, exported over OTLP/HTTP to ``endpoint``."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def read_exposition(text: str) -> dict[str, int]:
    """From an OpenMetrics exposition: ``exemplars``, the samples whose exemplar carries a
    ``trace_id``, and ``classify``, the ``/classify`` requests the server answered (any status)."""
    exemplars = classify = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.exemplar is not None and "trace_id" in sample.exemplar.labels:
                exemplars += 1
            if (
                sample.name == "swin_requests_total"
                and sample.labels.get("endpoint") == "/classify"
            ):
                classify += int(sample.value)
    return {"exemplars": exemplars, "classify": classify}


def scrape_openmetrics(server: Server) -> dict[str, int]:
    """``read_exposition`` of the server's /metrics now, asked for as OpenMetrics."""
    request = urllib.request.Request(f"{server.base}/metrics", headers={"Accept": OPENMETRICS})
    with urllib.request.urlopen(request, timeout=10) as r:
        content_type = r.headers.get("Content-Type", "")
        text = r.read().decode()
    if not content_type.startswith("application/openmetrics-text"):
        raise RuntimeError(f"{server.name}: /metrics answered {content_type!r}, not OpenMetrics")
    return read_exposition(text)


# -- the summary -------------------------------------------------------------------------------


def round_order(index: int) -> tuple[str, ...]:
    """The modes in the order round ``index`` (from 0) loads them: alternately each first."""
    return alternate(MODES, index)


def ratio(runs: dict[str, dict[str, Any]]) -> float | None:
    """On / off throughput of one round."""
    return throughput_ratio(runs, MODES)


def summarise(rounds: list[dict[str, Any]], budget: float = BUDGET) -> dict[str, Any]:
    """Per mode the median over rounds of each figure, and its peak RSS; the median of the
    per-round ratios, and whether it is within ``budget``."""
    modes = {}
    for mode in MODES:
        peaks = (r["runs"][mode].get("peak_rss_mb") or 0.0 for r in rounds)
        modes[mode] = {**per_side(rounds, mode), "peak_rss_mb": max(peaks, default=None)}
    summary = ratios(rounds, MODES)
    middle = summary["ratio"]
    return {
        "modes": modes,
        **summary,
        "overhead_pct": None if middle is None else round(100 * (1 - middle), 2),
        "budget_pct": round(100 * budget, 2),
        "within_budget": None if middle is None else middle >= 1 - budget,
    }


def problems(result: dict[str, Any]) -> list[str]:
    """Why a run does not show what it claims: tracing that did not run where asked, ran where
    not asked, lost spans, or load that was not all answered 200."""
    sink, exemplars = result["sink"], result["exemplars"]
    out = []
    if sink["spans"] == 0:
        out.append("the collector received no span from the on server")
    if sink["refused_exports"]:
        out.append(f"the collector could not decode {sink['refused_exports']} export(s)")
    if sink["by_name"].get(RUN_SPAN, 0) == 0 or sink["links"] == 0:
        out.append(f"no {RUN_SPAN!r} span, or no span link, reached the collector")
    coverage = result["classify_coverage"]
    if coverage != 1:
        out.append(
            f"{CLASSIFY_SPAN!r} spans per /classify request the on server answered: {coverage}"
        )
    if exemplars[OFF]:
        out.append(f"the off server's histograms carry {exemplars[OFF]} trace exemplar(s)")
    if not exemplars[ON]:
        out.append("the on server's histograms carry no trace exemplar")
    if result["unclean_runs"]:
        out.append(f"{result['unclean_runs']} run(s) had a non-200 answer or a socket error")
    return out


def today_reference(path: Path, machine: dict[str, Any]) -> dict[str, Any] | None:
    """``make bench``'s c=16 figure of the service from ``path`` (results.json), if that run was
    on a machine like this one: what *off* must equal."""
    if not path.is_file():
        return None
    results = read_json(path)
    meta = results.get("meta", {})
    if machine_fingerprint(meta.get("machine", {})) != machine_fingerprint(machine):
        return None
    try:
        level = results["service"]["servers"]["service"]["levels"][str(CONNECTIONS)]
    except KeyError:
        return None
    return {
        "started": meta.get("started"),
        "throughput_rps": level["throughput_rps"],
        "p99_ms": level["p99_ms"],
    }


# -- the run -----------------------------------------------------------------------------------


def run_tracing_benchmark(
    servers: dict[str, Server],
    sink: SpanSink,
    *,
    cfg: Tracing,
    loadgen_cpus: list[int] | None,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """Warm both servers up, then ``cfg.rounds`` interleaved rounds; ``sink`` must be running
    and ``servers[ON]`` exporting to it."""
    both = list(servers.values())
    with tempfile.TemporaryDirectory(prefix="bench-otel-") as tmp:
        script = Path(tmp) / "post_jpeg.lua"
        script.write_text(lua_script(SAMPLE_IMAGE))
        with running(both):
            load = {"connections": connections, "loadgen_cpus": loadgen_cpus}
            warm_up_each(servers, script, duration_s=cfg.warmup_s, **load)
            idle = measure_idle(both, cfg.idle_s)
            progress(
                "idle CPU, % of a core: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in idle.items())
            )
            done = server_rounds(servers, MODES, script, cfg=cfg, ratio=ratio, **load)
            # Every run ended with the server idle: no request is in flight any more.
            scraped = {mode: scrape_openmetrics(s) for mode, s in servers.items()}
            answered = scraped[ON]["classify"]
            # The exporter sends every few seconds (OTEL_BSP_SCHEDULE_DELAY): wait while the on
            # server runs, rather than count on its flush at exit.
            sink.wait_for(CLASSIFY_SPAN, answered, timeout_s=SPAN_WAIT_S)
            logs = {mode: s.tail(1500) for mode, s in servers.items()}
    spans = sink.summary()
    classify = spans["by_name"].get(CLASSIFY_SPAN, 0)
    return {
        "connections": connections,
        **summarise(done),
        "rounds": done,
        "sink": spans,
        # Its own count (swin_requests_total), warm-up included: wrk's leaves out the requests
        # still in flight at its deadline, which the server answers, and traces, after it.
        "classify_answered_on": answered,
        "classify_coverage": round(classify / answered, 4) if answered else None,
        "exemplars": {mode: figures["exemplars"] for mode, figures in scraped.items()},
        "log_tail": logs,
    }


def render_markdown(results: dict[str, Any]) -> str:
    meta, run = results["meta"], results["tracing"]
    machine = meta["machine"]
    modes, sink = run["modes"], run["sink"]

    def fmt(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    verdict = "INVALID" if run["problems"] else ("PASS" if run["within_budget"] else "OVER BUDGET")
    lines = [
        "### Tracing overhead (Swin-T, c=16)",
        "",
        f"{machine['cpus']} CPUs: {describe_cpu(machine)}. Run of {meta['started']} "
        f"({meta['mode']}, load average {machine['loadavg_at_start']} at its start).",
        "",
        f"Two servers, loaded in turn by one wrk ({run['connections']} closed-loop clients, "
        f"{SAMPLE_IMAGE.name} to `/classify`), {meta['config']['duration_s']:g} s a run, the "
        "order alternating between rounds. *off*: no OTEL_* variable. *on*: "
        + ", ".join(
            f"`{k}={v}`" for k, v in meta["on_env"].items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        + ", to an OTLP/HTTP collector on the loopback interface run by the benchmark.",
        "",
        "| Round | Order | off (req/s) | on (req/s) | on / off |",
        "|---|---|---|---|---|",
    ]
    for r in run["rounds"]:
        lines.append(
            f"| {r['round']} | {' then '.join(r['order'])} | "
            f"{r['runs'][OFF]['throughput_rps']:.2f} | {r['runs'][ON]['throughput_rps']:.2f} | "
            f"{fmt(r['ratio'], 4)} |"
        )
    lines += [
        "",
        "| Tracing | req/s | p50 (ms) | p99 (ms) | Mean batch | Server CPU s / request | "
        "Peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        m = modes[mode]
        lines.append(
            f"| {mode} (median of {len(run['rounds'])}) | {fmt(m['throughput_rps'], 2)} | "
            f"{fmt(m['p50_ms'], 0)} | {fmt(m['p99_ms'], 0)} | {fmt(m['mean_batch_size'], 2)} | "
            f"{fmt(m['server_cpu_s_per_request'], 3)} | {fmt(m['peak_rss_mb'], 0)} |"
        )
    today = results.get("today")
    lines += [
        "",
        f"**On / off throughput: {fmt(run['ratio'], 4)}** (median of the per-round ratios "
        f"{run['ratio_all_rounds']}): tracing costs {fmt(run['overhead_pct'], 1)} % "
        f"(budget {run['budget_pct']:g} %): **{verdict}**.",
        "",
        f"Off against today's server: `make bench` of {today['started']} measured "
        f"{today['throughput_rps']:.2f} req/s (p99 {today['p99_ms']:.0f} ms) at c=16 on this "
        "machine."
        if today
        else "Off against today's server: no `make bench` results of this machine to compare.",
        "",
        f"Spans the collector received: {sink['spans']} in {sink['exports']} exports "
        f"({', '.join(f'{n} {k!r}' for k, n in sink['by_name'].items()) or 'none'}), "
        f"{sink['links']} span links, from {', '.join(sink['services']) or 'no service'}; "
        f"{CLASSIFY_SPAN!r} spans per `/classify` request the on server answered "
        f"({run['classify_answered_on']}): {fmt(run['classify_coverage'], 3)}. Trace exemplars "
        "in /metrics: off "
        f"{run['exemplars'][OFF]}, on {run['exemplars'][ON]}.",
    ]
    lines += span_cost_lines(run.get("span_cost"), modes[OFF]["server_cpu_s_per_request"])
    if run["problems"]:
        lines += ["", "**INVALID:** " + "; ".join(run["problems"]) + "."]
    return "\n".join(lines) + "\n"


def span_cost_lines(cost: dict[str, Any] | None, cpu_s_per_request: float | None) -> list[str]:
    """The CPU per request of tracing alone, and its share of what a request costs the server."""
    if not cost:
        return []
    on, off = cost["on"]["cpu_us_per_request"], cost["off"]["cpu_us_per_request"]
    share = ""
    if cpu_s_per_request:
        share = (
            f": {100 * (on - off) / (cpu_s_per_request * 1e6):.2f} % of the "
            f"{cpu_s_per_request * 1e3:.0f} ms of server CPU a request takes above"
        )
    return [
        "",
        f"CPU of one request's tracing, measured alone (`bench.span_cost`, {cost['on']['requests']}"
        f" requests, OTLP-encoded): on {on:.0f} µs, off {off:.1f} µs per request{share}. "
        f"{cost['on']['otlp_bytes_per_request']:.0f} bytes of OTLP per request.",
    ]


def main(run: Run, env: dict[str, str] | None = None) -> int:
    out_dir, quick, rounds = run.out_dir, run.quick, run.rounds
    server_cpus, loadgen_cpus = run.server_cpus, run.loadgen_cpus
    from bench.model_files import ensure_models

    cfg = TRACING.pick(quick, rounds=rounds)
    clock = RunClock()
    models = ensure_models()
    sink = SpanSink()
    with without_inherited_otel() as dropped, sink.running():
        if dropped:
            progress(f"not passed on to the servers: {', '.join(dropped)}")
        on_env = tracing_env(sink.endpoint)
        servers = {
            OFF: service_server(models.fp32, server_cpus, dict(env or {})),
            ON: service_server(models.fp32, server_cpus, {**(env or {}), **on_env}),
        }
        for mode, server in servers.items():
            server.name = f"service_{mode}"  # "service...": load_once reads its histograms
        progress(
            f"tracing: off vs on at c={CONNECTIONS}, {cfg.rounds} rounds of "
            f"{cfg.duration_s:g} s each; collector on {sink.endpoint}"
        )
        run = run_tracing_benchmark(servers, sink, cfg=cfg, loadgen_cpus=loadgen_cpus)
    run["problems"] = problems(run)
    progress("CPU of one request's spans, measured alone (bench.span_cost)")
    run["span_cost"] = span_cost.measure(1000 if quick else 5000)
    meta = clock.meta(
        quick=quick,
        config=cfg,
        constants={"connections": CONNECTIONS, "budget": BUDGET},
        on_env=on_env,
        server_cpus=server_cpus,
        loadgen_cpus=loadgen_cpus,
    )
    today = today_reference(RESULTS_DIR / "results.json", clock.machine)
    results = {"meta": meta, "today": today, "tracing": run}
    write_results(out_dir, "tracing", results, render_markdown(results))
    for problem in run["problems"]:
        progress(f"INVALID: {problem}")
    return 1 if run["problems"] else 0

"""``python -m bench [all|engine|service|protocols|profile|report]``: the suite behind
``make bench`` and its report.

``all`` = engine + service (against the naive peer and LitServe) + protocols (``/classify``
against the Open Inference Protocol's v2 infer, same server and image) + profile (full mode
only), then the report: ``results.json`` (raw figures), ``results.md`` (tables), two PNG plots,
and this machine's section of the benchmarks page (docs/benchmarks.md; other machines' sections
stay). A part run alone replaces its section of ``results.json`` and keeps the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from bench import common, report, targets
from bench import page as bench_page
from bench.common import (
    ROOT,
    SAMPLE_IMAGE,
    cpus,
    describe_cpu,
    machine_info,
    median,
    progress,
    write_json,
)
from bench.config import Suite, as_json

PARTS = ("engine", "service", "protocols", "profile")


def run_engine(cfg: Suite, threads: int, models) -> dict[str, Any]:
    from bench import engine_throughput as engine
    from bench.model_files import load_torch_reference

    cuda_reason = engine.cuda_unavailable_reason()
    if cuda_reason:
        progress(f"GPU runtimes skipped: {cuda_reason}")
    torch_model = load_torch_reference(models)
    runners = [
        engine.torch_runner(torch_model, threads),
        engine.ort_cpu_runner("ort_fp32", "ONNX Runtime fp32", models.fp32, threads),
        engine.ort_cpu_runner("ort_int8", "ONNX Runtime int8 (dynamic)", models.int8, threads),
    ]
    all_cpus = len(cpus())
    if all_cpus > threads:
        # Only with --threads below the CPU count: what every CPU would add to a model run.
        extra = engine.ort_cpu_runner(
            f"ort_fp32_t{all_cpus}", f"ONNX Runtime fp32, {all_cpus} threads", models.fp32, all_cpus
        )
        extra.batches = tuple(b for b in (1, 8) if b in cfg.batches)
        runners.append(extra)
        torch_all = engine.torch_runner(
            torch_model,
            all_cpus,
            f"torch_eager_t{all_cpus}",
            f"PyTorch eager fp32, {all_cpus} threads",
        )
        torch_all.batches = extra.batches
        runners.append(torch_all)
    if all_cpus > 1:
        side = engine.ort_side_by_side_runner(
            f"ort_fp32_x{all_cpus}",
            f"ONNX Runtime fp32, {all_cpus} single-threaded runs side by side",
            models.fp32,
            all_cpus,
        )
        side.batches = tuple(b for b in (1, 4, 8) if b in cfg.batches)
        runners.append(side)
    if not cuda_reason:
        from bench.model_files import ensure_fp16

        runners.append(engine.cuda_runner("cuda_fp32", "ORT CUDA fp32 (IO binding)", models.fp32))
        runners.append(
            engine.cuda_runner("cuda_fp16", "ORT CUDA fp16 (IO binding)", ensure_fp16(models))
        )
    for r in runners:
        if r.batches == engine.CPU_BATCHES:
            r.batches = tuple(cfg.batches)
    runners.append(decode_runner(models))
    progress(f"engine benchmark: {[r.name for r in runners]}, batches {cfg.batches}")
    res = engine.run_engine_benchmark(
        runners, reps=cfg.engine_reps, warmup=cfg.engine_warmup, min_images=cfg.min_images
    )
    decode = res.pop("decode")
    return {
        "threads": threads,
        "cpus": len(cpus()),  # the CPUs the engine ran on (the servers' share when pinned)
        "runtimes": res,
        "decode_ms": decode["batches"]["1"]["latency_ms"],
        "decode_image": f"{SAMPLE_IMAGE.name}, {SAMPLE_IMAGE.stat().st_size} bytes",
        "int8_agreement": models.int8_agreement(),
        "gpu": cuda_reason or "run",
    }


def decode_runner(models):
    """The service's decode + preprocess of the benchmark JPEG, timed interleaved with the engines."""
    from bench.engine_throughput import Runner
    from swin_serve.artifact.preprocess import decode_image

    data = SAMPLE_IMAGE.read_bytes()
    spec = models.manifest().preprocess
    return Runner(
        "decode",
        "JPEG decode + preprocess",
        lambda _x: decode_image(data, spec, max_pixels=40_000_000),
        (1,),
    )


def engine_probe(models, threads: int):
    """Raw ORT fp32 (the service's threads) and decode figures, taken between load runs."""
    from bench.engine_throughput import ort_session, probe_throughput

    session = ort_session(models.fp32, threads)
    decode = decode_runner(models).run

    def probe(concurrency: int, result: dict[str, Any]) -> dict[str, Any]:
        if concurrency not in (1, 16):  # the levels the targets compare
            return {}
        batch = max(1, round(result.get("mean_batch_size") or 1))
        img_s, per_call = probe_throughput(session, batch)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            decode(None)
            times.append(time.perf_counter() - t0)
        return {
            "batch": batch,
            "img_per_s": round(img_s, 3),
            "latency_ms": round(per_call * 1e3, 2),
            "decode_ms": round(median(times) * 1e3, 2),
        }

    return probe


def peer_names(n_cpus: int) -> list[str]:
    """Every peer the service benchmark can load: the naive one, then LitServe's configurations."""
    from bench.service import litserve_configs

    return ["peer", *(f"litserve_w{w}t{t}" for w, t in litserve_configs(n_cpus))]


def parse_peers(spec: str, n_cpus: int) -> list[str]:
    """``--peers``: ``all``, ``none`` or names from ``peer_names`` (``litserve``: all of its)."""
    known = peer_names(n_cpus)
    if spec == "all":
        return known
    chosen = []
    for name in filter(None, spec.split(",")):
        if name == "none":
            continue
        matches = [k for k in known if k == name or (name == "litserve" and k.startswith(name))]
        if not matches:
            raise SystemExit(
                f"--peers: {name!r} is none of all, none, litserve, {', '.join(known)}"
            )
        chosen += [m for m in matches if m not in chosen]
    return chosen


def peer_servers(names: list[str], models, server_cpus) -> list:
    from bench import service

    servers = []
    for name in names:
        if name == "peer":
            servers.append(service.peer_server(models.fp32_report, server_cpus))
        else:
            workers, threads = map(int, name.removeprefix("litserve_w").split("t"))
            servers.append(service.litserve_server(models.fp32, server_cpus, workers, threads))
    return servers


def run_service(
    cfg, models, server_cpus, loadgen_cpus, pinning, env, also=(), threads: int = 1, peers=()
) -> dict[str, Any]:
    from bench import service
    from bench.loadgen import wrk_path

    wrk = wrk_path()
    auto = service.auto_precision(models.fp32)
    default = service.service_server(
        models.fp32, server_cpus, env, f"swin-serve, defaults (SWIN_PRECISION=auto: {auto})"
    )
    default.info["precision"] = auto
    servers = [default, *service.precision_servers(models.fp32, server_cpus, env)]
    for name, extra_env in also:  # tuning candidates, loaded interleaved with the default
        s = service.service_server(models.fp32, server_cpus, {**env, **extra_env})
        s.name = f"service_{name}"
        s.label = f"swin-serve, {' '.join(f'{k}={v}' for k, v in extra_env.items())}"
        servers.append(s)
    servers += peer_servers(list(peers), models, server_cpus)
    progress(
        f"service benchmark: {[s.name for s in servers]}, concurrency {cfg.concurrency}, "
        f"{cfg.duration_s:g} s each"
    )
    res = service.run_service_benchmark(
        servers,
        SAMPLE_IMAGE,
        concurrency=tuple(cfg.concurrency),
        duration_s=cfg.duration_s,
        warmup_s=cfg.warmup_s,
        reps=cfg.service_reps,
        loadgen_cpus=loadgen_cpus,
        idle_s=cfg.idle_s,
        probe=engine_probe(models, threads),
    )
    return {
        "servers": res,
        "pinning": pinning,
        "loadgen": f"{wrk} -t1 (closed loop, raw image/jpeg body, Lua done() percentiles)",
        "body": SAMPLE_IMAGE.name,
    }


def run_protocols(cfg, models, server_cpus, loadgen_cpus, pinning, env) -> dict[str, Any]:
    from bench import protocols, service
    from bench.loadgen import wrk_path

    server = service.service_server(models.fp32, server_cpus, env)
    by_name = protocols.routes(SAMPLE_IMAGE.read_bytes(), models.manifest().name)
    progress(
        f"protocols: {' vs '.join(by_name)} at c={protocols.CONNECTIONS}, "
        f"{cfg.protocol_rounds} rounds of {cfg.duration_s:g} s each"
    )
    res = protocols.run_protocols_benchmark(
        server,
        by_name,
        rounds=cfg.protocol_rounds,
        duration_s=cfg.duration_s,
        warmup_s=cfg.warmup_s,
        loadgen_cpus=loadgen_cpus,
    )
    return {
        "pinning": pinning,
        "loadgen": f"{wrk_path()} -t1 (closed loop, prebuilt body, Lua done() percentiles)",
        "body": f"{SAMPLE_IMAGE.name}, {SAMPLE_IMAGE.stat().st_size} bytes",
        "server": server.label,
        **res,
    }


def run_profile(cfg, models, threads, server_cpus, loadgen_cpus, env) -> dict[str, Any]:
    import tempfile

    from bench import profile, service
    from bench.loadgen import lua_script

    progress("profiling the engine with the ONNX Runtime profiler (batch 8)")
    out: dict[str, Any] = {"engine_ort": profile.profile_engine(models.fp32, threads)}
    seconds = cfg.profile_s or 5.0
    server = service.service_server(models.fp32, server_cpus, env)
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp, service.running([server]):
        script = Path(tmp) / "post.lua"
        script.write_text(lua_script(SAMPLE_IMAGE))
        progress(f"py-spy on the service under c=16 for {seconds:g} s")
        out["service_pyspy"] = profile.profile_service(
            server, script, duration_s=seconds, loadgen_cpus=loadgen_cpus
        )
    return out


def parse_also(specs: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``NAME:SWIN_A=1,SWIN_B=2`` -> (NAME, {SWIN_A: 1, SWIN_B: 2})."""
    out = []
    for spec in specs:
        name, sep, pairs = spec.partition(":")
        if not sep or not name.isidentifier():
            raise SystemExit(f"--also wants NAME:SWIN_X=V[,SWIN_Y=W], got {spec!r}")
        out.append((name, parse_env(pairs.split(","))))
    return out


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key.startswith("SWIN_"):
            raise SystemExit(f"--service-env wants SWIN_NAME=value, got {p!r}")
        env[key] = value
    return env


def measure(args: argparse.Namespace, cfg: Suite, results: dict[str, Any]) -> None:
    """Run the part ``args.what`` names (every part for ``all``) into ``results``; the sections
    not run are kept."""
    from bench.model_files import ensure_models

    started = time.perf_counter()
    # Read before any work: the run's own load must not count as the load it started under.
    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_info()
    server_cpus, loadgen_cpus, pinning = common.plan_cpus()
    # The engine runs with the service's intra-op threads (one per CPU), and PyTorch gets the
    # same number.
    threads = args.threads or len(server_cpus or cpus())
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)  # the engine benchmark gets the server's cores
    env = parse_env(args.service_env)
    peers = parse_peers(args.peers, len(server_cpus or cpus()))
    models = ensure_models()
    if args.what in ("all", "engine"):
        results["engine"] = run_engine(cfg, threads, models)
    if args.what in ("all", "service"):
        also = parse_also(args.also)
        results["service"] = run_service(
            cfg, models, server_cpus, loadgen_cpus, pinning, env, also, threads, peers
        )
    if args.what in ("all", "protocols"):
        results["protocols"] = run_protocols(cfg, models, server_cpus, loadgen_cpus, pinning, env)
    if args.what == "profile" or (args.what == "all" and not args.quick):
        results["profile"] = run_profile(cfg, models, threads, server_cpus, loadgen_cpus, env)
    meta = {
        "started": started_at,
        "mode": "quick" if args.quick else "full",
        "what": args.what,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
        "config": as_json(cfg),
    }
    if args.what == "protocols":
        # A section of its own, with its own run description: the page's run line and the
        # engine and service tables it describes stay as they were measured.
        results["protocols"]["meta"] = meta
        results.setdefault("meta", meta)
    else:
        results["meta"] = meta


def write_report(results: dict[str, Any], out_dir: Path, *, page: bool) -> None:
    """results.json, the plots, results.md and, when ``page``, this machine's section of the
    benchmarks page (the sections of other machines stay)."""
    results["targets"] = targets.compute_targets(results)
    write_json(out_dir / "results.json", results)
    report.plot(results, out_dir)
    notes_path = out_dir / "NOTES.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    markdown = report.render_markdown(results, notes=notes)
    (out_dir / "results.md").write_text("# Benchmark results\n\n" + markdown)
    for t in results["targets"]:
        progress(f"{t['status']:<7} {t['name']}: {t['measured']} ({t['op']} {t['threshold']})")
    if page:
        path = ROOT / bench_page.BENCH_PAGE
        # The plots are linked relative to the page.
        prefix = Path(os.path.relpath(out_dir, path.parent)).as_posix() + "/"
        machine = results.get("meta", {}).get("machine", {})
        section = bench_page.machine_section(
            machine, report.render_markdown(results, image_prefix=prefix, notes=notes)
        )
        path.write_text(bench_page.replace_bench_section(path.read_text(), section, machine))
        progress(f"{bench_page.BENCH_PAGE} regenerated: the section of {describe_cpu(machine)}")
    progress(f"results in {out_dir}")

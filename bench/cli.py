"""``python -m bench [COMMAND] [--quick] ...``: the benchmark suite's commands.

``all`` (the default, what ``make bench`` runs) = engine + service + protocols + profile, then
the report (bench.suite). ``--quick`` is a smoke run of the same code in a few minutes; it
writes to ``bench/results/raw/quick/`` and leaves the benchmarks page alone. The other commands
are not part of ``all``; each writes its own ``NAME.json`` (and ``NAME.md``) in bench/results/.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench import page as bench_page
from bench.common import RESULTS_DIR, read_json
from bench.run_record import Run

SUITE_PARTS = {
    "all": "engine + service + protocols + profile, then the report",
    "engine": "the engines: PyTorch, ONNX Runtime fp32 and int8 (and CUDA), batch by batch",
    "service": "the HTTP service against its peers (the naive one and LitServe)",
    "protocols": "/classify against the Open Inference Protocol's v2 infer, interleaved at c=16",
    "profile": "where the time goes: py-spy on the service, ORT's profiler on the engine",
}


_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "out": (("--out",), {"type": Path, "default": None, "help": "results folder"}),
    "quick": (("--quick",), {"action": "store_true", "help": "smoke run: a few minutes"}),
    "threads": (
        ("--threads",),
        {"type": int, "default": 0, "help": "engine threads (0: as the service, one per CPU)"},
    ),
    "service-env": (
        ("--service-env",),
        {
            "action": "append",
            "default": [],
            "metavar": "SWIN_X=V",
            "help": "extra server setting for the service under test (repeatable)",
        },
    ),
    "also": (
        ("--also",),
        {
            "action": "append",
            "default": [],
            "metavar": "NAME:SWIN_X=V,...",
            "help": "also load a service with these settings, interleaved (repeatable)",
        },
    ),
    "concurrency": (
        ("--concurrency",),
        {
            "default": "",
            "metavar": "C[,C]",
            "help": "the client counts to load at (default 1,4,16,64; 1,16 with --quick)",
        },
    ),
    "peers": (
        ("--peers",),
        {
            "default": "all",
            "metavar": "NAME[,NAME]",
            "help": "the peers to load beside the service: all (default), none, peer (the naive "
            "one), litserve (every configuration) or litserve_wWtT names",
        },
    ),
    "rounds": (
        ("--rounds",),
        {"type": int, "default": 0, "help": "interleaved rounds, or swaps (0: the mode's)"},
    ),
    "no-page": (
        ("--no-page",),
        {"action": "store_true", "help": f"do not regenerate {bench_page.BENCH_PAGE}'s section"},
    ),
    "rev": (
        ("--rev",),
        {"default": "HEAD~1", "help": "the git revision to compare this tree with"},
    ),
    "minutes": (
        ("--minutes",),
        {"type": float, "default": None, "help": "how long the run lasts (30; 2 with --quick)"},
    ),
}
# The flags of each part of the suite; ``all`` takes every one of them.
_PART_FLAGS = {
    "engine": ("threads",),
    "service": ("threads", "service-env", "also", "concurrency", "peers"),
    "protocols": ("service-env", "rounds"),
    "profile": ("threads", "service-env"),
}
_SUITE_DEFAULTS = {"threads": 0, "service_env": [], "also": [], "concurrency": "", "peers": "all"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", metavar="COMMAND", required=True)
    every_part_flag = tuple(dict.fromkeys(sum(_PART_FLAGS.values(), ())))
    for name, help in SUITE_PARTS.items():
        flags = _PART_FLAGS.get(name, every_part_flag)
        part = _add(sub, name, help, run_suite, "out", "quick", *flags, "no-page")
        # measure() reads every part's flags; a part that takes none of some gets their defaults.
        part.set_defaults(**{k: v for k, v in _SUITE_DEFAULTS.items() if _flag(k) not in flags})
    for name, help, run, *flags in _COMMANDS:
        _add(sub, name, help, run, *flags)
    for name, (_module, help) in _TOOLS.items():
        sub.add_parser(name, help=f"{help} (its own options: {name} --help)")
    return parser


# Commands with a command line of their own, which `python -m bench NAME ...` hands over whole.
_TOOLS = {
    "soak": ("bench.soak", "the server under mixed good, bad and overload traffic for long"),
    "capacity": ("bench.capacity", "replicas needed for a request rate and a p99 target"),
    "quantization": ("bench.quantization", "int8 settings against fp32, on real photos"),
    "selfcheck-cost": ("bench.selfcheck_cost", "what the golden self-check adds to a start-up"),
}


def _flag(dest: str) -> str:
    return dest.replace("_", "-")


def _add(sub, name: str, help: str, run: Callable[[argparse.Namespace], int], *flags: str):
    """A subcommand that runs ``run(args)`` and takes the ``flags`` named in ``_FLAGS``."""
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(run=run)
    for flag in flags:
        args, kwargs = _FLAGS[flag]
        parser.add_argument(*args, **kwargs)
    return parser


def out_dir(args: argparse.Namespace) -> Path:
    """``--out``, else bench/results/ (``--quick``: its raw/quick/ folder), created."""
    path = args.out or (RESULTS_DIR / "raw" / "quick" if args.quick else RESULTS_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_suite(args: argparse.Namespace) -> int:
    from bench import suite
    from bench.config import SUITE

    concurrency = tuple(int(c) for c in getattr(args, "concurrency", "").split(",") if c)
    rounds = getattr(args, "rounds", 0)
    cfg = SUITE.pick(args.quick, protocol_rounds=rounds, concurrency=concurrency)
    out = out_dir(args)
    results_path = out / "results.json"
    results: dict[str, Any] = read_json(results_path) if results_path.exists() else {}
    if args.what != "report":
        suite.measure(args, cfg, results)
    if not results:
        print(f"no results in {results_path}; run the benchmark first", file=sys.stderr)
        return 1
    page = not args.quick and not args.no_page and out == RESULTS_DIR
    suite.write_report(results, out, page=page)
    return 0


def run_swap(args: argparse.Namespace) -> int:
    from bench import swap

    return swap.main(_run(args))


def run_tracing(args: argparse.Namespace) -> int:
    from bench import tracing_overhead
    from bench.suite import parse_env

    env = parse_env(args.service_env)
    return tracing_overhead.main(_run(args), env=env)


def run_baseline(args: argparse.Namespace) -> int:
    from bench.peers import baseline

    return baseline.main(_run(args), rev=args.rev)


def run_fine_tune(_args: argparse.Namespace) -> int:
    from bench import fine_tune

    return fine_tune.main()


def run_overload(args: argparse.Namespace) -> int:
    from bench import overload_refusal

    return overload_refusal.main(_run(args))


def run_chaos(args: argparse.Namespace) -> int:
    from bench import chaos

    return chaos.main(out_dir(args), quick=args.quick, minutes=args.minutes)


def _run(args: argparse.Namespace) -> Run:
    server_cpus, loadgen_cpus, _ = common.plan_cpus()
    rounds = getattr(args, "rounds", 0)
    return Run(out_dir(args), args.quick, rounds, server_cpus, loadgen_cpus)


_COMMANDS = (
    (
        "report",
        "results.md, the plots and the page from results.json",
        run_suite,
        "out",
        "quick",
        "no-page",
    ),
    ("swap", "a model swap under load, and memory per model", run_swap, "out", "quick", "rounds"),
    (
        "tracing",
        "what OpenTelemetry tracing costs at c=16",
        run_tracing,
        "out",
        "quick",
        "rounds",
        "service-env",
    ),
    (
        "baseline",
        "this tree's server against that of revision --rev, at c=16",
        run_baseline,
        "out",
        "quick",
        "rounds",
        "rev",
    ),
    ("fine-tune", "a trained model's accuracy through every served path", run_fine_tune),
    (
        "overload-refusal",
        "how fast the server refuses twice its capacity",
        run_overload,
        "out",
        "quick",
    ),
    (
        "chaos",
        "hostile traffic, swaps and overload together, then SIGTERM",
        run_chaos,
        "out",
        "quick",
        "minutes",
    ),
)


def _exit_on_signal(signum: int, _frame) -> None:
    # An exception, unlike the default action, runs the finally blocks that stop the servers.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _TOOLS:  # handed over whole, its --help included
        return importlib.import_module(_TOOLS[argv[0]][0]).main(argv[1:])
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["all", *argv]  # `python -m bench [--quick]`: the whole suite
    args = build_parser().parse_args(argv)
    if getattr(args, "rounds", 0) < 0:
        raise SystemExit(f"--rounds wants a positive number, got {args.rounds}")
    return args.run(args)

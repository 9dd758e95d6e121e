"""``python -m bench baseline --rev REV``: this tree's server against the server of an earlier
revision, on the same machine, model and load, in interleaved rounds at c=16.

Whether a change costs throughput is a ratio from one run: figures of runs an hour apart differ by
more than most changes on a shared machine. The revision is checked out into a temporary git
worktree and its server is run from there, with this tree's virtual environment (so only the
service's own code differs; a revision that needs other packages cannot be compared this way).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    SAMPLE_IMAGE,
    describe_cpu,
    machine_info,
    median,
    progress,
)
from bench.config import BASELINE, Interleaved, as_json
from bench.interleaved import server_rounds
from bench.loadgen import lua_script
from bench.run_record import Run, RunClock, write_results
from bench.server_process import Server
from bench.service import running, service_server, warm_up_each

CONNECTIONS = 16
PAIR = ("base", "head")  # the base first in the first round


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """``rev`` checked out in a temporary worktree: (its path, its full commit id)."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        path = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", "--quiet", str(path), commit)
        try:
            yield path, commit
        finally:
            _git("worktree", "remove", "--force", str(path))


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def server_from(tree: Path, model: Path, cpus: list[int] | None) -> Server:
    """The service as ``tree`` has it: its package first on the path, then this environment."""
    server = service_server(model, cpus, {})
    server.cmd = [
        sys.executable,
        "-c",
        f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
        "runpy.run_module('service', run_name='__main__', alter_sys=True)",
    ]
    return server


def compare(
    servers: dict[str, Server], cfg: Interleaved, loadgen_cpus: list[int] | None
) -> dict[str, Any]:
    """Warm both up, then rounds in alternating order; the ratio is this tree's over the base's."""
    load = {"connections": CONNECTIONS, "loadgen_cpus": loadgen_cpus}
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        script = Path(tmp) / "post_jpeg.lua"
        script.write_text(lua_script(SAMPLE_IMAGE))
        with running(list(servers.values())):
            warm_up_each(servers, script, duration_s=cfg.warmup_s, **load)
            rounds = server_rounds(servers, PAIR, script, cfg=cfg, ratio=_ratio, **load)
    ratios = [r["ratio"] for r in rounds]
    return {
        "rounds": rounds,
        "ratio_median": median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def _ratio(runs: dict[str, dict[str, Any]]) -> float:
    return runs["head"]["throughput_rps"] / runs["base"]["throughput_rps"]


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### This tree against {result['rev']} ({result['commit'][:10]}), Swin-T fp32, c={CONNECTIONS}",
        "",
        f"{result['machine']['cpus']} CPUs: {describe_cpu(result['machine'])}. "
        f"Run of {result['started_at']}.",
        "",
        "| Round | Order | base (req/s) | head (req/s) | head / base |",
        "|---|---|---|---|---|",
    ]
    for r in result["rounds"]:
        base, head = r["runs"]["base"], r["runs"]["head"]
        order = " then ".join(r["order"])
        lines.append(
            f"| {r['round']} | {order} | {base['throughput_rps']:.2f} | "
            f"{head['throughput_rps']:.2f} | {r['ratio']:.3f} |"
        )
    low, high = result["ratio_range"]
    lines += [
        "",
        f"**head / base: {result['ratio_median']:.3f}** (median of the per-round ratios; "
        f"range {low:.3f} to {high:.3f}).",
    ]
    return "\n".join(lines) + "\n"


def main(run: Run, rev: str) -> int:
    out_dir, quick, rounds = run.out_dir, run.quick, run.rounds
    server_cpus, loadgen_cpus = run.server_cpus, run.loadgen_cpus
    from bench.model_files import ensure_models

    cfg = BASELINE.pick(quick, rounds=rounds)
    clock = RunClock()
    models = ensure_models()
    with worktree(rev) as (tree, commit):
        progress(f"baseline {rev} ({commit[:10]}) in {tree}")
        servers = {
            "base": server_from(tree, models.fp32, server_cpus),
            "head": service_server(models.fp32, server_cpus, {}),
        }
        result = compare(servers, cfg, loadgen_cpus)
    result.update(
        rev=rev,
        commit=commit,
        started_at=clock.started,
        machine=machine_info(),
        config=as_json(cfg),
    )
    write_results(out_dir, "baseline", result, render_markdown(result))
    return 0

"""``python -m bench baseline --rev REV``: this tree's server against the server of an earlier
revision, on the same machine, model and load, in interleaved rounds at c=16.

Whether a change costs throughput is a ratio from one run: figures of runs an hour apart differ by
more than most changes on a shared machine. The revision is checked out into a temporary git
worktree and its server is run from there, with this tree's virtual environment (so only the
service's own code differs; a revision that needs other packages cannot be compared this way).
"""

from __future__ import annotations

import contextlib
import datetime as dt
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
    write_json,
)
from bench.loadgen import lua_script
from bench.server import Server
from bench.service import load_in_turn, running, service_server, warm_up_each

CONNECTIONS = 16
FULL = {"rounds": 6, "duration_s": 15.0, "warmup_s": 8.0}
QUICK = {"rounds": 1, "duration_s": 4.0, "warmup_s": 3.0}


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
    servers: dict[str, Server], cfg: dict[str, Any], loadgen_cpus: list[int] | None
) -> dict[str, Any]:
    """Warm both up, then rounds in alternating order; the ratio is this tree's over the base's."""
    rounds = []
    load = {"connections": CONNECTIONS, "loadgen_cpus": loadgen_cpus}
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        script = Path(tmp) / "post_jpeg.lua"
        script.write_text(lua_script(SAMPLE_IMAGE))
        with running(list(servers.values())):
            warm_up_each(servers, script, duration_s=cfg["warmup_s"], **load)
            for i in range(cfg["rounds"]):
                order = ("base", "head") if i % 2 == 0 else ("head", "base")
                label = f"round {i + 1}/{cfg['rounds']}"
                runs = load_in_turn(
                    servers, order, script, duration_s=cfg["duration_s"], label=label, **load
                )
                ratio = runs["head"]["throughput_rps"] / runs["base"]["throughput_rps"]
                rounds.append({"round": i + 1, "order": list(order), "runs": runs, "ratio": ratio})
    ratios = [r["ratio"] for r in rounds]
    return {
        "rounds": rounds,
        "ratio_median": median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


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


def main(
    out_dir: Path,
    *,
    rev: str,
    quick: bool,
    rounds: int = 0,
    server_cpus: list[int] | None = None,
    loadgen_cpus: list[int] | None = None,
) -> int:
    from bench.models import ensure_models

    cfg = {**(QUICK if quick else FULL)}
    if rounds:
        cfg["rounds"] = rounds
    started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    models = ensure_models()
    with worktree(rev) as (tree, commit):
        progress(f"baseline {rev} ({commit[:10]}) in {tree}")
        servers = {
            "base": server_from(tree, models.fp32, server_cpus),
            "head": service_server(models.fp32, server_cpus, {}),
        }
        result = compare(servers, cfg, loadgen_cpus)
    result.update(rev=rev, commit=commit, started_at=started_at, machine=machine_info(), config=cfg)
    write_json(out_dir / "baseline.json", result)
    text = render_markdown(result)
    (out_dir / "baseline.md").write_text(text)
    print(text)
    progress(f"results in {out_dir / 'baseline.json'} and {out_dir / 'baseline.md'}")
    return 0

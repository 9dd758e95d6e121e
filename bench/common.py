"""Shared helpers: paths, progress lines, statistics and the machine description.

Times are in seconds unless a name says otherwise (``_ms``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swin_serve.export.files import write_atomically

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODELS_DIR = ROOT / "artefacts" / "bench"  # git-ignored: the bench's own random-weight export
VARIANT = "swin_tiny_patch4_window7_224"
IMAGES_DIR = ROOT / "samples" / "images"
SAMPLE_IMAGE = IMAGES_DIR / "flower.jpg"

_T0 = time.perf_counter()


def progress(message: str) -> None:
    """One timestamped progress line on stderr (long runs stay visibly alive)."""
    elapsed = time.perf_counter() - _T0
    print(f"[bench {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def interpolate_log2(points: dict[int, float], x: float) -> float:
    """Value at ``x`` from {batch: value}, linear in log2(batch); clamped to the end points."""
    if not points:
        raise ValueError("no points to interpolate")
    keys = sorted(points)
    if x <= keys[0]:
        return points[keys[0]]
    if x >= keys[-1]:
        return points[keys[-1]]
    for lo, hi in itertools.pairwise(keys):
        if lo <= x <= hi:
            t = (math.log2(x) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
            return points[lo] + t * (points[hi] - points[lo])
    raise AssertionError("unreachable")


def cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return list(range(os.cpu_count() or 1))


def plan_cpus() -> tuple[list[int] | None, list[int] | None, str]:
    """(server cpus, load-generator cpus, explanation)."""
    all_cpus = cpus()
    if len(all_cpus) >= 4:
        return (
            all_cpus[:-1],
            all_cpus[-1:],
            f"Servers and the engine benchmark pinned to CPUs {all_cpus[:-1]} (taskset), wrk to "
            f"CPU {all_cpus[-1]}: the load generator never competes with the server.",
        )
    if len(all_cpus) >= 2:
        return (
            None,
            all_cpus[-1:],
            f"Only {len(all_cpus)} CPUs: wrk (one thread) is pinned to CPU {all_cpus[-1]} with "
            "taskset, the servers may use every CPU. Giving wrk a core of its own would halve the "
            "server's compute, and wrk needs little of one (its measured CPU share is in "
            "results.json, `loadgen_cpu_share`).",
        )
    return None, None, "One CPU: nothing pinned; wrk shares the core with the server."


def machine_cpu_seconds(stat: str | None = None) -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine since boot, from /proc/stat's ``cpu`` line.

    Busy is user + nice + system + irq + softirq (guest time is inside user); stolen is what the
    hypervisor gave to other guests. None where there is no /proc/stat.
    """
    try:
        text = stat if stat is not None else Path("/proc/stat").read_text()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, text.split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


# The instruction sets that change the engines' CPU speed the most, as /proc/cpuinfo flags them,
# with the names people know them by. Figures from machines that differ here do not compare.
CPU_FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX",
}


def cpu_features(cpuinfo: str) -> list[str]:
    """The CPU_FEATURES the first processor of ``cpuinfo`` (/proc/cpuinfo's text) has."""
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in cpuinfo.splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    return [name for flag, name in CPU_FEATURES.items() if flag in flags]


def machine_info() -> dict[str, Any]:
    cpu_model, cpuinfo = "", ""
    with contextlib.suppress(OSError):  # not Linux: no model, no features
        cpuinfo = Path("/proc/cpuinfo").read_text()
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (0.0, 0.0, 0.0)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_features": cpu_features(cpuinfo),
        "cpus": len(cpus()),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def describe_cpu(machine: dict[str, Any]) -> str:
    """The CPU model and, when the run recorded them, its vector instruction sets."""
    model = machine.get("cpu_model", "?")
    features = machine.get("cpu_features")
    return (
        f"{model}; {', '.join(features) or 'no AVX2 or newer'}" if features is not None else model
    )


def machine_fingerprint(machine: dict[str, Any]) -> str:
    """What must match for two runs' figures to compare: CPU model, CPU count, instruction sets.

    A run from before the instruction sets were recorded says so, and so matches no later run:
    a model name such as "Intel(R) Xeon(R) Processor" covers CPUs with and without AVX-512.
    """
    features = machine.get("cpu_features")
    recorded = (", ".join(features) or "no AVX2 or newer") if features is not None else None
    return (
        f"{machine.get('cpu_model') or '?'} | {machine.get('cpus', '?')} CPUs | "
        f"{recorded or 'instruction sets not recorded'}"
    )


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` whole: a reader (or a crash) never meets half a results file."""
    text = json.dumps(data, indent=2) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())

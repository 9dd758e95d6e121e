"""``python -m bench.selfcheck_cost MODEL.onnx ...``: what the golden self-check adds to a start-up.

For each artefact: the time to open it (ONNX Runtime session and manifest, as the server does),
and the time of the self-check itself, the median of ``--reps`` runs after one unmeasured run
(the first run of a fresh session also pays for its allocations; the server's self-check is
that first run, so both are reported), and the golden preprocessing check's own share (one
decode and transform of the stored image; Pillow's, so ``--threads`` does not change it).
Single-threaded ONNX Runtime unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.common import RESULTS_DIR, machine_info, progress, write_json


def measure(path: Path, reps: int, threads: int) -> dict[str, float | str]:
    from swin_serve.server.runtime.engine import OnnxEngine
    from swin_serve.server.runtime.selfcheck import check_engine
    from swin_serve.server.settings import Settings

    start = time.perf_counter()
    engine = OnnxEngine.load(Settings(model_path=path, providers="cpu", intra_op_threads=threads))
    load_ms = (time.perf_counter() - start) * 1e3

    def check() -> tuple[float, float | None]:
        report = check_engine(engine)
        assert report.status == "passed", report
        pre = report.preprocess
        return report.took_ms, pre.took_ms if pre and pre.status == "passed" else None

    first, first_pre = check()
    warm = [check() for _ in range(reps)]
    pre_warm = [p for _, p in warm if p is not None]
    return {
        "precision": engine.manifest.precision,
        "open_ms": round(load_ms, 1),
        "self_check_first_ms": round(first, 1),
        "self_check_warm_median_ms": round(statistics.median(t for t, _ in warm), 1),
        "preprocess_check_first_ms": first_pre,
        "preprocess_check_warm_median_ms": (
            round(statistics.median(pre_warm), 1) if pre_warm else None
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    results = {}
    for path in args.models:
        progress(f"self-check of {path.name}")
        results[path.name] = measure(path, args.reps, args.threads)
    report = {"machine": machine_info(), "intra_op_threads": args.threads, "models": results}
    write_json(RESULTS_DIR / "selfcheck.json", report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

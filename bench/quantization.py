"""``python -m bench.quantization``: int8 settings against fp32, on real photos, on two CPUs.

Builds Swin-T (random weights, seed 0) in fp32 and in int8 under each candidate setting, then
runs every photo in samples/images through each file and reports, per setting, the minimum
logits cosine and the top-1 agreement with fp32. It runs twice: on this machine's CPU, and
under ``qemu-x86_64 -cpu EPYC-Rome`` (AVX2 and FMA, no AVX-512, no VNNI), where ONNX Runtime
takes its u8s8 AVX2 kernels, the ones that saturate. qemu comes from Debian's ``qemu-user``;
without it the second run is skipped, and the report says so. Emulation makes that run slow.
On this CPU it also measures images/s (batch 8, one thread, the median of interleaved
repetitions), fp32 included; emulated speed means nothing and is not measured.

    python -m bench.quantization [--variant swin_tiny_patch4_window7_224] [--out artefacts/bench/int8]
                                 [--skip-build] [--no-emulation]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import (
    IMAGES_DIR,
    MODELS_DIR,
    RESULTS_DIR,
    ROOT,
    VARIANT,
    median,
    progress,
    read_json,
    write_json,
)
from swin_serve.artifact.contract import (
    CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NAME,
    OUTPUT_NAMES,
    PreprocessSpec,
)
from swin_serve.artifact.cpu import cpu_features
from swin_serve.artifact.sessions import cpu_session, session_options

NO_VNNI_CPU = "EPYC-Rome"
CANDIDATES = {
    "per-tensor": {"per_channel": False, "reduce_range": False},
    "per-channel": {"per_channel": True, "reduce_range": False},
    "per-channel, reduce-range (default)": {},
    "per-channel, reduce-range, weights only": {"matmul_const_b_only": True},
}
SPEED_BATCH = 8
SPEED_REPS = 3
LOGITS = OUTPUT_NAMES[0]  # the graph's first output: the class scores


def build(variant: str, out: Path) -> None:
    """fp32.onnx, one int8 file per candidate, and photos.npy (every decodable sample photo)."""
    import onnx
    import torch

    from swin_serve.export.graph import trace_to_onnx
    from swin_serve.export.variants import Int8Settings, to_int8
    from swin_serve.model import SwinTransformer, get_config
    from swin_serve.model.weights import randomize

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = SwinTransformer(get_config(variant)).eval()
    randomize(model, seed=0)
    progress(f"tracing {variant}")
    proto = trace_to_onnx(model)
    onnx.save(proto, out / "fp32.onnx")
    for i, overrides in enumerate(CANDIDATES.values()):
        progress(f"quantising: {list(CANDIDATES)[i]}")
        onnx.save(to_int8(proto, replace(Int8Settings(), **overrides)), out / f"int8-{i}.onnx")
    photos = _photos(model.config.img_size)
    np.save(out / "photos.npy", photos)
    np.save(out / "reference.npy", _logits(out / "fp32.onnx", photos))


def _photos(size: int) -> np.ndarray:
    from swin_serve.artifact.preprocess import configure_pillow, decode_image
    from swin_serve.server.errors import ApiError

    configure_pillow()
    spec = PreprocessSpec(
        resize_shorter=int(size / CROP_PCT),
        crop_size=size,
        crop_pct=CROP_PCT,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    photos = []
    for path in sorted(IMAGES_DIR.iterdir()):
        try:
            photos.append(decode_image(path.read_bytes(), spec, max_pixels=10**7))
        except ApiError:
            continue  # the broken files are there to be refused, not measured
    return np.stack(photos)


def compare(out: Path) -> dict[str, dict[str, float | str]]:
    """Every int8 file against fp32 on the photos, on whatever CPU this process sees.

    The fp32 reference is computed once, on the host (``reference.npy``): fp32 kernels are not
    what is in question, and under emulation they are the slowest part.
    """
    from swin_serve.artifact.golden import compare

    photos, ref = np.load(out / "photos.npy"), np.load(out / "reference.npy")
    report = {}
    for i, name in enumerate(CANDIDATES):
        got = _logits(out / f"int8-{i}.onnx", photos)
        cosine = compare({LOGITS: ref}, {LOGITS: got})[LOGITS]["min_cosine"]
        report[name] = {
            "logits_cosine_min": round(cosine, 5),
            "top1_agreement": f"{int((ref.argmax(1) == got.argmax(1)).sum())}/{len(ref)}",
        }
        print(f"  {name}: {report[name]}", file=sys.stderr, flush=True)
    return report


def _logits(path: Path, photos: np.ndarray) -> np.ndarray:
    session = cpu_session(path)
    return session.run([LOGITS], {INPUT_NAME: photos})[0].astype(np.float64)


def speed(out: Path) -> dict[str, float]:
    """Images/s per file at batch SPEED_BATCH on one thread, repetitions interleaved so that a
    neighbour's load hits every file alike."""
    files = {"fp32": out / "fp32.onnx"}
    files.update({name: out / f"int8-{i}.onnx" for i, name in enumerate(CANDIDATES)})
    options = session_options(intra_op_threads=1, inter_op_threads=1)
    sessions = {n: cpu_session(p, options) for n, p in files.items()}
    x = np.load(out / "photos.npy")[:1].repeat(SPEED_BATCH, axis=0)
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for rep in range(SPEED_REPS + 1):  # the first repetition warms up and is not kept
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run([LOGITS], {INPUT_NAME: x})
            if rep:
                times[name].append(time.perf_counter() - start)
    return {n: round(SPEED_BATCH / median(t), 2) for n, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default=VARIANT)
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "int8")
    parser.add_argument(
        "--skip-build", action="store_true", help="reuse the files an earlier run left in --out"
    )
    parser.add_argument(
        "--no-emulation", action="store_true", help="skip the run under qemu (the slow part)"
    )
    parser.add_argument("--compare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare_only:  # the child process, possibly under qemu
        print(json.dumps({"cpu": cpu_features(), "results": compare(args.out)}))
        return 0
    if not args.skip_build:
        build(args.variant, args.out)
    child = [sys.executable, "-m", "bench.quantization", "--out", str(args.out), "--compare-only"]
    runs = {"this CPU": _run(child, "on this CPU")}
    progress("images/s on this CPU, fp32 and every int8 file")
    runs["this CPU"]["images_per_s"] = speed(args.out)
    emulated = f"qemu {NO_VNNI_CPU} (no AVX-512, no VNNI)"
    if args.no_emulation:
        runs[emulated] = _earlier_run(emulated) if args.skip_build else "not run (--no-emulation)"
    elif shutil.which("qemu-x86_64"):
        runs[emulated] = _run(
            ["qemu-x86_64", "-cpu", NO_VNNI_CPU, *child], f"under qemu -cpu {NO_VNNI_CPU}"
        )
    else:
        runs[emulated] = "not run: qemu-x86_64 is not installed (apt-get install qemu-user)"
    result = {"variant": args.variant, "weights": "random (seed 0)", "runs": runs}
    write_json(RESULTS_DIR / "int8.json", result)
    print(json.dumps(result, indent=2))
    return 0


def _earlier_run(name: str) -> dict | str:
    """The emulated run of an earlier report, kept when the files it measured were not rebuilt."""
    try:
        earlier = read_json(RESULTS_DIR / "int8.json")["runs"][name]
    except (OSError, KeyError, ValueError):
        return "not run (--no-emulation)"
    if not isinstance(earlier, dict) or set(earlier.get("results", {})) != set(CANDIDATES):
        return "not run (--no-emulation), and the earlier run measured other settings"
    earlier["note"] = "kept from an earlier run on the same files (--skip-build --no-emulation)"
    return earlier


def _run(cmd: list[str], where: str) -> dict:
    progress(f"comparing int8 with fp32 on the photos {where} (slow under emulation)")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())

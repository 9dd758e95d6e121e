"""What this process's CPU can do, as ONNX Runtime's kernels see it.

int8 and bf16 speed and numerics depend on it (see export/variants.py and
server/runtime/precision.py), so it is reported with the self-check result. AVX2, AVX-512,
AVX-512 VNNI and AVX-512 BF16 come from numpy's own CPUID probe, which also checks that
the OS saves the wide registers and which an emulator (qemu -cpu) can
change; AVX-VNNI and AMX, which numpy does not probe, come from the kernel's flags in
/proc/cpuinfo, trusted only where they agree with CPUID on the features both know (under an
emulator they describe the host). A feature that cannot be read is None, never guessed.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

_FROM_NUMPY = {
    "avx2": "AVX2",
    "avx512f": "AVX512F",
    "avx512_vnni": "AVX512VNNI",
    "avx512_bf16": "AVX512BF16",
}
_FROM_KERNEL = {"avx_vnni": "avx_vnni", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16"}


@functools.cache
def cpu_features() -> dict[str, bool | None]:
    """{"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16"}
    -> present, absent or None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return dict.fromkeys([*_FROM_NUMPY, *_FROM_KERNEL])
    probed = _numpy_features()
    features: dict[str, bool | None] = {name: probed.get(key) for name, key in _FROM_NUMPY.items()}
    flags = _kernel_flags()
    if flags is not None and not _agree(features, flags):
        flags = None  # the kernel describes another CPU than CPUID does (an emulator)
    for name, flag in _FROM_KERNEL.items():
        features[name] = None if flags is None else flag in flags
    return features


def _agree(probed: dict[str, bool | None], flags: set[str]) -> bool:
    """Whether /proc/cpuinfo and CPUID tell the same story on the features both know."""
    return all(probed[name] is None or probed[name] == (name in flags) for name in _FROM_NUMPY)


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # a numpy that moved its private probe: report unknown, not absent
        return {}
    return {k: bool(v) for k, v in __cpu_features__.items()}


def _kernel_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None

"""Which class of CPU this is, as far as onnxruntime's integer kernels are concerned.

onnxruntime's U8S8 integer GEMM on x86 without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) adds pairs of
products in 16 bits and saturates; with VNNI the sums are exact. ditf opens every session with
`session.x64quantprecision = 1` (backends/onnxrt.py), which makes the non-VNNI CPUs use exact U8U8 kernels
instead, so INT8 features agree across classes; the class is still recorded (the manifest says which class
the INT8 gate ran on) and keys the once-per-machine INT8 check (int8_check.py).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class CpuClass:
    name: str  # "x86-64 AVX-512 VNNI", "x86-64 AVX2 (no VNNI)", "aarch64", ...
    model: str  # /proc/cpuinfo's "model name", or platform.processor()
    int8_kernels: str  # which integer GEMM onnxruntime uses here, with ditf's session options
    needs_exact_int8_option: bool = False  # x86 without VNNI: ditf sets session.x64quantprecision=1

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d.pop("needs_exact_int8_option")
        return d


def classify(flags: set[str], machine: str, model: str = "") -> CpuClass:
    """The class from the CPU's feature flags (Linux's /proc/cpuinfo names) and its architecture."""
    machine = machine.lower()
    if machine not in ("x86_64", "amd64", "i686", "i386"):
        return CpuClass(machine or "unknown", model, "onnxruntime's default integer kernels (not x86)")
    vnni = [f for f in VNNI_FLAGS if f in flags]
    if vnni:
        name = "x86-64 AVX-512 VNNI" if "avx512_vnni" in flags else "x86-64 AVX-VNNI"
        return CpuClass(name, model, "U8S8 with VNNI (exact)")
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE4.1" if "sse4_1" in flags \
        else "baseline"
    return CpuClass(f"x86-64 {widest} (no VNNI)", model,
                    "U8U8 (exact; session.x64quantprecision=1, instead of the saturating U8S8)", True)


def _read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[set[str], str]:
    flags: set[str] = set()
    model = ""
    try:
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key == "model name" and not model:
                model = value.strip()
    except OSError:
        pass
    return flags, model


@lru_cache(maxsize=1)
def this_cpu() -> CpuClass:
    flags, model = _read_cpuinfo()
    return classify(flags, platform.machine(), model or platform.processor())

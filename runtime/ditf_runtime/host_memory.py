"""How much memory a run may still use on this machine: the budget memory.py checks against by default."""

from __future__ import annotations

import os
from pathlib import Path


def available_memory(device: str = "cpu") -> int | None:
    """Bytes a run may still use: MemAvailable (within this process's cgroup limit) on the CPU, free GPU
    memory for CUDA (through cuda-python, when installed); None when it cannot be measured."""
    if device == "cuda":
        return _free_gpu_memory()
    available = _meminfo_available()
    limit = _cgroup_room()
    if available is None:
        return limit
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # other Unixes: free physical pages
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """Room left under a container's memory limit (cgroup v2, else v1); None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 60:  # no limit (v1 writes a huge number)
            return None
        return max(0, int(limit_text) - usage)
    return None


def _free_gpu_memory() -> int | None:
    from .backends.trt.flavors import import_cudart  # the one place that knows where cuda-python keeps it
    from .errors import BackendError

    try:
        error, free, _total = import_cudart().cudaMemGetInfo()
    except (BackendError, Exception):  # noqa: BLE001 - no cuda-python, no driver, no device: cannot tell
        return None
    return int(free) if int(error) == 0 else None

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


# Where the process's cgroup files are: in a container (cgroup namespace) its own cgroup is this root.
CGROUP_ROOT = Path("/sys/fs/cgroup")

# (limit file, usage file, memory.stat key of the reclaimable page cache) for cgroup v2, then v1.
_CGROUP_FILES = (("memory.max", "memory.current", "inactive_file"),
                 ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"))


def _cgroup_room(root: Path | None = None) -> int | None:
    """Room left under a container's memory limit (cgroup v2, else v1); None without a limit.

    Usage counts the page cache, and a run that writes files (ditf extract's feature files) fills it: the
    inactive part is reclaimed before the cgroup would run out, so it is subtracted, as docker stats and
    the kubelet's working set do (usage - inactive_file on v2, - total_inactive_file on v1).
    """
    root = CGROUP_ROOT if root is None else Path(root)
    for limit_name, usage_name, cache_key in _CGROUP_FILES:
        try:
            limit_text = (root / limit_name).read_text().strip()
            usage = int((root / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 60:  # no limit (v1 writes a huge number)
            return None
        stat = (root / usage_name).with_name("memory.stat")
        usage -= min(usage, _stat_value(stat, cache_key))
        return max(0, int(limit_text) - usage)
    return None


def _stat_value(path: Path, key: str) -> int:
    """One counter of a cgroup memory.stat file (bytes); 0 when the file or the key is absent."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _free_gpu_memory() -> int | None:
    from .backends.trt.flavors import import_cudart  # the one place that knows where cuda-python keeps it
    from .errors import BackendError

    try:
        error, free, _total = import_cudart().cudaMemGetInfo()
    except (BackendError, Exception):  # noqa: BLE001 - no cuda-python, no driver, no device: cannot tell
        return None
    return int(free) if int(error) == 0 else None

"""ditf_runtime.host_memory: the memory a run may still use, read from fake cgroup files in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from ditf_runtime import host_memory

GIB = 1 << 30


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _stat(**values: int) -> str:
    return "".join(f"{k} {v}\n" for k, v in {"anon": 1 * GIB, "file": 4 * GIB, **values}.items())


def test_cgroup_v2_room_leaves_out_the_reclaimable_page_cache(tmp_path):
    """A container with an 8 GiB limit whose 7 GiB usage is 3 GiB of inactive page cache (feature files a long
    `ditf extract` wrote): 4 GiB are free, as the container runtime counts it, not 1 GiB."""
    root = _cgroup(tmp_path, {"memory.max": f"{8 * GIB}\n", "memory.current": f"{7 * GIB}\n",
                              "memory.stat": _stat(active_file=1 * GIB, inactive_file=3 * GIB)})
    assert host_memory._cgroup_room(root) == 4 * GIB


def test_cgroup_v1_room_leaves_out_the_reclaimable_page_cache(tmp_path):
    root = _cgroup(tmp_path, {"memory/memory.limit_in_bytes": f"{8 * GIB}\n",
                              "memory/memory.usage_in_bytes": f"{7 * GIB}\n",
                              # v1: the hierarchical counter (the cgroup and its children), what docker subtracts
                              "memory/memory.stat": _stat(inactive_file=1 * GIB, total_inactive_file=2 * GIB)})
    assert host_memory._cgroup_room(root) == 3 * GIB


@pytest.mark.parametrize("stat", [None, "anon 1\n", "inactive_file nonsense\n"])
def test_without_a_readable_page_cache_counter_usage_counts_whole(tmp_path, stat):
    files = {"memory.max": f"{8 * GIB}\n", "memory.current": f"{7 * GIB}\n"}
    if stat is not None:
        files["memory.stat"] = stat
    assert host_memory._cgroup_room(_cgroup(tmp_path, files)) == 1 * GIB


def test_no_limit_no_room_to_report(tmp_path):
    assert host_memory._cgroup_room(_cgroup(tmp_path, {"memory.max": "max\n", "memory.current": "5\n"})) is None
    assert host_memory._cgroup_room(tmp_path / "absent") is None


def test_available_memory_is_the_smaller_of_meminfo_and_the_cgroup_room(tmp_path, monkeypatch):
    _cgroup(tmp_path, {"memory.max": f"{8 * GIB}\n", "memory.current": f"{7 * GIB}\n",
                       "memory.stat": _stat(inactive_file=3 * GIB)})
    monkeypatch.setattr(host_memory, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(host_memory, "_meminfo_available", lambda: 100 * GIB)  # a large host
    assert host_memory.available_memory() == 4 * GIB
    monkeypatch.setattr(host_memory, "_meminfo_available", lambda: 2 * GIB)
    assert host_memory.available_memory() == 2 * GIB

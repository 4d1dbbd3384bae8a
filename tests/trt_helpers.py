"""Small helpers shared by the TensorRT test modules (no fixtures: conftest.py holds the shared ones)."""

from __future__ import annotations

from pathlib import Path


def linked_copy(export: Path, dest: Path) -> Path:
    """A new export folder whose files are symlinks to `export`'s (engines/ left out): builds write only there."""
    dest.mkdir(parents=True)
    for item in export.iterdir():
        if item.name != "engines":
            (dest / item.name).symlink_to(item)
    return dest

"""Benchmark models built once into a cache folder (bench/medium.py, bench/standin.py).

The folder holds a stamp file saying what was built; a folder whose stamp differs is rebuilt. A build
is written beside the folder and renamed into place (ditf_runtime.files.staged_folder), its stamp
last, so an interrupted build never looks finished.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ditf_runtime.files import staged_folder


def cached_build(out: Path, stamp_file: str, stamp: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """`out` if its stamp file holds `stamp`; else `build(folder)` into a fresh folder that replaces `out`."""
    stamp = json.loads(json.dumps(stamp))  # as it reads back from the file (tuples become lists)
    existing = out / stamp_file
    if existing.is_file() and json.loads(existing.read_text()) == stamp:
        return out
    with staged_folder(out) as tmp:
        build(tmp)
        (tmp / stamp_file).write_text(json.dumps(stamp, indent=2))
    return out

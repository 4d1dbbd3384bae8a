"""Benchmark models built once into a cache folder (bench/medium.py, bench/standin.py), with the random
prompt-embeddings file they carry (so no text encoder is needed).

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


def save_random_prompt_embeds(path: Path, text_tokens: int, text_width: int, pooled_width: int, seed: int) -> None:
    """A FLUX-style --prompt-embeds file: standard normal T5 [1, tokens, width] and pooled CLIP [1, width]."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({"prompt_embeds": torch.randn(1, text_tokens, text_width, generator=g),
               "pooled_prompt_embeds": torch.randn(1, pooled_width, generator=g)}, str(path))


def build_cli(doc: str, build: Callable[[Path], Path], default_out: Path) -> None:
    """The command line of a bench model script: `--out FOLDER`, built (or found cached), size on disk printed."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=default_out)
    folder = build(ap.parse_args().out)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{folder}: {size / 1e9:.2f} GB on disk")

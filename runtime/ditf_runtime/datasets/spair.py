"""SPair-71k's layout, read into pairs for the PCK loop (evaluate.py); benchmarks written in this layout read the same.

ROOT/PairAnnotation/<split>/*.json: src_imname, trg_imname, category, src_kps, trg_kps,
trg_bndbox [x1, y1, x2, y2], optionally src_imsize / trg_imsize [w, h, c]; images in
ROOT/JPEGImages/<category>/<imname>. Every listed keypoint is scored (SPair lists only the ones
annotated in both images); the threshold is max(bbox height, bbox width) of the target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .pairs import Pair, select_pairs, split_folder

ANNOTATION_KEYS = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox")
SPAIR_URL = "https://cvlab.postech.ac.kr/research/SPair-71k/"
SPAIR_LAYOUT = f"""SPair-71k's layout (from SPair-71k.tar.gz, {SPAIR_URL}):
  ROOT/PairAnnotation/<split>/*.json    one pair per file; splits trn, val, test
  ROOT/JPEGImages/<category>/*.jpg      e.g. JPEGImages/aeroplane/2008_000033.jpg
  (ImageAnnotation/, Layout/, Segmentation/ may be there too; they are not read)"""


def read_spair_pairs(
    root: str | os.PathLike,
    split: str = "test",
    categories: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Pair]:
    """Pairs of one split, sorted by category then file name; `limit` caps pairs per category."""
    root = Path(root)
    folder = split_folder(root, split, SPAIR_LAYOUT)
    if not (root / "JPEGImages").is_dir():
        raise InputError(f"{root / 'JPEGImages'} not found. Expected {SPAIR_LAYOUT}")
    pairs = [_read_pair(root, path) for path in sorted(folder.glob("*.json"))]
    return select_pairs(pairs, folder, categories, limit)


def spair_image_path(root: str | os.PathLike, category: str, name: str) -> Path:
    path = Path(root) / "JPEGImages" / category / name
    return path if Path(name).suffix else path.with_suffix(".jpg")


def _read_pair(root: Path, path: Path) -> Pair:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable pair annotation ({exc})") from exc
    missing = [k for k in ANNOTATION_KEYS if k not in data]
    if missing:
        raise InputError(f"{path}: missing keys {missing}")
    src_kps = np.asarray(data["src_kps"], dtype=np.float64).reshape(-1, 2)
    trg_kps = np.asarray(data["trg_kps"], dtype=np.float64).reshape(-1, 2)
    if src_kps.shape != trg_kps.shape:
        raise InputError(f"{path}: {len(src_kps)} source but {len(trg_kps)} target keypoints")
    bbox = tuple(float(v) for v in data["trg_bndbox"])
    if len(bbox) != 4:
        raise InputError(f"{path}: trg_bndbox must be [x1, y1, x2, y2]")
    x1, y1, x2, y2 = bbox

    def imsize(key):
        value = data.get(key)
        return None if value is None else (int(value[1]), int(value[0]))  # annotated [w, h, c]

    category = str(data["category"])
    return Pair(
        path,
        category,
        spair_image_path(root, category, str(data["src_imname"])),
        spair_image_path(root, category, str(data["trg_imname"])),
        src_kps,
        trg_kps,
        max(y2 - y1, x2 - x1),
        imsize("src_imsize"),
        imsize("trg_imsize"),
    )

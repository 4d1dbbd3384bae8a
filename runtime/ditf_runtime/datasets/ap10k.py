"""AP-10K's correspondence benchmark as GeoAware-SC prepares it ("Telling Left from Right", CVPR 2024): pairs for
the PCK loop (evaluate.py).

Three subsets, each a folder of pair files: intra-species (PairAnnotation/<split>, category = species),
cross-species (<split>_cross_species, category = family: two species of one family) and cross-family
(<split>_cross_family, category "all"). A pair file names its category after its last ':' and holds
`src_json_path` / `trg_json_path`: per-image annotations (`bbox` [left, top, width, height], 17
`keypoints` as x, y, v triples, `width`, `height`), named by the path the preparation ran with; they
are found inside ROOT by the part after ImageAnnotation/, and each image is
JPEGImages/<family>/<species>/<annotation stem>.jpg, as GeoAware-SC's loader has it.

Protocol: a keypoint is scored when it is visible (v > 0) in both images; the threshold is
max(width, height) of the target's bbox, in the files' pixel frame like the keypoints.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .pairs import Pair, select_pairs, split_folder

# --subset -> the suffix of its PairAnnotation folder (after the split: test, val or trn)
SUBSETS = {"intra-species": "", "cross-species": "_cross_species", "cross-family": "_cross_family"}
IMAGE_KEYS = ("bbox", "keypoints", "width", "height")
GEOAWARE_URL = "https://github.com/Junyi42/GeoAware-SC"
AP10K_LAYOUT = f"""AP-10K's correspondence benchmark as GeoAware-SC's prepare_ap10k.ipynb writes it ({GEOAWARE_URL}):
  ROOT/PairAnnotation/<split>/*:<species>.json                 intra-species pairs; splits test, val, trn
  ROOT/PairAnnotation/<split>_cross_species/*:<family>.json    cross-species pairs (test, val)
  ROOT/PairAnnotation/<split>_cross_family/*:all.json          cross-family pairs (test, val)
  ROOT/ImageAnnotation/<family>/<species>/<id>.json            bbox, keypoints, width, height per image
  ROOT/JPEGImages/<family>/<species>/<id>.jpg                  e.g. JPEGImages/canidae/dog/000000012345.jpg"""


def ap10k_split(subset: str, split: str) -> str:
    """The PairAnnotation folder of `subset` (intra-species, cross-species, cross-family) in `split`."""
    if subset not in SUBSETS:
        raise InputError(f"unknown AP-10K subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    return split + SUBSETS[subset]


def read_ap10k_pairs(
    root: str | os.PathLike,
    subset: str = "intra-species",
    split: str = "test",
    categories: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Pair]:
    """Pairs of one subset and split, sorted by category then file name; `limit` caps pairs per category.

    The chosen pairs' image annotations are read and their images' presence checked here, so a missing
    file is named before any feature is computed.
    """
    root = Path(root)
    folder = split_folder(root, ap10k_split(subset, split), AP10K_LAYOUT, options="--split and --subset")
    for name in ("ImageAnnotation", "JPEGImages"):
        if not (root / name).is_dir():
            raise InputError(f"{root / name} not found. Expected {AP10K_LAYOUT}")
    # The category is in the file name: choose the pairs first, then read (and check) only theirs.
    chosen = select_pairs([_PairFile(path, _category(path)) for path in folder.glob("*.json")], folder,
                          categories, limit)
    images = _ImageAnnotations(root)
    return [_read_pair(file.annotation, file.category, images) for file in chosen]


@dataclass(frozen=True)
class _PairFile:
    annotation: Path
    category: str


def _category(path: Path) -> str:
    stem, colon, category = path.name.removesuffix(".json").rpartition(":")
    if not colon or not stem or not category:
        raise InputError(f"{path}: an AP-10K pair file is named <source>-<target>:<category>.json")
    return category


def _read_pair(path: Path, category: str, images: "_ImageAnnotations") -> Pair:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable pair annotation ({exc})") from exc
    if not isinstance(data, dict) or any(k not in data for k in ("src_json_path", "trg_json_path")):
        raise InputError(f"{path}: an AP-10K pair file holds src_json_path and trg_json_path")
    src = images.get(data["src_json_path"], path)
    trg = images.get(data["trg_json_path"], path)
    if len(src.keypoints) != len(trg.keypoints):
        raise InputError(f"{path}: {len(src.keypoints)} source but {len(trg.keypoints)} target keypoints")
    scored = (src.keypoints[:, 2] > 0) & (trg.keypoints[:, 2] > 0)
    # The source point is looked up at a pixel: the nearest one (annotations may carry fractions).
    src_kps = np.floor(src.keypoints[scored, :2] + 0.5)
    return Pair(
        path,
        category,
        src.image,
        trg.image,
        src_kps,
        trg.keypoints[scored, :2],
        max(trg.bbox[2], trg.bbox[3]),
        src.size,
        trg.size,
    )


@dataclass(frozen=True)
class _Image:
    image: Path
    keypoints: np.ndarray  # [17, 3] x, y, v
    bbox: tuple[float, ...]  # left, top, width, height
    size: tuple[int, int]  # (height, width) as annotated


class _ImageAnnotations:
    """Per-image annotations, each read once (an image takes part in many pairs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.read: dict[Path, _Image] = {}

    def get(self, named: Any, pair: Path) -> _Image:
        # The path the preparation ran with (data/ap-10k/ImageAnnotation/...): keep what follows ImageAnnotation.
        parts = str(named).replace("\\", "/").split("/")
        inside = parts[len(parts) - parts[::-1].index("ImageAnnotation"):] if "ImageAnnotation" in parts else []
        if len(inside) != 3 or not inside[-1].endswith(".json"):
            raise InputError(f"{pair}: {named!r} is not ImageAnnotation/<family>/<species>/<id>.json. "
                             f"Expected {AP10K_LAYOUT}")
        path = self.root.joinpath("ImageAnnotation", *inside)
        if path not in self.read:
            self.read[path] = self._load(path, inside, pair)
        return self.read[path]

    def _load(self, path: Path, inside: list[str], pair: Path) -> _Image:
        if not path.is_file():
            raise InputError(f"{pair}: its image annotation {path} is missing")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable image annotation ({exc})") from exc
        missing = [k for k in IMAGE_KEYS if not isinstance(data, dict) or k not in data]
        if missing:
            raise InputError(f"{path}: missing keys {missing}")
        try:
            keypoints = np.asarray(data["keypoints"], dtype=np.float64).reshape(-1, 3)
            bbox = tuple(float(v) for v in data["bbox"])
            size = (int(data["height"]), int(data["width"]))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: keypoints must be x, y, v triples, bbox four numbers ({exc})") from exc
        if len(bbox) != 4:
            raise InputError(f"{path}: bbox must be [left, top, width, height]")
        image = self.root.joinpath("JPEGImages", *inside[:-1], Path(inside[-1]).stem + ".jpg")
        if not image.is_file():
            raise InputError(f"{pair}: image {image} not found (the image of {path})")
        return _Image(image, keypoints, bbox, size)

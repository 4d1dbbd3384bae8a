"""What a PCK dataset reader gives the shared loop (evaluate.py): annotated image pairs, selected and ordered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, TypeVar

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Pair:
    """One annotated image pair, reduced to what PCK needs.

    `src_kps` / `trg_kps` hold only the keypoints to score (a reader drops those its protocol leaves
    out, e.g. AP-10K's keypoints not visible in both images), in the image files' pixel frame. A
    transferred point is correct within alpha * `threshold_base` pixels of its `trg_kps` row.
    """

    annotation: Path  # the pair's annotation file; its name keys the pair (resumed runs, pair_pck)
    category: str
    src_image: Path
    trg_image: Path
    src_kps: np.ndarray  # [N, 2] pixel (x, y)
    trg_kps: np.ndarray  # [N, 2]
    threshold_base: float  # pixels: max(height, width) of the target's bounding box
    src_imsize: tuple[int, int] | None = None  # (height, width) as annotated, checked against the file
    trg_imsize: tuple[int, int] | None = None


class PairFile(Protocol):
    annotation: Path
    category: str


Selected = TypeVar("Selected", bound=PairFile)


def select_pairs(
    pairs: list[Selected], folder: Path, categories: Sequence[str] | None = None, limit: int | None = None
) -> list[Selected]:
    """`pairs` (Pairs, or anything with their `annotation` and `category`) of `categories` (all when None),
    sorted by category then annotation file name; `limit` caps pairs per category. Refuses unknown
    categories and an empty result."""
    if categories is not None:
        wanted = set(categories)
        unknown = wanted - {p.category for p in pairs}
        if unknown:
            raise InputError(f"no pairs of categories {sorted(unknown)} in {folder}")
        pairs = [p for p in pairs if p.category in wanted]
    pairs = sorted(pairs, key=lambda p: (p.category, p.annotation.name))
    if limit is not None:
        kept: dict[str, int] = {}
        limited = []
        for pair in pairs:
            if kept.get(pair.category, 0) < limit:
                kept[pair.category] = kept.get(pair.category, 0) + 1
                limited.append(pair)
        pairs = limited
    if not pairs:
        raise InputError(f"no pair annotations in {folder}")
    return pairs


def split_folder(root: Path, split: str, layout: str, options: str = "--split") -> Path:
    """ROOT/PairAnnotation/<split>, or an error that lists the splits there are (chosen by `options`) and shows
    the layout."""
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        splits = sorted(p.name for p in (root / "PairAnnotation").iterdir() if p.is_dir()) \
            if (root / "PairAnnotation").is_dir() else []
        found = f"; this dataset has splits {', '.join(splits)} ({options})" if splits else ""
        raise InputError(f"{folder} not found{found}. Expected {layout}")
    return folder

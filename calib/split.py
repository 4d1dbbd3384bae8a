"""Which real images calibrate INT8 and which judge it: a deterministic, recorded split.

INT8 calibrated on some images and judged on the same ones proves little: activation ranges fit what
they were measured on. So the export judges INT8 on real images the calibration never saw:

- `--eval-images DIR` given: those images judge, every `--calib-images` image calibrates; a file in
  both (same bytes) is refused.
- otherwise `--calib-images` is split. Near-duplicates (the same photo mirrored, cropped, resized or
  re-encoded) are grouped and always land on one side, since a held-out image whose twin was calibrated
  is not held out. Two images are near-duplicates when one, mirrored or not, is found inside the other:
  a candidate pair's 8x8 grey thumbnails correlate above DUPLICATE_CORRELATION, and then a 32x32 grey
  of the one correlates above SAME_PHOTO_CORRELATION with the best-fitting region of the other
  (regions of at least MIN_CROP of each side; `same_photo`). Similar compositions pass the first test
  but not the second, their details differing. A group holds images that are all near-duplicates of
  one another (complete linkage, in name order): a chain of similar photos, each like the next, is
  not one group. Groups,
  in name order, are held out alternately (the 2nd, 4th, ... then the rest from the end) until
  HELD_OUT_SHARE of the images (at least MIN_HELD_OUT, at most MAX_HELD_OUT) are held out; at least
  one image must remain for calibration.

The same folder always gives the same split; the manifest records both lists and the rule.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from .data import CalibrationError, check_folder

HELD_OUT_SHARE = 0.4
MIN_HELD_OUT = 2  # pairs: NN and PCK agreement match image i against image i+1
MAX_HELD_OUT = 8  # judged at the export's full default size: each costs a PyTorch and an onnxruntime run
DUPLICATE_CORRELATION = 0.8  # examples/images: cat-a vs its mirrored crop cat-b 0.91; unrelated photos <= 0.31
THUMB = 8  # thumbnail side: coarse enough that a crop or resize barely moves it (the candidate test)
# The confirming test: the best region's normalised correlation at 32x32. examples/images: cat-a / cat-b 0.94,
# unrelated photos <= 0.63; tests/test_calib_split.py: re-encodes 0.999, a 12 % crop 0.92, distinct photos of one
# composition (8x8 thumbnails correlating 0.82-0.92) <= 0.57.
SAME_PHOTO_CORRELATION = 0.88
MIN_CROP = 0.5  # a crop keeps at least half of each side of the photo
COARSE, FINE = 16, 32  # region search on a 16x16 grid, refined (+-1 cell, +-1 size) and judged on a 32x32 grid


@dataclass(frozen=True)
class ImageSplit:
    """The calibration images, the held-out images, and how they were chosen."""

    calibration: tuple[Path, ...]
    held_out: tuple[Path, ...]
    rule: str
    groups: tuple[tuple[str, ...], ...] = ()  # near-duplicate groups of more than one image (names)

    def to_dict(self) -> dict[str, Any]:
        return {"calibration_images": [p.name for p in self.calibration],
                "held_out_images": [p.name for p in self.held_out], "rule": self.rule,
                "near_duplicate_groups": [list(g) for g in self.groups]}


def split_images(calib_dir: str | os.PathLike, eval_dir: str | os.PathLike | None = None) -> ImageSplit:
    """The split for `--calib-images calib_dir [--eval-images eval_dir]`; a CalibrationError says what to give
    when there are too few images to judge INT8 on images it was not calibrated on."""
    files = check_folder(calib_dir)
    if eval_dir is not None:
        return _given(files, check_folder(eval_dir), Path(eval_dir))
    groups = near_duplicate_groups(files)
    target = min(MAX_HELD_OUT, max(MIN_HELD_OUT, math.ceil(HELD_OUT_SHARE * len(files))))
    held: list[Path] = []
    for group in groups[1::2] + groups[0::2][::-1]:
        if len(held) >= target:
            break
        if len(held) + len(group) <= max(target, MIN_HELD_OUT) or len(held) < MIN_HELD_OUT:
            held.extend(group)
    calibration = [p for p in files if p not in held]
    if len(held) < MIN_HELD_OUT or not calibration:
        raise CalibrationError(
            f"--precision int8 is judged on real images the calibration did not see, and --calib-images "
            f"{calib_dir} has too few to split ({len(files)} image(s) in {len(groups)} distinct group(s); "
            f"flipped/cropped copies of one photo count once): give at least 3 distinct photos like the ones "
            f"the model will see (5-50 is typical), or keep these for calibration and add --eval-images DIR "
            f"with at least {MIN_HELD_OUT} other photos")
    rule = (f"--calib-images split by name: near-duplicate groups held out alternately until "
            f"{HELD_OUT_SHARE:.0%} of the images (at least {MIN_HELD_OUT}, at most {MAX_HELD_OUT})")
    return ImageSplit(tuple(calibration), tuple(sorted(held)), rule,
                      tuple(tuple(p.name for p in g) for g in groups if len(g) > 1))


def _given(files: list[Path], evals: list[Path], eval_dir: Path) -> ImageSplit:
    if len(evals) < MIN_HELD_OUT:
        raise CalibrationError(f"--eval-images {eval_dir}: {len(evals)} image(s); INT8 is judged on pairs of "
                               f"held-out images: give at least {MIN_HELD_OUT} real photos")
    digests = {_sha256(p): p for p in files}
    shared = [p.name for p in evals if _sha256(p) in digests]
    if shared:
        raise CalibrationError(f"--eval-images {eval_dir}: {', '.join(shared)} also in --calib-images; the "
                               "evaluation images must be ones the calibration does not see")
    return ImageSplit(tuple(files), tuple(evals), "--eval-images given: every --calib-images image calibrates")


def near_duplicate_groups(files: list[Path]) -> list[list[Path]]:
    """Files grouped by near-duplicates (`same_photo`), every member of a group a near-duplicate of every other;
    in name order, a file joins the first group it fits, else starts its own; groups in order of their first
    file."""
    thumbs, greys = zip(*(_signatures(p) for p in files)) if files else ((), ())
    verdicts: dict[tuple[int, int], bool] = {}

    def duplicates(i: int, j: int) -> bool:
        if (i, j) not in verdicts:  # the cheap candidate test first; the region search only for candidates
            verdicts[i, j] = (similarity(thumbs[i], thumbs[j]) > DUPLICATE_CORRELATION
                              and same_photo(greys[i], greys[j]) > SAME_PHOTO_CORRELATION)
        return verdicts[i, j]

    groups: list[list[int]] = []
    for j in range(len(files)):
        home = next((g for g in groups if all(duplicates(i, j) for i in g)), None)
        if home is None:
            groups.append([j])
        else:
            home.append(j)
    return [[files[i] for i in g] for g in groups]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two normalised thumbnails, the better of b and b mirrored."""
    return float(max((a * b).sum(), (a * b[:, ::-1]).sum()))


def same_photo(a: Image.Image, b: Image.Image) -> float:
    """How well one image, mirrored or not, matches a region of the other: the best normalised correlation,
    over regions covering at least MIN_CROP of each side (any aspect: a crop may be resized unevenly)."""
    mirror = Image.Transpose.FLIP_LEFT_RIGHT
    return max(_contained(a, b), _contained(a, b.transpose(mirror)), _contained(b, a),
               _contained(b, a.transpose(mirror)))


def _contained(outer: Image.Image, inner: Image.Image) -> float:
    """`inner` resized onto every region of `outer` on a COARSE grid; the best region refined on the FINE one."""
    grid = _Grid(_cells(outer, COARSE, COARSE))
    smallest = math.ceil(MIN_CROP * COARSE)
    best, where = -2.0, (COARSE, COARSE, 0, 0)
    for h in range(smallest, COARSE + 1):
        for w in range(smallest, COARSE + 1):
            scores = grid.correlations(_cells(inner, w, h))
            y, x = np.unravel_index(int(scores.argmax()), scores.shape)
            if scores[y, x] > best:
                best, where = float(scores[y, x]), (h, w, y, x)
    r = FINE // COARSE
    h, w, y, x = (r * v for v in where)
    grid = _Grid(_cells(outer, FINE, FINE))
    best = -2.0
    for hh in range(max(h - r, 1), min(h + r, FINE) + 1):
        for ww in range(max(w - r, 1), min(w + r, FINE) + 1):
            scores = grid.correlations(_cells(inner, ww, hh))
            best = max(best, float(scores[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].max()))
    return best


class _Grid:
    """A grey grid with its summed-area tables: every window's spread in four lookups."""

    def __init__(self, cells: np.ndarray) -> None:
        self.cells = cells
        self.sums = [np.pad(np.cumsum(np.cumsum(c, 0), 1), ((1, 0), (1, 0))) for c in (cells, cells * cells)]

    @staticmethod
    def _window_sums(table: np.ndarray, h: int, w: int) -> np.ndarray:
        return table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]

    def correlations(self, template: np.ndarray) -> np.ndarray:
        """Normalised correlation of `template` with every same-sized window (-1 for a flat template)."""
        h, w = template.shape
        total, squares = (self._window_sums(t, h, w) for t in self.sums)
        template = template - template.mean()
        norm = float(np.linalg.norm(template))
        if norm < 1e-9:
            return np.full(total.shape, -1.0)
        # the window's mean drops out of the product: the template sums to 0
        products = np.einsum("yxij,ij->yx", sliding_window_view(self.cells, (h, w)), template / norm)
        spread = np.sqrt(np.maximum(squares - total * total / (h * w), 0.0))
        return products / np.maximum(spread, 1e-9)


def _cells(image: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.resize((width, height), Image.Resampling.BOX), np.float64)


def _signatures(path: Path) -> tuple[np.ndarray, Image.Image]:
    """The photo's normalised THUMB x THUMB grey thumbnail, and its grey on a square grid (2 FINE cells a
    side, any aspect squeezed: a region keeps its own)."""
    from ditf_runtime.preprocess import open_image

    grey = open_image(path).convert("L")
    thumb = np.asarray(grey.resize((THUMB, THUMB)), np.float64)
    thumb -= thumb.mean()
    return thumb / max(float(np.linalg.norm(thumb)), 1e-9), grey.resize((2 * FINE, 2 * FINE), Image.Resampling.BOX
                                                                        ).convert("F")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

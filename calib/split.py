"""Which real images calibrate INT8 and which judge it: a deterministic, recorded split.

INT8 calibrated on some images and judged on the same ones proves little: activation ranges fit what
they were measured on. So the export judges INT8 on real images the calibration never saw:

- `--eval-images DIR` given: those images judge, every `--calib-images` image calibrates; a file in
  both (same bytes) is refused.
- otherwise `--calib-images` is split. Near-duplicates (the same photo flipped, cropped or resized:
  their small grey thumbnails correlate above DUPLICATE_CORRELATION, mirror included) are grouped and
  always land on one side, since a held-out image whose twin was calibrated is not held out. Groups,
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

from .data import CalibrationError, check_folder

HELD_OUT_SHARE = 0.4
MIN_HELD_OUT = 2  # pairs: NN and PCK agreement match image i against image i+1
MAX_HELD_OUT = 8  # judged at the export's full default size: each costs a PyTorch and an onnxruntime run
DUPLICATE_CORRELATION = 0.8  # examples/images: cat-a vs its mirrored crop cat-b 0.91; unrelated photos <= 0.31
THUMB = 8  # thumbnail side: coarse enough that a crop or resize barely moves it


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
    """Files grouped by thumbnail correlation (a group joins any two files above DUPLICATE_CORRELATION,
    either one mirrored), groups in order of their first file."""
    thumbs = [_thumbnail(p) for p in files]
    parent = list(range(len(files)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            if similarity(thumbs[i], thumbs[j]) > DUPLICATE_CORRELATION:
                parent[root(j)] = root(i)
    groups: dict[int, list[Path]] = {}
    for i, p in enumerate(files):
        groups.setdefault(root(i), []).append(p)
    return list(groups.values())


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two normalised thumbnails, the better of b and b mirrored."""
    return float(max((a * b).sum(), (a * b[:, ::-1]).sum()))


def _thumbnail(path: Path) -> np.ndarray:
    from ditf_runtime.preprocess import open_image

    grey = np.asarray(open_image(path).convert("L").resize((THUMB, THUMB)), np.float64)
    grey -= grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-9)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

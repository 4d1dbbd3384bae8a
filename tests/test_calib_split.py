"""ditf_calib.split: which real images calibrate INT8 and which judge it (deterministic, recorded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ditf_calib.data import CalibrationError
from ditf_calib.split import MAX_HELD_OUT, near_duplicate_groups, split_images

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _photos(folder: Path, count: int) -> Path:
    """`count` distinct synthetic photos: smooth random colour fields (independent seeds), saved as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        coarse = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((80, 64), Image.Resampling.BICUBIC).save(folder / f"p{i:02d}.png")
    return folder


def test_examples_split_keeps_the_mirrored_cat_pair_together():
    """cat-b is cat-a mirrored, cropped and resized: held out together (a real correspondence pair), never one
    calibrated and its twin judged."""
    split = split_images(IMAGES)
    assert [p.name for p in split.held_out] == ["cat-a.jpg", "cat-b.jpg"]
    assert [p.name for p in split.calibration] == ["astronaut.jpg", "coffee.jpg", "rocket.jpg"]
    assert split.to_dict()["near_duplicate_groups"] == [["cat-a.jpg", "cat-b.jpg"]]
    assert split_images(IMAGES) == split  # deterministic


def test_split_share_and_limits(tmp_path):
    split = split_images(_photos(tmp_path / "ten", 10))
    assert len(split.held_out) == 4 and len(split.calibration) == 6  # 40 %
    assert not set(split.held_out) & set(split.calibration)
    assert len(near_duplicate_groups(list(split.calibration + split.held_out))) == 10  # all distinct
    many = split_images(_photos(tmp_path / "many", 30))
    assert len(many.held_out) == MAX_HELD_OUT and len(many.calibration) == 30 - MAX_HELD_OUT


def test_too_few_images_say_what_to_give(tmp_path):
    two = _photos(tmp_path / "two", 2)
    with pytest.raises(CalibrationError, match="at least 3 distinct photos.*--eval-images DIR"):
        split_images(two)
    dupes = tmp_path / "dupes"
    dupes.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):  # one photo, flipped and rescaled: one group
        img = Image.open(IMAGES / "coffee.jpg").resize((120 + 20 * i, 80 + 10 * i))
        (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img).save(dupes / name)
    with pytest.raises(CalibrationError, match=r"3 image\(s\) in 1 distinct group"):
        split_images(dupes)


def test_eval_images_judge_and_must_not_be_calibration_images(tmp_path):
    evals = _photos(tmp_path / "eval", 2)
    split = split_images(IMAGES, evals)
    assert len(split.calibration) == 5 and [p.name for p in split.held_out] == ["p00.png", "p01.png"]
    shutil.copy(IMAGES / "rocket.jpg", evals / "rocket-copy.jpg")
    with pytest.raises(CalibrationError, match="rocket-copy.jpg also in --calib-images"):
        split_images(IMAGES, evals)
    one = _photos(tmp_path / "one", 1)
    with pytest.raises(CalibrationError, match="at least 2 real photos"):
        split_images(IMAGES, one)

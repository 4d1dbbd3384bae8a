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


def _field(seed: int, cells: tuple[int, int]) -> np.ndarray:
    """A smooth random grey field of `cells` (rows, columns) resized to 128x96 (bicubic), values in [0, 1]."""
    coarse = np.random.default_rng(seed).uniform(0, 1, cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((128, 96), Image.Resampling.BICUBIC), np.float64)


def _similar_photos(folder: Path, count: int = 8) -> list[Path]:
    """Distinct photos of one slowly changing composition: the layout morphs from one field to another along
    the chain (each photo's 8x8 thumbnail correlates > 0.8 with the next one's), the details (about 4x4-pixel
    blobs at 128x96) are each photo's own."""
    folder.mkdir(parents=True, exist_ok=True)
    start, end = _field(7, (4, 5)), _field(8, (4, 5))
    paths = []
    for i in range(count):
        t = i / (count - 1)
        grey = (1 - t) * start + t * end + 0.8 * (_field(1000 + i, (24, 32)) - 0.5)
        grey = (grey - grey.min()) / (grey.max() - grey.min()) * 255
        paths.append(folder / f"s{i}.png")
        Image.fromarray(grey.astype(np.uint8)).convert("RGB").save(paths[-1])
    return paths


def test_a_chain_of_similar_photos_is_not_one_group_but_copies_of_one_photo_are(tmp_path):
    """Near-duplicate grouping used to be transitive over 8x8 thumbnails: photos of a similar composition,
    each like the next, chained into one group (here all 8), which left too few to split. Each stays its own
    group; a mirror, a crop (resized unevenly) and a JPEG re-encode of one of them join that one."""
    import io

    from ditf_calib.split import DUPLICATE_CORRELATION, THUMB, similarity

    def thumbnail(path: Path) -> np.ndarray:  # the candidate test's 8x8 grey thumbnail, normalised
        grey = np.asarray(Image.open(path).convert("L").resize((THUMB, THUMB)), np.float64)
        return (grey - grey.mean()) / np.linalg.norm(grey - grey.mean())

    photos = _similar_photos(tmp_path / "chain")
    thumbs = [thumbnail(p) for p in photos]
    assert all(similarity(a, b) > DUPLICATE_CORRELATION for a, b in zip(thumbs, thumbs[1:]))  # a real chain
    assert similarity(thumbs[0], thumbs[-1]) < DUPLICATE_CORRELATION
    split = split_images(tmp_path / "chain")
    assert split.groups == () and len(split.held_out) == 4  # eight groups of one

    photo = Image.open(photos[3])
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "chain" / "s3-mirror.png")
    photo.crop((10, 8, 122, 88)).resize((120, 80)).save(tmp_path / "chain" / "s3-crop.png")
    encoded = io.BytesIO()
    photo.save(encoded, "JPEG", quality=40)
    (tmp_path / "chain" / "s3-reencoded.jpg").write_bytes(encoded.getvalue())
    split = split_images(tmp_path / "chain")
    assert split.to_dict()["near_duplicate_groups"] == [["s3-crop.png", "s3-mirror.png", "s3-reencoded.jpg",
                                                         "s3.png"]]
    together = {"s3.png", "s3-crop.png", "s3-mirror.png", "s3-reencoded.jpg"}
    held = {p.name for p in split.held_out}
    assert together <= held or not together & held  # one side of the split

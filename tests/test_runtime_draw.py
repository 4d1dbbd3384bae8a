"""Correspondence and PCA pictures."""

from __future__ import annotations

import numpy as np
import pytest
from ditf_runtime import draw_matches, pca_image
from ditf_runtime.draw import GAP, pca_components
from ditf_runtime.errors import InputError
from ditf_runtime.features import FeatureMap
from PIL import Image


def test_draw_matches_side_by_side(tmp_path):
    src = Image.new("RGB", (170, 40), (0, 0, 0))  # together wider than MIN_PICTURE_WIDTH: drawn at their size
    trg = Image.new("RGB", (150, 70), (0, 0, 0))
    path = tmp_path / "pics" / "matches.png"
    picture = draw_matches(src, trg, [[10, 10], [50, 30]], [[5, 60], [40, 20]], correct=[True, False], path=path)
    assert picture.size == (170 + GAP + 150, 70)
    saved = Image.open(path)
    assert saved.format == "PNG" and saved.size == picture.size
    pixels = np.asarray(picture)
    assert pixels[10, 10].any() and pixels[60, 170 + GAP + 5].any()  # dots drawn on black
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_draw_matches_checks_counts():
    image = Image.new("RGB", (10, 10))
    with pytest.raises(InputError, match="2 source points but 1"):
        draw_matches(image, image, [[1, 1], [2, 2]], [[1, 1]])
    with pytest.raises(InputError, match="flags"):
        draw_matches(image, image, [[1, 1]], [[1, 1]], correct=[True, False])


def test_pca_picture_follows_the_features(tmp_path):
    rng = np.random.default_rng(0)
    # two clusters of cells: left half and right half get different colours
    features = np.concatenate([np.ones((32, 4, 3)), -np.ones((32, 4, 3))], axis=2) + 0.01 * rng.standard_normal(
        (32, 4, 6)
    )
    fm = FeatureMap(features, image_size=(40, 60), input_size=(64, 96), stride=16)
    picture = pca_image(fm, path=tmp_path / "pca.png")
    assert picture.size == (60, 40) and (tmp_path / "pca.png").is_file()
    grid = np.asarray(pca_image(features))
    assert grid.shape == (4, 6, 3)
    assert np.abs(grid[:, :3].astype(int).mean((0, 1)) - grid[:, 3:].astype(int).mean((0, 1))).max() > 200
    assert np.array_equal(grid, np.asarray(pca_image(features)))  # deterministic colours


def test_pca_sign_is_stable_and_small_channel_counts_work():
    features = np.random.default_rng(1).standard_normal((2, 3, 3))
    assert pca_components(features).shape == (3, 3, 3)
    assert np.allclose(pca_components(features), pca_components(features.copy()))
    with pytest.raises(InputError):
        pca_image(np.zeros((3, 3)))


def _rows_with(pixels: np.ndarray, color, tolerance: int = 40) -> np.ndarray:
    """Row indices holding a pixel within `tolerance` of `color`."""
    close = np.abs(pixels.astype(int) - np.array(color)).max(axis=2) <= tolerance
    return np.flatnonzero(close.any(axis=1))


def test_match_pictures_explain_themselves():
    """Caption strip (model settings; a red line for random weights), colour = cosine with a colour bar,
    numbered points."""
    from ditf_runtime.annotate import RANDOM_WEIGHTS, WARNING_TEXT, Caption, ColorScale

    src, trg = Image.new("RGB", (200, 150), (128, 128, 128)), Image.new("RGB", (180, 160), (128, 128, 128))
    points = [[20, 20], [100, 80], [150, 120]]
    scores = [0.2, 0.5, 0.9]
    caption = Caption(("flux-tiny · layer 3 · fp32",), RANDOM_WEIGHTS)
    picture = draw_matches(src, trg, points, points, scores=scores, caption=caption)
    pixels = np.asarray(picture)
    assert picture.width == 200 + GAP + 180 and picture.height > 160 + 40  # images, colour bar, caption
    strip = pixels[160:]
    assert len(_rows_with(strip, WARNING_TEXT, 30))  # the random-weights warning, in red
    scale = ColorScale.of(scores)
    assert (scale.low, scale.high) == (0.2, 0.9)
    for value in (0.2, 0.9):  # both ends of the scale appear in the colour bar
        assert len(_rows_with(strip, scale.color(value), 10))
    # each match drawn in its score's colour: the 0.9 match's dot is yellow-ish, the 0.2 one dark violet
    assert np.abs(pixels[120, 150].astype(int) - scale.color(0.9)).max() < 10
    assert np.abs(pixels[20, 20].astype(int) - scale.color(0.2)).max() < 10
    # numbers beside the dots: dark label pixels right of the first source dot, where the image is grey
    label = pixels[5:20, 26:40]
    assert (label.max(axis=2) < 60).any()
    plain = draw_matches(src, trg, points, points)  # no scores, no caption: just the two images
    assert plain.size == (200 + GAP + 180, 160)


def test_pca_beside_the_photo_with_a_caption():
    from ditf_runtime.annotate import Caption
    from ditf_runtime.draw import draw_pca

    rng = np.random.default_rng(0)
    features = FeatureMap(rng.standard_normal((1, 8, 4, 6)), (120, 180), (64, 96), 16)
    photo = Image.new("RGB", (180, 120), (250, 250, 250))
    picture = draw_pca(features, image=photo, caption=Caption(("a caption",)))
    assert picture.width == 180 + GAP + 180 and picture.height > 120
    assert np.asarray(picture)[30, 45].tolist() == [250, 250, 250]  # the photo on the left
    wide = FeatureMap(features.array, (200, 330), (64, 96), 16)
    assert draw_pca(wide).size == (330, 200)  # PCA alone, no caption

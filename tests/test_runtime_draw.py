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
    src = Image.new("RGB", (60, 40), (0, 0, 0))
    trg = Image.new("RGB", (50, 70), (0, 0, 0))
    path = tmp_path / "pics" / "matches.png"
    picture = draw_matches(src, trg, [[10, 10], [50, 30]], [[5, 60], [40, 20]], correct=[True, False], path=path)
    assert picture.size == (60 + GAP + 50, 70)
    saved = Image.open(path)
    assert saved.format == "PNG" and saved.size == picture.size
    pixels = np.asarray(picture)
    assert pixels[10, 10].any() and pixels[60, 60 + GAP + 5].any()  # dots drawn on black
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

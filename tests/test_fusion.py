"""DiTF + DINOv2 fusion (issue 12): flux-tiny fused with dinov2-tiny, against a naive implementation.

The documented recipe, written out naively here (per-pixel loops, float64): each model's map resampled
bilinearly (align_corners=False) to the finer grid, every token L2-normalised, multiplied by its weight,
then each part upsampled bilinearly to the image size, the parts concatenated, cosine, argmax over every
target pixel. The runtime computes the fused map at the finer grid and matches it with the unchanged exact
low-resolution matcher; the two must pick the same pixel for every point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ditf_runtime
from ditf_runtime.errors import InputError
from ditf_runtime.fusion import FusedExtractor, fuse_maps, resize_bilinear
from ditf_runtime.noise import default_noise
from ditf_runtime.preprocess import Preprocess
from runtime_graphs import build_tiny_export, with_geometry
from test_runtime_matching import TIE_TOLERANCE, border_and_random_points, naive_upsample

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _small(name: str, size: tuple[int, int]) -> np.ndarray:
    """An example photo as a small uint8 array (the naive reference loops over its pixels)."""
    image = Image.open(EXAMPLES / name).convert("RGB").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(image)


@pytest.fixture(scope="module")
def pair():
    return _small("cat-a.jpg", (80, 120)), _small("cat-b.jpg", (72, 108))


@pytest.fixture(scope="module")
def exports(flux_tiny_export, dinov2_tiny_export):
    return flux_tiny_export, dinov2_tiny_export(False)


def _naive_fused(maps: list[np.ndarray], weights, image_size) -> np.ndarray:
    """The recipe, naively: [sum C, H, W] float64 at image resolution."""
    grids = [m.shape[1:] for m in maps]
    finer = max(range(len(grids)), key=lambda k: (grids[k][0] * grids[k][1], grids[k][0], -k))
    parts = []
    for array, weight in zip(maps, weights):
        on_grid = naive_upsample(array.astype(np.float64), *grids[finer])
        unit = on_grid / np.maximum(np.linalg.norm(on_grid, axis=0), 1e-12)
        parts.append(naive_upsample(weight * unit, *image_size))
    return np.concatenate(parts)


def _naive_matches(src_maps, trg_maps, weights, points, src_size, trg_size):
    up_src = _naive_fused(src_maps, weights, src_size)
    up_trg = _naive_fused(trg_maps, weights, trg_size).reshape(up_src.shape[0], -1)
    up_trg /= np.maximum(np.linalg.norm(up_trg, axis=0), 1e-12)
    cosine = np.stack([up_src[:, y, x] / max(np.linalg.norm(up_src[:, y, x]), 1e-12) @ up_trg for x, y in points])
    return cosine


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.3, 0.7)])
def test_fused_matching_equals_the_naive_recipe_on_every_point(weights, exports, pair):
    """Unequal grids: flux-tiny at 128 px (8 cells on the long side), dinov2-tiny at 224 (16): the flux map
    is resampled to the DINOv2 grid."""
    flux_dir, dino_dir = exports
    with ditf_runtime.load(flux_dir, threads=1) as flux, ditf_runtime.load(dino_dir, threads=1) as dino:
        singles = [m.extract(list(pair)) for m in (flux, dino)]
    with ditf_runtime.load(flux_dir, dino_dir, weights=weights, threads=1) as fused:
        src, trg = fused.extract(list(pair))
    assert src.grid_size == singles[1][0].grid_size != singles[0][0].grid_size  # DINOv2's grid is the finer
    assert (src.stride, src.input_size) == (14, singles[1][0].input_size) and src.image_size == (80, 120)
    assert src.channels == 64 + 32
    points = border_and_random_points(src.image_size, 120, np.random.default_rng(1))
    got, scores = ditf_runtime.transfer_keypoints(src, trg, points, return_scores=True)
    cosine = _naive_matches([s[0].array[0] for s in singles], [s[1].array[0] for s in singles], weights, points,
                            src.image_size, trg.image_size)
    chosen = cosine[np.arange(len(points)), got[:, 1] * trg.image_size[1] + got[:, 0]]
    best = cosine.max(axis=1)
    assert np.all(chosen >= best - TIE_TOLERANCE), f"{np.mean(chosen >= best - TIE_TOLERANCE):.4f} agreement"
    np.testing.assert_allclose(scores, best, atol=1e-6)  # fused maps are stored float32
    # the fused cosine is not the weighted mean of the per-model cosines (interpolated unit tokens are shorter)
    per_model = [ditf_runtime.transfer_keypoints(s[0], s[1], points, return_scores=True)[1] for s in singles]
    assert not np.allclose(scores, weights[0] ** 2 * per_model[0] + weights[1] ** 2 * per_model[1], atol=1e-3)


def test_resampling_is_pytorchs_bilinear():
    rng = np.random.default_rng(0)
    for grid, size in (((7, 5), (16, 11)), ((16, 24), (11, 16)), ((3, 4), (3, 4)), ((9, 13), (4, 20))):
        x = rng.standard_normal((6, *grid)).astype(np.float32)
        theirs = torch.nn.functional.interpolate(torch.from_numpy(x)[None].double(), size=size, mode="bilinear",
                                                 align_corners=False)[0].numpy()
        np.testing.assert_allclose(resize_bilinear(x, size), theirs, rtol=1e-12, atol=1e-12)


def test_fused_map_layout_and_the_recipe_step_by_step():
    rng = np.random.default_rng(3)
    a = ditf_runtime.FeatureMap(rng.standard_normal((1, 5, 4, 6)), (40, 60), (64, 96), 16, "x")
    b = ditf_runtime.FeatureMap(rng.standard_normal((1, 3, 6, 9)), (40, 60), (84, 126), 14, "x")
    fused = fuse_maps([a, b], (0.25, 0.75))
    assert fused.shape == (1, 8, 6, 9) and (fused.stride, fused.input_size) == (14, (84, 126))
    up = resize_bilinear(a.array[0], (6, 9))
    np.testing.assert_allclose(fused.array[0, :5], 0.25 * up / np.linalg.norm(up, axis=0), rtol=1e-6)
    np.testing.assert_allclose(fused.array[0, 5:], 0.75 * b.array[0] / np.linalg.norm(b.array[0], axis=0), rtol=1e-6)
    with pytest.raises(InputError, match="one image"):
        fuse_maps([a, ditf_runtime.FeatureMap(b.array, (41, 60), (84, 126), 14)], (0.5, 0.5))


def test_weights_one_zero_on_equal_grids(exports, pair):
    """flux-tiny at 128 px and dinov2-tiny at 112 px share one 5x8 grid (80x120 images). Weights (1, 0) then give exactly
    flux's matches on its per-token normalised map (the zero part adds nothing); not necessarily its raw
    map's: normalising before bilinear upsampling reweights neighbouring cells (constructed case below)."""
    flux_dir, dino_dir = exports
    with ditf_runtime.load(flux_dir, threads=1) as flux:
        raw = flux.extract(list(pair))
    with ditf_runtime.load(flux_dir, dino_dir, weights=(1.0, 0.0), threads=1) as fused_ex:
        fused = fused_ex.extract(list(pair), size=(128, 112))
    assert fused[0].grid_size == raw[0].grid_size == (5, 8)
    assert not fused[0].array[0, 64:].any()
    unit = [ditf_runtime.FeatureMap(m.array / np.linalg.norm(m.array, axis=1, keepdims=True), m.image_size,
                                    m.input_size, m.stride) for m in raw]
    points = border_and_random_points(pair[0].shape[:2], 200, np.random.default_rng(2))
    got, got_scores = ditf_runtime.transfer_keypoints(*fused, points, return_scores=True)
    want, want_scores = ditf_runtime.transfer_keypoints(*unit, points, return_scores=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)
    raw_xy = ditf_runtime.transfer_keypoints(*raw, points)
    print(f"weights (1, 0) vs flux-tiny's raw map: {np.mean(np.all(raw_xy == got, axis=1)):.3f} of points agree")
    # the constructed case: two target cells of different norm; the raw map's best pixel moves toward the
    # small cell, the normalised map's sits halfway
    target = np.array([[[10.0, 0.0]], [[0.0, 1.0]]])  # [C=2, h=1, w=2]: cells (10, 0) and (0, 1)
    source = np.array([[[1.0]], [[1.0]]])  # [C=2, 1, 1]: equal parts of both directions
    x_raw = ditf_runtime.transfer_keypoints(source, target, [[0, 0]], (1, 1), (1, 40))[0, 0]
    x_unit = ditf_runtime.transfer_keypoints(source, target / np.linalg.norm(target, axis=0), [[0, 0]], (1, 1),
                                             (1, 40))[0, 0]
    assert x_unit in (19, 20) and x_raw > 25


def test_unequal_grids_weights_one_zero_resample_the_single_map(exports, pair):
    flux_dir, dino_dir = exports
    with ditf_runtime.load(flux_dir, dino_dir, weights=(1.0, 0.0), threads=1) as fused_ex:
        fused = fused_ex.extract([pair[0]])[0]
    with ditf_runtime.load(flux_dir, threads=1) as flux:
        single = flux.extract([pair[0]])[0]
    assert fused.grid_size != single.grid_size  # resampled to DINOv2's grid: the maps differ, as documented


def test_parallel_and_sequential_give_the_same_maps(exports, pair):
    flux_dir, dino_dir = exports
    with ditf_runtime.load(flux_dir, dino_dir, parallel=True) as a, ditf_runtime.load(flux_dir, dino_dir,
                                                                                        parallel=False) as b:
        assert a.parallel and not b.parallel
        for x, y in zip(a.extract(list(pair), seed=3), b.extract(list(pair), seed=3)):
            np.testing.assert_array_equal(x.array, y.array)


def test_each_model_keeps_its_own_preprocessing_and_noise(exports, pair):
    flux_dir, dino_dir = exports
    with ditf_runtime.load(flux_dir, threads=1) as flux, ditf_runtime.load(dino_dir, threads=1) as dino:
        want = [flux.extract([pair[0]], seed=5)[0], dino.extract([pair[0]])[0]]
    with ditf_runtime.load(flux_dir, dino_dir, threads=1) as fused:
        parts = fused.extract_parts([pair[0]], seed=5)[0]
        np.testing.assert_array_equal(parts.maps[0].array, want[0].array)  # its own 128-px input and noise
        np.testing.assert_array_equal(parts.maps[1].array, want[1].array)  # its own 224-px input, no noise
        np.testing.assert_array_equal(parts.fused().array, fused.extract([pair[0]], seed=5)[0].array)
        first, second = (member.prepare(pair[0]) for member in fused.members)
        noise = default_noise(first.pixels, fused.members[0].geometry, fused.members[0].manifest.feature.ensemble, 5)
        features = fused.run([first.pixels[None], second.pixels[None]], [noise[None], None])
        np.testing.assert_allclose(features[0], parts.fused().array[0], rtol=1e-6, atol=1e-7)


def test_bad_fusions_are_refused(exports, tmp_path):
    flux_dir, dino_dir = exports
    for weights, message in (((1.2, -0.2), r"must lie in \[0, 1\]"), ((0.5, 0.6), "must sum to 1"),
                             ((1.0,), "one fusion weight per model")):
        with pytest.raises(InputError, match=message):
            ditf_runtime.load(flux_dir, dino_dir, weights=weights)
    with pytest.raises(InputError, match="exactly 2 exports, got 3"):
        ditf_runtime.load(flux_dir, dino_dir, flux_dir)
    with pytest.raises(InputError, match="pass a second export folder"):
        ditf_runtime.load(flux_dir, weights=(0.5, 0.5))
    with ditf_runtime.load(flux_dir, dino_dir) as fused, pytest.raises(InputError, match="one size per model"):
        fused.extract([np.zeros((32, 32, 3), np.uint8)], size=(256, 224, 112))
    # a video export (geometry.frame_axis) with an image export
    video = tmp_path / "video"
    build_tiny_export(video, geometry=with_geometry(frame_axis=1))
    with pytest.raises(InputError, match="cannot fuse a image export .* with a video export"):
        ditf_runtime.load(flux_dir, video)
    # images that cannot share one decode: one export applies EXIF orientation, the other does not
    no_exif = tmp_path / "no-exif"
    build_tiny_export(no_exif, preprocess=Preprocess(long_side=64, exif_transpose=False))
    with pytest.raises(InputError, match="EXIF orientation .* Choose one for both"):
        ditf_runtime.load(flux_dir, no_exif)
    with ditf_runtime.load(flux_dir, no_exif, exif_transpose=True) as ok:  # one choice for both: fine
        assert isinstance(ok, FusedExtractor) and ok.exif_transpose

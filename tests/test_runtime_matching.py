"""The exact low-resolution matcher against a naive upsample-then-argmax reference."""

from __future__ import annotations

import numpy as np
import pytest
from ditf_runtime import mutual_nn_matches, transfer_keypoints
from ditf_runtime.errors import InputError
from ditf_runtime.features import FeatureMap
from ditf_runtime.matching import cell_centers, sample_vectors

TIE_TOLERANCE = 1e-12  # float64 cosine; ties (e.g. in the clamped border band) count as agreement


def naive_upsample(features: np.ndarray, height: int, width: int) -> np.ndarray:
    """F.interpolate(mode='bilinear', align_corners=False) written out per output pixel: [C, H, W]."""
    channels, grid_h, grid_w = features.shape
    out = np.empty((channels, height, width))
    for y in range(height):
        sy = max((y + 0.5) * grid_h / height - 0.5, 0.0)
        y0 = int(sy)
        y1 = min(y0 + 1, grid_h - 1)
        ly = sy - y0
        for x in range(width):
            sx = max((x + 0.5) * grid_w / width - 0.5, 0.0)
            x0 = int(sx)
            x1 = min(x0 + 1, grid_w - 1)
            lx = sx - x0
            out[:, y, x] = (1 - ly) * ((1 - lx) * features[:, y0, x0] + lx * features[:, y0, x1]) + ly * (
                (1 - lx) * features[:, y1, x0] + lx * features[:, y1, x1]
            )
    return out


def naive_cosine_maps(src, trg, src_xy, src_size, trg_size):
    """For each source point: the full [H*W] cosine map over the target (the authors' algorithm)."""
    up_src = naive_upsample(src.astype(np.float64), *src_size)
    up_trg = naive_upsample(trg.astype(np.float64), *trg_size).reshape(trg.shape[0], -1)
    up_trg /= np.maximum(np.linalg.norm(up_trg, axis=0), 1e-12)
    maps = []
    for x, y in src_xy:
        vector = up_src[:, y, x]
        maps.append(vector / max(np.linalg.norm(vector), 1e-12) @ up_trg)
    return up_src, np.stack(maps)


def border_and_random_points(size, count, rng):
    height, width = size
    border = [
        (x, y) for x in (0, 1, width // 2, width - 2, width - 1) for y in (0, 1, height // 2, height - 2, height - 1)
    ]
    random = np.stack([rng.integers(0, width, count), rng.integers(0, height, count)], axis=1)
    return np.concatenate([np.array(border), random])


CASES = [
    # channels, source grid (h, w), source image (H, W), target grid, target image
    (16, (12, 9), (190, 150), (10, 13), (170, 210)),
    (64, (12, 9), (190, 150), (12, 9), (190, 150)),
    (32, (6, 5), (97, 80), (9, 7), (8, 6)),  # a target smaller than its grid: downsampling weights
]


@pytest.mark.parametrize("channels, src_grid, src_size, trg_grid, trg_size", CASES)
def test_exact_matcher_agrees_with_naive_upsampling(channels, src_grid, src_size, trg_grid, trg_size):
    rng = np.random.default_rng(channels)
    src = rng.standard_normal((channels,) + src_grid).astype(np.float32)
    trg = rng.standard_normal((channels,) + trg_grid).astype(np.float32)
    points = border_and_random_points(src_size, 150, rng)
    got, scores = transfer_keypoints(src, trg, points, src_size, trg_size, return_scores=True)
    _, cosine = naive_cosine_maps(src, trg, points, src_size, trg_size)
    flat = got[:, 1] * trg_size[1] + got[:, 0]
    chosen = cosine[np.arange(len(points)), flat]
    best = cosine.max(axis=1)
    agree = np.mean(chosen >= best - TIE_TOLERANCE)
    assert agree >= 0.999, f"{agree:.4f} agreement"
    np.testing.assert_allclose(scores, best, atol=1e-9)
    # A different pixel than naive argmax is always a tie: random vectors often peak at a corner
    # cell, whose clamped border band repeats one vector over many pixels.


def test_source_vectors_are_the_upsampled_ones():
    rng = np.random.default_rng(1)
    src = rng.standard_normal((8, 7, 5))
    size = (61, 43)
    points = border_and_random_points(size, 40, rng)
    up = naive_upsample(src, *size)
    expected = up[:, points[:, 1], points[:, 0]].T
    np.testing.assert_allclose(sample_vectors(src, size, points), expected, atol=1e-12)


def test_chunking_does_not_change_the_answer():
    rng = np.random.default_rng(2)
    src, trg = rng.standard_normal((2, 24, 9, 11)).astype(np.float32)
    points = border_and_random_points((140, 170), 30, rng)
    results = [
        transfer_keypoints(src, trg, points, (140, 170), (150, 175), chunk_rows=rows) for rows in (1, 7, 1000, None)
    ]
    for other in results[1:]:
        assert np.array_equal(results[0], other)


def test_feature_maps_carry_their_sizes():
    rng = np.random.default_rng(3)
    src = FeatureMap(rng.standard_normal((1, 16, 6, 8)), (90, 120), (96, 128), 16)
    trg = FeatureMap(rng.standard_normal((1, 16, 6, 8)), (80, 110), (96, 128), 16)
    points = [[5, 7], [119, 89]]
    assert np.array_equal(
        transfer_keypoints(src, trg, points),
        transfer_keypoints(np.asarray(src)[0], np.asarray(trg), points, (90, 120), (80, 110)),
    )


def test_identical_maps_map_points_to_themselves():
    rng = np.random.default_rng(4)
    features = rng.standard_normal((32, 10, 12))
    size = (160, 192)
    # away from the clamped border band, every pixel's vector is unique
    points = np.stack([rng.integers(10, 180, 50), rng.integers(10, 150, 50)], axis=1)
    assert np.array_equal(transfer_keypoints(features, features, points, size, size), points)


def test_bad_keypoints_are_refused():
    features = np.zeros((4, 3, 3), np.float32)
    with pytest.raises(InputError, match="outside"):
        transfer_keypoints(features, features, [[48, 0]], (48, 48), (48, 48))
    with pytest.raises(InputError, match="integer"):
        transfer_keypoints(features, features, [[1.5, 0]], (48, 48), (48, 48))
    with pytest.raises(InputError, match=r"\[N, 2\]"):
        transfer_keypoints(features, features, [[1, 2, 3]], (48, 48), (48, 48))
    with pytest.raises(InputError, match="channels"):
        transfer_keypoints(features, np.zeros((5, 3, 3)), [[1, 2]], (48, 48), (48, 48))
    with pytest.raises(InputError, match="src_size"):
        transfer_keypoints(features, features, [[1, 2]])
    assert transfer_keypoints(features, features, np.zeros((0, 2)), (48, 48), (48, 48)).shape == (0, 2)


def test_mutual_nearest_neighbours_brute_force():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((16, 5, 7))
    b = rng.standard_normal((16, 6, 4))
    xy_a, xy_b, scores = mutual_nn_matches(a, b, chunk=4)
    unit_a = a.reshape(16, -1).T / np.linalg.norm(a.reshape(16, -1).T, axis=1, keepdims=True)
    unit_b = b.reshape(16, -1).T / np.linalg.norm(b.reshape(16, -1).T, axis=1, keepdims=True)
    sim = unit_a @ unit_b.T
    ab, ba = sim.argmax(1), sim.argmax(0)
    expected = {(i, ab[i]) for i in range(len(ab)) if ba[ab[i]] == i}
    got = {(y * 7 + x, yb * 4 + xb) for (x, y), (xb, yb) in zip(xy_a, xy_b)}
    assert got == expected
    assert np.all(np.diff(scores) <= 0)
    np.testing.assert_allclose(
        scores, [sim[i, j] for i, j in ((y * 7 + x, yb * 4 + xb) for (x, y), (xb, yb) in zip(xy_a, xy_b))]
    )


def test_mutual_nearest_neighbours_recover_a_flip():
    features = np.random.default_rng(6).standard_normal((1, 24, 4, 6))
    xy_a, xy_b, _ = mutual_nn_matches(features, features[..., ::-1])
    assert len(xy_a) == 24
    assert np.array_equal(xy_b[:, 0], 5 - xy_a[:, 0]) and np.array_equal(xy_b[:, 1], xy_a[:, 1])


def test_cell_centers():
    assert cell_centers(np.array([[0, 0], [3, 2]]), (3, 4), (48, 64)).tolist() == [[8, 8], [56, 40]]


def _exact_upsample_argmax(trg: np.ndarray, size: tuple[int, int], vector: np.ndarray) -> tuple[int, int]:
    """Upsample-then-argmax in exact rational arithmetic: the first pixel (row-major) of highest cosine.

    Bilinear weights are rationals here, so a border band that repeats one cell is a band of exact ties.
    Cosines are compared through dot |dot| / |t|^2 (same order as dot / |t| for a fixed source vector).
    """
    from fractions import Fraction

    channels, grid_h, grid_w = trg.shape
    height, width = size
    cells = [[[Fraction(float(v)) for v in trg[:, i, j]] for j in range(grid_w)] for i in range(grid_h)]
    s = [Fraction(float(v)) for v in vector]

    def stencil(o: int, n_in: int, n_out: int):
        src = max((o + Fraction(1, 2)) * Fraction(n_in, n_out) - Fraction(1, 2), Fraction(0))
        i0 = min(int(src), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), src - i0

    best, best_xy = None, None
    for y in range(height):
        i0, i1, ly = stencil(y, grid_h, height)
        for x in range(width):
            j0, j1, lx = stencil(x, grid_w, width)
            t = [(1 - ly) * ((1 - lx) * cells[i0][j0][c] + lx * cells[i0][j1][c])
                 + ly * ((1 - lx) * cells[i1][j0][c] + lx * cells[i1][j1][c]) for c in range(channels)]
            dot, norm2 = sum(a * b for a, b in zip(s, t)), sum(v * v for v in t)
            key = dot * abs(dot) / norm2
            if best is None or key > best:  # strict: the first pixel keeps a tie
                best, best_xy = key, (x, y)
    return best_xy


@pytest.mark.parametrize("grid, size", [((3, 4), (20, 23)), ((4, 3), (29, 17)), ((5, 5), (37, 41)), ((2, 3), (15, 22))])
def test_border_band_ties_break_like_exact_upsample_then_argmax(grid, size):
    """A source vector equal to a right/bottom edge cell peaks on the whole border band that repeats that
    cell: every pixel there is an exact tie, and upsample-then-argmax takes the band's first pixel."""
    from ditf_runtime.matching import UpsampledTarget

    rng = np.random.default_rng(sum(grid) + sum(size))
    trg = rng.standard_normal((3, *grid)).astype(np.float32)
    target = UpsampledTarget(trg, size)
    corners = [(grid[0] - 1, grid[1] - 1), (grid[0] - 1, 0), (0, grid[1] - 1), (grid[0] - 1, grid[1] // 2)]
    for i, j in corners:
        vector = trg[:, i, j].astype(np.float64) * 0.7  # the same direction as the edge cell
        (got,), _ = target.best_matches(vector[None])
        assert tuple(int(v) for v in got) == _exact_upsample_argmax(trg, size, vector), (i, j)
    # and through the public function, from a source map holding that vector at a pixel
    src = np.repeat(trg[:, -1:, -1:], 2, axis=1).repeat(2, axis=2)
    got = transfer_keypoints(src, trg, [[0, 0]], (8, 8), size)
    assert tuple(got[0]) == _exact_upsample_argmax(trg, size, trg[:, -1, -1])

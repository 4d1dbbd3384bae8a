"""Keypoint transfer with the authors' semantics, computed exactly at low resolution.

The authors (eval_spair.py) upsample both feature maps bilinearly (align_corners=False) to the
original image sizes, take the source keypoint's vector, and pick the target pixel of highest
cosine similarity. An upsampled 500x375 map at C=3072 is 2.3 GB in fp32; this module gets the
same argmax without ever building one:

* the target vector at a pixel is t = sum_k w_k T_k over the four corner cells k of the
  bilinear stencil, so the dot product <s, t> = sum_k w_k <s, T_k>: upsample the small [h, w]
  map of dot products with the same stencil;
* |t|^2 = sum_{k,l} w_k w_l <T_k, T_l>, a quadratic form in the 2x2 block's Gram matrix, whose
  entries are each cell's inner products with its right, down, diagonal and anti-diagonal
  neighbours, precomputed once per target map (O(h w C)).

Everything runs in float64 (the authors used fp16) and the target is processed in row chunks,
so memory is O(rows x W x N) for N keypoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError
from .features import bilinear_stencil  # noqa: F401 - also this module's name for it

# F.normalize's eps: a zero vector has cosine 0 with everything instead of NaN.
_NORM_EPS = 1e-12
# Elements of the per-chunk [rows, W, N] float64 score block (8 MiB; a few such temporaries live at once).
_CHUNK_ELEMENTS = 1 << 20


def _as_chw(features: Any, label: str) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise InputError(f"{label} features must be [C, h, w] or [1, C, h, w], got {array.shape}")
        array = array[0]
    if array.ndim != 3 or min(array.shape) < 1:
        raise InputError(f"{label} features must be [C, h, w] or [1, C, h, w], got {array.shape}")
    return array


def _image_size(size: Any, features: Any, label: str) -> tuple[int, int]:
    if size is None:
        size = getattr(features, "image_size", None)
        if size is None:
            raise InputError(f"{label}_size (height, width) is required for plain arrays")
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise InputError(f"{label}_size must be positive (height, width), got {size}")
    return height, width


def _padded_hwc(chw: np.ndarray) -> np.ndarray:
    """[C, h, w] -> float64 [h + 1, w + 1, C], last row and column repeated."""
    hwc = np.ascontiguousarray(np.moveaxis(chw, 0, -1), dtype=np.float64)
    return np.pad(hwc, ((0, 1), (0, 1), (0, 0)), mode="edge")


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ijc,ijc->ij", a, b)


class UpsampledTarget:
    """A target feature map seen at image resolution, without materialising it.

    Holds the padded map and the Gram entries of each 2x2 block; `norms(rows)` gives |t|^2 of
    whole pixel rows, `best_matches(vectors)` the argmax of cosine similarity per vector.
    """

    def __init__(self, features: Any, image_size: tuple[int, int]) -> None:
        chw = _as_chw(features, "target")
        self.channels, self.grid_h, self.grid_w = chw.shape
        self.height, self.width = image_size
        self.padded = _padded_hwc(chw)
        p = self.padded
        # Indexed by the block's top-left cell (i, j): corners 00=(i,j) 01=(i,j+1) 10=(i+1,j) 11=(i+1,j+1).
        self.sq = _rowdot(p, p)  # [h+1, w+1] |T|^2
        self.right = _rowdot(p[:, :-1], p[:, 1:])  # [h+1, w] <T_ij, T_i,j+1>
        self.down = _rowdot(p[:-1], p[1:])  # [h, w+1] <T_ij, T_i+1,j>
        self.diag = _rowdot(p[:-1, :-1], p[1:, 1:])  # [h, w] <T_00, T_11>
        self.anti = _rowdot(p[:-1, 1:], p[1:, :-1])  # [h, w] <T_01, T_10>
        self.row_i0, self.row_w0, self.row_w1 = bilinear_stencil(self.grid_h, self.height)
        self.col_j0, self.col_w0, self.col_w1 = bilinear_stencil(self.grid_w, self.width)

    def norms(self, rows: slice) -> np.ndarray:
        """|t|^2 for pixel rows `rows` and all columns: [len(rows), W]."""
        i = self.row_i0[rows][:, None]
        j = self.col_j0[None, :]
        a0, a1 = self.row_w0[rows][:, None], self.row_w1[rows][:, None]
        b0, b1 = self.col_w0[None, :], self.col_w1[None, :]
        c00, c01, c10, c11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
        squares = (
            c00 * c00 * self.sq[i, j]
            + c01 * c01 * self.sq[i, j + 1]
            + c10 * c10 * self.sq[i + 1, j]
            + c11 * c11 * self.sq[i + 1, j + 1]
        )
        cross = (
            c00 * c01 * self.right[i, j]
            + c10 * c11 * self.right[i + 1, j]
            + c00 * c10 * self.down[i, j]
            + c01 * c11 * self.down[i, j + 1]
            + c00 * c11 * self.diag[i, j]
            + c01 * c10 * self.anti[i, j]
        )
        return np.maximum(squares + 2.0 * cross, 0.0)  # PSD form; clip rounding below zero

    def dots(self, vectors: np.ndarray, rows: slice, cell_dots: np.ndarray | None = None) -> np.ndarray:
        """<s_n, t> for pixel rows `rows`: [len(rows), W, N] (bilinear upsampling of cell dots)."""
        if cell_dots is None:
            cell_dots = self.padded @ vectors.T  # [h+1, w+1, N]
        i = self.row_i0[rows]
        along_rows = (
            self.row_w0[rows][:, None, None] * cell_dots[i] + self.row_w1[rows][:, None, None] * cell_dots[i + 1]
        )  # [R, w+1, N]
        j = self.col_j0
        return self.col_w0[None, :, None] * along_rows[:, j] + self.col_w1[None, :, None] * along_rows[:, j + 1]

    def best_matches(self, vectors: np.ndarray, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per vector [N, C]: target pixel (x, y) of highest cosine, and that cosine.

        Ties go to the first pixel in row-major order, like argmax over the flattened map.
        """
        vectors = np.asarray(vectors, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != self.channels:
            raise InputError(f"source vectors must be [N, {self.channels}], got {vectors.shape}")
        count = vectors.shape[0]
        source_norms = np.maximum(np.linalg.norm(vectors, axis=1), _NORM_EPS)
        cell_dots = self.padded @ vectors.T
        if chunk_rows is None:
            chunk_rows = max(1, _CHUNK_ELEMENTS // max(1, self.width * max(count, 1)))
        best_score = np.full(count, -np.inf)
        best_flat = np.zeros(count, dtype=np.int64)
        for start in range(0, self.height, chunk_rows):
            rows = slice(start, min(start + chunk_rows, self.height))
            target_norms = np.maximum(np.sqrt(self.norms(rows)), _NORM_EPS)
            scores = self.dots(vectors, rows, cell_dots) / target_norms[:, :, None]
            flat = scores.reshape(-1, count)
            local = flat.argmax(axis=0)
            local_best = flat[local, np.arange(count)]
            better = local_best > best_score  # strict: an earlier chunk keeps ties
            best_score[better] = local_best[better]
            best_flat[better] = local[better] + start * self.width
        xy = np.stack([best_flat % self.width, best_flat // self.width], axis=1)
        return xy, best_score / source_norms

    def best_beyond(self, vectors: np.ndarray, centers_xy: np.ndarray, radius: float,
                    chunk_rows: int | None = None) -> np.ndarray:
        """Per vector [N, C]: the highest cosine over target pixels farther than `radius` pixels from its
        center (x, y) [N, 2]; -inf where no pixel is that far (how decisive a match is: runtime.parity)."""
        vectors = np.asarray(vectors, dtype=np.float64)
        centers = np.asarray(centers_xy, dtype=np.float64)
        count = vectors.shape[0]
        source_norms = np.maximum(np.linalg.norm(vectors, axis=1), _NORM_EPS)
        cell_dots = self.padded @ vectors.T
        if chunk_rows is None:
            chunk_rows = max(1, _CHUNK_ELEMENTS // max(1, self.width * max(count, 1)))
        best = np.full(count, -np.inf)
        dx2 = (np.arange(self.width, dtype=np.float64)[:, None] - centers[:, 0]) ** 2  # [W, N]
        for start in range(0, self.height, chunk_rows):
            rows = slice(start, min(start + chunk_rows, self.height))
            target_norms = np.maximum(np.sqrt(self.norms(rows)), _NORM_EPS)
            scores = self.dots(vectors, rows, cell_dots) / target_norms[:, :, None]  # [R, W, N]
            dy2 = (np.arange(rows.start, rows.stop, dtype=np.float64)[:, None] - centers[:, 1]) ** 2  # [R, N]
            scores[dx2[None] + dy2[:, None] <= radius * radius] = -np.inf
            best = np.maximum(best, scores.reshape(-1, count).max(axis=0))
        return best / source_norms


def sample_vectors(features: Any, image_size: tuple[int, int], xy: np.ndarray) -> np.ndarray:
    """Bilinearly upsampled feature vectors at integer pixels (x, y): [N, C], from 4 corners each."""
    chw = _as_chw(features, "source")
    _, grid_h, grid_w = chw.shape
    height, width = image_size
    xy = _pixel_coordinates(xy, image_size)
    i0, a0, a1 = bilinear_stencil(grid_h, height)
    j0, b0, b1 = bilinear_stencil(grid_w, width)
    padded = _padded_hwc(chw)
    x, y = xy[:, 0], xy[:, 1]
    i, j = i0[y], j0[x]
    return (
        (a0[y] * b0[x])[:, None] * padded[i, j]
        + (a0[y] * b1[x])[:, None] * padded[i, j + 1]
        + (a1[y] * b0[x])[:, None] * padded[i + 1, j]
        + (a1[y] * b1[x])[:, None] * padded[i + 1, j + 1]
    )


def _pixel_coordinates(xy: Any, image_size: tuple[int, int]) -> np.ndarray:
    array = np.asarray(xy)
    if array.ndim == 1 and array.shape[0] == 2:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2:
        raise InputError(f"keypoints must be [N, 2] pixel (x, y), got shape {array.shape}")
    if array.size and not np.all(np.isfinite(array.astype(np.float64))):
        raise InputError("keypoints must be finite")
    rounded = np.rint(array.astype(np.float64))
    if not np.array_equal(rounded, array.astype(np.float64)):
        raise InputError("keypoints must be integer pixel coordinates (x, y); round them first")
    coords = rounded.astype(np.int64)
    height, width = image_size
    outside = (coords[:, 0] < 0) | (coords[:, 0] >= width) | (coords[:, 1] < 0) | (coords[:, 1] >= height)
    if outside.any():
        bad = coords[outside][:3].tolist()
        raise InputError(f"{int(outside.sum())} keypoint(s) outside the {width}x{height} source image, e.g. {bad}")
    return coords


def transfer_keypoints(
    src_features: Any,
    trg_features: Any,
    src_xy: Any,
    src_size: tuple[int, int] | None = None,
    trg_size: tuple[int, int] | None = None,
    *,
    chunk_rows: int | None = None,
    return_scores: bool = False,
):
    """Where each source keypoint lands in the target image.

    Features are [C, h, w], [1, C, h, w] or FeatureMaps; `src_xy` is [N, 2] integer pixel (x, y)
    in the source image; sizes are the original images' (height, width) (taken from the
    FeatureMaps when omitted). Returns [N, 2] int64 target pixel (x, y) -- the argmax of cosine
    similarity between bilinearly upsampled maps, exactly, without upsampling -- and, with
    `return_scores`, the [N] cosine similarities at those pixels.
    """
    src_size = _image_size(src_size, src_features, "src")
    trg_size = _image_size(trg_size, trg_features, "trg")
    src_chw = _as_chw(src_features, "source")
    trg_chw = _as_chw(trg_features, "target")
    if src_chw.shape[0] != trg_chw.shape[0]:
        raise InputError(f"source has {src_chw.shape[0]} channels, target {trg_chw.shape[0]}")
    vectors = sample_vectors(src_chw, src_size, src_xy)
    if vectors.shape[0] == 0:
        empty = np.zeros((0, 2), dtype=np.int64)
        return (empty, np.zeros(0)) if return_scores else empty
    xy, scores = UpsampledTarget(trg_chw, trg_size).best_matches(vectors, chunk_rows)
    return (xy, scores) if return_scores else xy


def track_points(
    frame_maps: Any,
    xy: Any,
    sizes: Any = None,
    *,
    chunk_rows: int | None = None,
    return_scores: bool = False,
):
    """Follow pixels of frame 0 through a clip's frames (e.g. `Extractor.extract_video`'s FeatureMaps).

    Every frame is matched to frame 0 directly with `transfer_keypoints`' semantics (the query
    vectors are always frame 0's), not chained frame to frame: errors do not accumulate and a point
    lost for a few frames (occlusion) is found again; appearance that drifts far from frame 0 over
    a long clip is not followed. `xy` is [N, 2] integer pixel (x, y) in frame 0; `sizes` the
    frames' (height, width), taken from FeatureMaps when omitted. Returns [F, N, 2] int64 pixel
    (x, y) per frame (frame 0 is `xy` itself) and, with `return_scores`, [F, N] cosines (1 at frame 0).
    """
    maps = list(frame_maps)
    if not maps:
        raise InputError("track_points needs at least one frame")
    sizes = [None] * len(maps) if sizes is None else list(sizes)
    if len(sizes) != len(maps):
        raise InputError(f"{len(sizes)} sizes for {len(maps)} frames")
    if any(size is None and getattr(fm, "image_size", None) is None for size, fm in zip(sizes, maps)):
        raise InputError("sizes=[(height, width), ...] per frame is required for plain arrays")
    sizes = [_image_size(size, fm, "frame") for size, fm in zip(sizes, maps)]
    first = _as_chw(maps[0], "frame 0")
    start = _pixel_coordinates(xy, sizes[0])
    vectors = sample_vectors(first, sizes[0], start)
    tracks = np.empty((len(maps), len(start), 2), dtype=np.int64)
    scores = np.ones((len(maps), len(start)))
    tracks[0] = start
    for k in range(1, len(maps)):
        chw = _as_chw(maps[k], f"frame {k}")
        if chw.shape[0] != first.shape[0]:
            raise InputError(f"frame {k} has {chw.shape[0]} channels, frame 0 {first.shape[0]}")
        if len(start):
            tracks[k], scores[k] = UpsampledTarget(chw, sizes[k]).best_matches(vectors, chunk_rows)
    return (tracks, scores) if return_scores else tracks


def mutual_nn_matches(
    features_a: Any, features_b: Any, *, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense mutual nearest neighbours (cosine) at feature resolution.

    Returns cells of A [M, 2] and of B [M, 2] as (x, y) = (column, row), and their [M] cosine
    similarities, sorted best first. A cell pair is kept when each is the other's nearest.
    """
    a = _as_chw(features_a, "first")
    b = _as_chw(features_b, "second")
    if a.shape[0] != b.shape[0]:
        raise InputError(f"feature maps have {a.shape[0]} and {b.shape[0]} channels")
    _, _, width_a = a.shape
    _, _, width_b = b.shape
    unit_a = _unit_rows(a.reshape(a.shape[0], -1).T)
    unit_b = _unit_rows(b.reshape(b.shape[0], -1).T)
    nn_ab = np.empty(len(unit_a), dtype=np.int64)
    best_ab = np.empty(len(unit_a))
    best_ba = np.full(len(unit_b), -np.inf)
    nn_ba = np.zeros(len(unit_b), dtype=np.int64)
    for start in range(0, len(unit_a), chunk):
        sim = unit_a[start : start + chunk] @ unit_b.T  # [chunk, Nb]
        nn_ab[start : start + len(sim)] = sim.argmax(axis=1)
        best_ab[start : start + len(sim)] = sim.max(axis=1)
        column_best = sim.argmax(axis=0)
        column_score = sim[column_best, np.arange(sim.shape[1])]
        better = column_score > best_ba
        best_ba[better] = column_score[better]
        nn_ba[better] = column_best[better] + start
    cells_a = np.flatnonzero(nn_ba[nn_ab] == np.arange(len(unit_a)))
    cells_b = nn_ab[cells_a]
    scores = best_ab[cells_a]
    order = np.argsort(-scores, kind="stable")
    cells_a, cells_b, scores = cells_a[order], cells_b[order], scores[order]
    xy_a = np.stack([cells_a % width_a, cells_a // width_a], axis=1)
    xy_b = np.stack([cells_b % width_b, cells_b // width_b], axis=1)
    return xy_a, xy_b, scores


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), _NORM_EPS)


def distinct_points(points_xy: Any) -> np.ndarray:
    """[N, 2] pixels without repeats, first occurrence kept, order kept: mutual-nearest-neighbour cells of a
    source image smaller than its feature grid share pixels (a 1x1 image: all of them), and the same pixel
    always transfers to the same target pixel, so a repeat is the same match again, not another one."""
    points = np.asarray(points_xy).reshape(-1, 2)
    _, first = np.unique(points, axis=0, return_index=True)
    return points[np.sort(first)]


def cell_centers(cells_xy: np.ndarray, grid_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Feature cells (x, y) -> integer pixels at the cells' centres in an image of (height, width)."""
    grid_h, grid_w = grid_size
    height, width = image_size
    cells = np.asarray(cells_xy, dtype=np.float64)
    x = np.clip(np.floor((cells[:, 0] + 0.5) * width / grid_w), 0, width - 1)
    y = np.clip(np.floor((cells[:, 1] + 0.5) * height / grid_h), 0, height - 1)
    return np.stack([x, y], axis=1).astype(np.int64)

"""J (region IoU) and F (boundary F-measure) as the official DAVIS-2017 evaluation defines them.

Reproduces davis2017-evaluation (davis2017/metrics.py, utils.db_statistics) without OpenCV or
scikit-image:

- J = |pred & gt| / |pred | gt|, and 1 when both masks are empty.
- F: one-pixel boundary maps (a pixel is boundary when it differs from its right, lower or
  lower-right neighbour; the last row/column compare along the border only), each dilated by a
  disk of radius ceil(0.008 * image diagonal) (x^2 + y^2 <= r^2, pixels outside the image
  ignored); precision = matched predicted boundary / predicted boundary, recall likewise for the
  ground truth; both empty = 1, one empty = (1, 0) or (0, 1); F = 2PR / (P + R), 0 when P + R = 0.
- Per object over the scored frames: mean, recall (fraction of frames above 0.5) and decay (mean
  of the first quarter minus mean of the last quarter, the official binning).

The official code also accepts a void mask; its semi-supervised evaluation derives void from the
ground truth after already mapping 255 to 0, so void is always empty there, and here.
"""

from __future__ import annotations

import math

import numpy as np

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """J: intersection over union of two boolean masks; 1.0 when both are empty."""
    gt, pred = _pair(gt, pred)
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a boolean mask, offset half a pixel towards the origin."""
    mask = np.asarray(mask, dtype=bool)
    right = np.zeros_like(mask)
    below = np.zeros_like(mask)
    diagonal = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    below[:-1, :] = mask[1:, :]
    diagonal[:-1, :-1] = mask[1:, 1:]
    edges = (mask ^ right) | (mask ^ below) | (mask ^ diagonal)
    # The last row and column only look along the border (the official order of assignments).
    edges[-1, :] = mask[-1, :] ^ right[-1, :]
    edges[:, -1] = mask[:, -1] ^ below[:, -1]
    edges[-1, -1] = False
    return edges


def tolerance_radius(shape: tuple[int, int], bound_th: float = BOUNDARY_TOLERANCE) -> int:
    """Dilation radius in pixels: bound_th itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by the disk x^2 + y^2 <= radius^2; pixels beyond the border count as empty.

    Row by row of the disk: a horizontal run dilation (from a cumulative sum) shifted vertically.
    """
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0 or not mask.any():
        return mask.copy()
    height, width = mask.shape
    padded = np.pad(mask.astype(np.int32), ((0, 0), (radius + 1, radius)))
    sums = np.cumsum(padded, axis=1)
    runs: dict[int, np.ndarray] = {}  # half-width -> mask dilated horizontally by that much
    out = np.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        half = math.isqrt(radius * radius - dy * dy)
        if half not in runs:
            # sum of mask[:, j - half .. j + half] via the padded cumulative sum
            start = radius - half
            end = start + 2 * half + 1
            runs[half] = (sums[:, end : end + width] - sums[:, start : start + width]) > 0
        run = runs[half]
        if dy >= 0:
            out[: height - dy] |= run[dy:]
        else:
            out[-dy:] |= run[: height + dy]
    return out


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUNDARY_TOLERANCE) -> float:
    """F: boundary F-measure of two boolean masks with the official tolerance."""
    gt, pred = _pair(gt, pred)
    radius = tolerance_radius(gt.shape, bound_th)
    pred_edges = boundary_map(pred)
    gt_edges = boundary_map(gt)
    n_pred = int(np.count_nonzero(pred_edges))
    n_gt = int(np.count_nonzero(gt_edges))
    if n_pred == 0 or n_gt == 0:
        precision = 1.0 if n_pred == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        # Dilated maps are only read at boundary pixels: work inside their joint bounding box.
        rows, cols = np.nonzero(pred_edges | gt_edges)
        top, bottom = max(rows.min() - radius, 0), rows.max() + radius + 1
        left, right = max(cols.min() - radius, 0), cols.max() + radius + 1
        window = (slice(top, bottom), slice(left, right))
        pred_crop, gt_crop = pred_edges[window], gt_edges[window]
        precision = np.count_nonzero(pred_crop & dilate_disk(gt_crop, radius)) / n_pred
        recall = np.count_nonzero(gt_crop & dilate_disk(pred_crop, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(values) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F, as davis2017's db_statistics.

    Recall is the fraction of frames above 0.5. Decay: four bins over the frames with edges
    round(linspace(1, n, 5)) - 1 (each bin includes its right edge), first bin's mean minus last's.
    The edges are plain integers: the official uint8 cast wraps past 256 frames (DAVIS has fewer).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(values))
    recall = float(np.mean(values > 0.5))
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    first = values[edges[0] : edges[1] + 1]
    last = values[edges[3] : edges[4] + 1]
    decay = float(np.mean(first) - np.mean(last))
    return mean, recall, decay


def _pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"masks must be two 2-D arrays of one shape, got {gt.shape} and {pred.shape}")
    return gt, pred

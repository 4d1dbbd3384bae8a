"""Label propagation over feature maps, the DINO / DiTF protocol, computed window by window.

For each target frame: every target token is compared with the tokens of the context frames (the
first frame and the n previous ones, with their soft labels) inside a square window of `radius`
cells around its own position; affinity = exp(cos / temperature); the `topk` largest affinities
over ALL context tokens are kept (ties with the k-th are kept too), renormalised to sum 1, and the
target's soft labels are their weighted sum of the context labels.

The authors build this densely: an (hw x hw) affinity and an (hw x hw) neighbourhood mask per
context frame. Here target tokens are taken in small tiles; each tile is compared only with the
context cells its windows can reach, so memory is O(tile * reach) instead of O((hw)^2) and the
cosine work shrinks where the window is smaller than the grid. Affinities outside a token's
window are exact zeros, as in the authors' masked product, so the top-k selection, ties and the
normalisation see the same values.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

NORMALIZE_EPS = 1e-12  # what torch.nn.functional.normalize divides by at least
MAX_EXPONENT = 88.0  # exp(x) overflows float32 above ~88.7
# Target tokens per tile side. Smaller tiles compare fewer needless pairs but make smaller, less
# efficient matrix products: bench/bench_davis.py at 30x54 cells found 16 fastest at C=3072 and
# 8 at C=768; peak memory grows with the tile (25 MiB at 8, 61 MiB at 16, C=3072, 8 context frames).
DEFAULT_TILE = 16


@dataclass(frozen=True)
class PropagationSettings:
    """The protocol's knobs; defaults are the authors' (and DINO's) DAVIS settings."""

    n_last_frames: int = 7
    radius: int = 12  # cells; 0 = no window (every context token is a candidate)
    topk: int = 5
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.n_last_frames < 0:
            raise InputError(f"n_last_frames must be >= 0, got {self.n_last_frames}")
        if self.radius < 0:
            raise InputError(f"radius must be >= 0 cells (0: no window), got {self.radius}")
        if self.topk < 1:
            raise InputError(f"topk must be >= 1, got {self.topk}")
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if 1 / self.temperature > MAX_EXPONENT:
            raise InputError(
                f"temperature {self.temperature} is too small: exp(cos / temperature) overflows float32 "
                f"below {1 / MAX_EXPONENT:.4f}"
            )


def normalized_tokens(features) -> np.ndarray:
    """[h, w, C] float32, each cell's vector L2-normalised, from a [1, C, h, w] or [C, h, w] map."""
    array = np.asarray(features, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise InputError(f"features must be [1, C, h, w] or [C, h, w], got shape {array.shape}")
    cells = np.ascontiguousarray(array.transpose(1, 2, 0))
    norms = np.sqrt(np.einsum("hwc,hwc->hw", cells, cells))
    return cells / np.maximum(norms, np.float32(NORMALIZE_EPS))[..., None]


def one_hot(labels: np.ndarray, count: int) -> np.ndarray:
    """[h, w, count] float32 one-hot of an integer label grid with values < count."""
    labels = np.asarray(labels)
    return (labels[..., None] == np.arange(count)).astype(np.float32)


def propagate(
    target: np.ndarray,
    context_features: list[np.ndarray],
    context_labels: list[np.ndarray],
    settings: PropagationSettings,
    *,
    tile: int = DEFAULT_TILE,
) -> np.ndarray:
    """Soft labels [h, w, L] of `target` ([h, w, C] normalised tokens) from the context frames.

    `context_features` are [h, w, C] normalised tokens, `context_labels` their [h, w, L] soft
    labels, in any order (the result does not depend on it beyond float rounding).
    """
    if not context_features or len(context_features) != len(context_labels):
        raise InputError(
            f"need matching context features and labels, got {len(context_features)} and {len(context_labels)}"
        )
    height, width, _ = target.shape
    for features, labels in zip(context_features, context_labels):
        if features.shape != target.shape or labels.shape[:2] != (height, width):
            raise InputError(
                f"context frame of features {features.shape} / labels {labels.shape} does not match the "
                f"target's grid {target.shape}: every frame of a video must give the same feature grid"
            )
    label_count = context_labels[0].shape[2]
    radius = settings.radius if settings.radius > 0 else max(height, width)
    temperature = np.float32(settings.temperature)
    out = np.empty((height, width, label_count), dtype=np.float32)
    for row0 in range(0, height, tile):
        row1 = min(row0 + tile, height)
        src_row0, src_row1 = max(row0 - radius, 0), min(row1 + radius, height)
        for col0 in range(0, width, tile):
            col1 = min(col0 + tile, width)
            src_col0, src_col1 = max(col0 - radius, 0), min(col1 + radius, width)
            inside = _window(row0, row1, col0, col1, src_row0, src_row1, src_col0, src_col1, radius)
            queries = target[row0:row1, col0:col1].reshape(-1, target.shape[2])
            affinities, labels = [], []
            for features, soft in zip(context_features, context_labels):
                keys = features[src_row0:src_row1, src_col0:src_col1].reshape(-1, features.shape[2])
                affinity = np.exp((queries @ keys.T) / temperature)
                affinities.append(np.where(inside, affinity, np.float32(0)))
                labels.append(soft[src_row0:src_row1, src_col0:src_col1].reshape(-1, label_count))
            weights = _keep_topk(np.concatenate(affinities, axis=1), settings.topk)
            tile_labels = weights @ np.concatenate(labels, axis=0)
            out[row0:row1, col0:col1] = tile_labels.reshape(row1 - row0, col1 - col0, label_count)
    return out


def _window(row0, row1, col0, col1, src_row0, src_row1, src_col0, src_col1, radius) -> np.ndarray:
    """[targets, sources] True where the source cell lies within `radius` cells (both axes) of the target."""
    t_rows, t_cols = np.meshgrid(np.arange(row0, row1), np.arange(col0, col1), indexing="ij")
    s_rows, s_cols = np.meshgrid(np.arange(src_row0, src_row1), np.arange(src_col0, src_col1), indexing="ij")
    near_rows = np.abs(t_rows.reshape(-1, 1) - s_rows.reshape(1, -1)) <= radius
    near_cols = np.abs(t_cols.reshape(-1, 1) - s_cols.reshape(1, -1)) <= radius
    return near_rows & near_cols


def _keep_topk(affinity: np.ndarray, k: int) -> np.ndarray:
    """Zero every entry below its row's k-th largest (ties kept), then make each row sum to 1."""
    candidates = affinity.shape[1]
    if candidates > k:
        kth = np.partition(affinity, candidates - k, axis=1)[:, candidates - k]
        affinity = np.where(affinity < kth[:, None], np.float32(0), affinity)
    return affinity / affinity.sum(axis=1, keepdims=True)


class LabelPropagator:
    """Frame-by-frame propagation through a video: the first frame plus the last n frames as context.

    Feed each next frame's features with `step`; it returns that frame's soft labels [h, w, L]
    and remembers (normalised features, soft labels) for the frames after it. Each frame's
    features are normalised once and reused while the frame stays in the context.
    """

    def __init__(
        self, first_features, first_labels: np.ndarray, settings: PropagationSettings, *, tile: int = DEFAULT_TILE
    ) -> None:
        self.settings = settings
        self.tile = tile
        self.first = (normalized_tokens(first_features), np.asarray(first_labels, dtype=np.float32))
        if self.first[1].ndim != 3 or self.first[1].shape[:2] != self.first[0].shape[:2]:
            raise InputError(
                f"first-frame labels {self.first[1].shape} must be [h, w, L] on the feature grid "
                f"{self.first[0].shape[:2]}"
            )
        self.recent: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=settings.n_last_frames)

    def step(self, features) -> np.ndarray:
        tokens = normalized_tokens(features)
        context = [self.first, *self.recent]
        soft = propagate(tokens, [f for f, _ in context], [s for _, s in context], self.settings, tile=self.tile)
        self.recent.append((tokens, soft))
        return soft

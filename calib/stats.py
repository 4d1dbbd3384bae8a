"""Activation statistics and how a per-tensor INT8 range (amax) is chosen from them.

Symmetric quantisation (zero point 0): a tensor x maps to round(x / s) clipped to [-127, 127] with
s = amax / 127, so only |x| matters. Each tensor's |x| is histogrammed over [0, upper] (upper: its
calibrated max, known from the first pass) and amax is chosen by one of:

- max:        the largest |x| seen (no clipping; one outlier coarsens every other value);
- percentile: the p-th percentile of |x| (e.g. 99.99), clipping the rare tail;
- mse:        the clip value minimising the expected squared quantisation error over the histogram
              (ModelOpt's / TensorRT's "mse" calibrator);
- entropy:    TensorRT's legacy KL-divergence calibrator (minimise KL(P || Q) between the |x|
              histogram and its 128-level quantised version).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("max", "percentile", "mse", "entropy")
QMAX = 127


@dataclass
class Histogram:
    """|x| counts over [0, upper] in `bins` equal bins."""

    upper: float
    bins: int = 2048
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    seen_max: float = 0.0

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros(self.bins, np.int64)
        self.upper = float(self.upper) if self.upper > 0 else 1e-12

    @property
    def scale(self) -> np.float32:
        """What |x| is multiplied by (in float32) before truncation to its bin."""
        return np.float32(self.bins / self.upper)

    def add(self, absx: np.ndarray) -> None:
        absx = np.asarray(absx, np.float32).ravel()
        if absx.size:
            self.seen_max = max(self.seen_max, float(absx.max()))
        # values above `upper` (should not happen: upper is the first pass's max) land in the last bin
        idx = np.minimum((absx * self.scale).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)

    def add_counts(self, counts: np.ndarray, seen_max: float, size: int) -> None:
        """Counts binned elsewhere the way `add` bins (graph.histogram_probes, inside a calibration run).

        size: how many values were binned; counts that do not add up to it overflowed where they were made."""
        counts = np.asarray(counts).astype(np.int64)
        if counts.shape != (self.bins,) or int(counts.sum()) != int(size) or (counts < 0).any():
            raise ValueError(f"histogram counts of {int(size)} values add up to {int(counts.sum())} "
                             f"over {counts.shape} bins: they overflowed or are not this histogram's")
        if size:
            self.seen_max = max(self.seen_max, float(seen_max))
        self.counts += counts

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.upper, self.bins + 1)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2


def amax_from_histogram(hist: Histogram, method: str, percentile: float = 99.99) -> float:
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")
    total = hist.counts.sum()
    if total == 0 or hist.seen_max == 0:
        return max(hist.seen_max, 1e-8)
    if method == "max":
        return hist.seen_max
    if method == "percentile":
        cdf = np.cumsum(hist.counts) / total
        i = int(np.searchsorted(cdf, percentile / 100.0))
        return float(min(hist.edges[min(i + 1, hist.bins)], hist.seen_max))
    if method == "mse":
        return _mse_amax(hist)
    return _entropy_amax(hist)


def _mse_amax(hist: Histogram, candidates: int = 128) -> float:
    """Clip value in (0, max] minimising sum(count * (x - dequant(quant(x)))^2) over bin centres."""
    x, c = hist.centers, hist.counts.astype(np.float64)
    nz = c > 0
    x, c = x[nz], c[nz]
    best, best_err = hist.seen_max, np.inf
    for amax in np.linspace(hist.seen_max / candidates, hist.seen_max, candidates):
        s = amax / QMAX
        q = np.clip(np.round(x / s), -QMAX, QMAX) * s
        err = float((c * (x - q) ** 2).sum())
        if err < best_err:
            best, best_err = float(amax), err
    return best


def _entropy_amax(hist: Histogram, levels: int = QMAX + 1) -> float:
    """TensorRT's entropy calibration on |x| (one-sided histogram: symmetric quantisation).

    For each threshold bin i: P = the first i bins with everything above folded into the last one;
    Q = those i bins (unfolded) merged into `levels` groups and spread back over P's non-empty bins;
    pick the i minimising KL(P || Q). Empty Q bins where P has mass get a tiny floor (the smoothing of
    TensorRT's and onnxruntime's implementations), so clipping a rare outlier costs little.
    """
    counts = hist.counts.astype(np.float64)
    last = int(np.nonzero(counts)[0][-1]) + 1
    if last <= levels:
        return hist.seen_max
    best_i, best_kl = last, np.inf
    step = max(1, (last - levels) // 256)
    for i in list(range(levels, last, step)) + [last]:
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        nonzero = p > 0
        q = np.zeros(i)
        for g in np.array_split(np.arange(i), levels):
            n = nonzero[g].sum()
            if n:
                q[g] = np.where(nonzero[g], counts[g].sum() / n, 0.0)
        p /= p.sum()
        q = q / q.sum() if q.sum() > 0 else q
        q = np.where(nonzero & (q <= 0), 1e-12, q)
        kl = float((p[nonzero] * np.log(p[nonzero] / q[nonzero])).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return float(min(best_i * hist.upper / hist.bins, hist.seen_max))

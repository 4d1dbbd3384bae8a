"""ditf_calib.stats: how an activation range is chosen from |x| histograms."""

from __future__ import annotations

import numpy as np
import pytest

from ditf_calib.stats import Histogram, amax_from_histogram


def _hist(x: np.ndarray) -> Histogram:
    h = Histogram(float(np.abs(x).max()))
    h.add(np.abs(x))
    return h


def test_max_and_percentile():
    x = np.linspace(0, 10, 100_001, dtype=np.float32)
    h = _hist(x)
    assert amax_from_histogram(h, "max") == pytest.approx(10.0)
    assert amax_from_histogram(h, "percentile", 99.0) == pytest.approx(9.9, abs=0.01)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_clipping_methods_ignore_a_rare_outlier(method):
    """One value 100x the rest must not set the range (it would leave ~1 level for everything else)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000), [400.0]]).astype(np.float32)
    amax = amax_from_histogram(_hist(x), method)
    assert 2.5 < amax < 40, amax  # entropy: no finer than 128 of 2048 bins of the first pass max


def test_mse_clips_a_heavy_tail_but_keeps_most_of_the_range():
    """MSE trades rounding error for clipping error: below the max of a Laplace sample, above its bulk."""
    x = np.random.default_rng(0).laplace(size=200_000).astype(np.float32)
    amax = amax_from_histogram(_hist(x), "mse")
    assert 5.0 < amax < 0.9 * np.abs(x).max(), amax


def test_empty_or_zero_tensor_is_safe():
    h = Histogram(0.0)
    h.add(np.zeros(10, np.float32))
    for m in ("max", "percentile", "mse", "entropy"):
        assert amax_from_histogram(h, m) > 0


def test_unknown_method():
    with pytest.raises(ValueError, match="expected one of"):
        amax_from_histogram(_hist(np.ones(3, np.float32)), "kl")

"""Parity metrics (ditf_runtime.parity): a share over zero points is no evidence, and says so."""

from __future__ import annotations

import json

import numpy as np

from ditf_runtime.parity import compare


def test_zero_point_metrics_read_na_and_are_not_gated():
    rng = np.random.default_rng(0)
    # every token of a map the same vector: no top-1/top-2 margin anywhere, so no decisive NN point
    flat = np.broadcast_to(rng.standard_normal((1, 32, 1, 1)), (2, 32, 4, 4)).astype(np.float32).copy()
    res = compare(flat, flat, "fp32")
    assert res.nn_points == 0 and np.isnan(res.nn_agreement)
    assert "NN agreement n/a (0 pts)" in str(res) and "1.0000 (0 pts)" not in str(res)
    assert res, "no evidence is not a failure: cosine and error decide"
    assert res.not_measured == ["nn_agreement"]
    row = res.to_dict()
    assert row["nn_agreement"] is None and row["not_measured"] == ["nn_agreement"]
    json.dumps(row, allow_nan=False)  # strict JSON: no NaN in a manifest

    # a single token per map (a 16x16 image): no second-best match at all
    one = rng.standard_normal((1, 8, 1, 1)).astype(np.float32)
    res = compare(one, one, "fp32")
    assert res.nn_points == 0 and "NN agreement n/a (0 pts)" in str(res) and res


def test_points_counted_when_there_are_some():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    res = compare(ref + 1e-3 * rng.standard_normal(ref.shape).astype(np.float32), ref, "fp16")
    assert res.nn_points > 0 and 0.0 <= res.nn_agreement <= 1.0 and res.not_measured == []
    assert f"({res.nn_points} pts)" in str(res) and "n/a" not in str(res)
    worse = compare(rng.standard_normal(ref.shape).astype(np.float32), ref, "fp16")
    assert not worse and any("NN agreement" in f for f in worse.failures)

"""Parity metrics (ditf_runtime.parity): a share over zero points is no evidence, and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_maps_of_different_sizes_compare_as_one_set():
    """Held-out real images keep their aspect ratio: a list of [C, h, w] maps, pairs (i, i+1) across sizes."""
    rng = np.random.default_rng(2)
    refs = [rng.standard_normal((16, 5, 8)).astype(np.float32), rng.standard_normal((1, 16, 8, 5)).astype(np.float32)]
    same = compare(refs, [r.copy() for r in refs], "int8")
    assert same and same.min_cosine > 0.99999 and same.rel_error == 0.0
    assert same.nn_points > 0 and same.nn_agreement == 1.0 and same.pck_points == 40 and same.pck_agreement == 1.0
    assert same.shape == (2, 16, 5, 8)
    noisy = [r + 0.05 * rng.standard_normal(r.shape).astype(np.float32) for r in refs]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(noisy, refs))
    res = compare(noisy, refs, "int8")
    assert res.rel_error == pytest.approx(worst / max(float(np.abs(r).max()) for r in refs))
    bad = compare([refs[0]], refs, "int8")
    assert not bad and "shape" in bad.failures[0]


def test_int8_gates_keypoint_transfers_other_precisions_report_them():
    """PCK agreement decides at int8 (the tolerance states a minimum); elsewhere it is reported only."""
    from ditf_runtime.parity import TOLERANCES

    assert TOLERANCES["int8"].min_pck_agreement == 0.9 and TOLERANCES["fp16"].min_pck_agreement is None
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    scrambled = ref[:, :, ::-1, ::-1].copy()  # every match moves: transfers land elsewhere
    loose = TOLERANCES["int8"].__class__(min_cosine=-1.0, max_rel_error=10.0, min_nn_agreement=0.0,
                                         min_pck_agreement=0.9)
    res = compare(scrambled, ref, loose)
    assert res.pck_agreement < 0.9 and not res and res.failures == [f"PCK agreement {res.pck_agreement:.4f} < 0.9"]
    reported = compare(scrambled, ref, loose.__class__(-1.0, 10.0, 0.0))
    assert reported and reported.pck_agreement == res.pck_agreement

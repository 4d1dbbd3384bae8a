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
    # nor a decisive keypoint transfer: every target pixel scores the same, so no answer is decisive
    assert res.pck_points == 0 and "PCK agreement n/a (0 pts)" in str(res)
    assert res.not_measured == ["nn_agreement", "pck_agreement"]
    row = res.to_dict()
    assert row["nn_agreement"] is None and row["pck_agreement"] is None
    assert row["not_measured"] == ["nn_agreement", "pck_agreement"]
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
    assert same.nn_points > 0 and same.nn_agreement == 1.0 and same.pck_agreement == 1.0
    assert 35 <= same.pck_points <= 40  # of 2 x 20 keypoints, those whose reference transfer is decisive
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


def test_a_transfer_is_decisive_only_when_nothing_beyond_the_pck_radius_scores_as_well():
    """decisive_transfers: the reference's answer must beat every target pixel farther than the PCK radius by
    more than NN_MARGIN. A twin of the matched vector far away makes the answer a coin toss; a twin inside the
    radius does not (either answer agrees); a constant map has no decisive answer at all."""
    from ditf_runtime.matching import UpsampledTarget
    from ditf_runtime.parity import NN_MARGIN, decisive_transfers

    rng = np.random.default_rng(4)
    base = rng.standard_normal((16, 10, 10))
    v = base[:, 2, 2] / np.linalg.norm(base[:, 2, 2])
    base[:, 1:4, 1:4] = v[:, None, None]  # a 3x3-cell plateau: pixels inside it are exactly v
    size, radius = (160, 160), 64.0  # stride 16; the plateau spans pixels ~24..56, cells 6..8 ~104..136

    def decisive(target):
        return decisive_transfers(UpsampledTarget(target, size), v[None], radius)[1].tolist()

    def with_far_block(vector):
        target = base.copy()
        target[:, 6:9, 6:9] = vector[:, None, None]
        return target

    near = base.copy()
    near[:, 1:4, 4] = v[:, None]  # the plateau one cell wider: every pixel of it within the radius
    assert decisive(base) == [True] and decisive(near) == [True]
    assert decisive(with_far_block(v)) == [False]  # an equal answer ~110 px away
    other = rng.standard_normal(16)
    other -= (other @ v) * v
    other /= np.linalg.norm(other)
    for cosine, expected in ((1.0 - 0.5 * NN_MARGIN, [False]), (0.9, [True])):
        assert decisive(with_far_block(cosine * v + np.sqrt(1 - cosine**2) * other)) == expected, cosine
    flat = np.broadcast_to(base[:, :1, :1], base.shape).copy()
    assert decisive(flat) == [False]

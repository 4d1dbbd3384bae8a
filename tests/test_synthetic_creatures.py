"""The procedural creatures and the benchmark written from them (issue 22): deterministic, SPair-71k's layout,
cross-instance pairs, and hard enough that position alone does not solve it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ditf_runtime.cli import main
from ditf_runtime.errors import InputError
from ditf_runtime.evaluate import read_pairs
from ditf_runtime.synthetic.benchmark import creature_pairs, write_benchmark
from ditf_runtime.synthetic.creatures import CATEGORIES, KEYPOINTS, TRAIN_SEED, draw


def test_drawing_is_deterministic_and_seeds_differ():
    a, b = draw(5, 3, 96), draw(5, 3, 96)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.visible, b.visible)
    c = draw(6, 3, 96)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_has_its_named_keypoints_on_the_object(category):
    for index in range(6):
        c = draw(11, index, 128, category)
        assert c.category == category and c.keypoints.shape == (len(KEYPOINTS[category]), 2)
        x1, y1, x2, y2 = c.bbox
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
        inside = c.visible
        pts = c.keypoints[inside]
        slack = 3.0  # keypoints sit on the outline, which may be anti-aliased away by a pixel or two
        assert np.all((pts[:, 0] >= x1 - slack) & (pts[:, 0] <= x2 + slack))
        assert np.all((pts[:, 1] >= y1 - slack) & (pts[:, 1] <= y2 + slack))
    facings = {draw(11, i, 64, category).facing for i in range(12)}
    assert facings == {"left", "right"}  # both facing directions occur


def test_position_alone_does_not_solve_the_benchmark():
    """Transferring each keypoint to the same pixel, or to the same place relative to the target's box (an
    oracle that knows where the object is but not which way it faces), stays far below what features need."""
    same_pixel = box_relative = n = 0
    for p in creature_pairs(60, seed=3, size=192):
        ids = p.shared
        s, t = p.source.keypoints[ids], p.target.keypoints[ids]
        sb, tb = np.array(p.source.bbox), np.array(p.target.bbox)
        threshold = 0.1 * max(tb[2] - tb[0], tb[3] - tb[1])
        same_pixel += int((np.linalg.norm(s - t, axis=1) <= threshold).sum())
        moved = tb[:2] + (s - sb[:2]) / (sb[2:] - sb[:2]) * (tb[2:] - tb[:2])
        box_relative += int((np.linalg.norm(moved - t, axis=1) <= threshold).sum())
        n += len(ids)
    assert n > 300
    assert same_pixel / n < 0.15 and box_relative / n < 0.4, (same_pixel / n, box_relative / n)


def test_benchmark_in_spair_layout(tmp_path):
    out = write_benchmark(tmp_path / "bench", pairs=10, seed=4, size=96, progress=False)
    pairs = read_pairs(out, "test")  # eval-spair's own reader
    assert len(pairs) == 10 and {p.category for p in pairs} == set(CATEGORIES)
    for pair in pairs:
        assert pair.src_image != pair.trg_image  # two different creatures, not an augmented copy
        assert pair.src_image.is_file() and pair.src_image.parent == out / "JPEGImages" / pair.category
        record = json.loads(pair.annotation.read_text())
        src = json.loads((out / "ImageAnnotation" / pair.category / pair.src_image.name.replace(".png", ".json")).read_text())
        trg = json.loads((out / "ImageAnnotation" / pair.category / pair.trg_image.name.replace(".png", ".json")).read_text())
        for name, xy in zip(record["kps_names"], record["src_kps"]):  # exactly the keypoints visible in both
            assert src["keypoints"][name]["visible"] and trg["keypoints"][name]["visible"]
            assert [round(v) for v in src["keypoints"][name]["xy"]] == xy  # integer pixels, as SPair's
        hidden = [n for n in KEYPOINTS[pair.category] if n not in record["kps_names"]]
        assert all(not (src["keypoints"][n]["visible"] and trg["keypoints"][n]["visible"]) for n in hidden)
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["seed"] == 4 and meta["pairs"] == 10 and meta["train_seed_never_used"] == TRAIN_SEED


def test_the_training_stream_is_refused():
    with pytest.raises(InputError, match="trained on"):
        write_benchmark("unused", seed=TRAIN_SEED)


def test_make_benchmark_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "b"
    result = runner.invoke(main, ["make-benchmark", "creatures", str(out), "--pairs", "5", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "PairAnnotation" / "test").glob("*.json"))) == 5
    again = runner.invoke(main, ["make-benchmark", "creatures", str(out), "--pairs", "5"])
    assert again.exit_code == 1 and "--force" in again.output  # nothing overwritten silently
    for bad, says in ((["--seed", "0"], "trained on"), (["--pairs", "0"], "--pairs"), (["--size", "8"], "--size")):
        r = runner.invoke(main, ["make-benchmark", "creatures", str(tmp_path / "c"), *bad])
        assert r.exit_code == 1 and says in r.output and "Traceback" not in r.output
        assert not (tmp_path / "c").exists()

"""DAVIS-2017 label propagation (ditf_runtime.davis, `ditf eval-davis`).

A synthetic DAVIS-layout set is drawn in the test (davis_synthetic.py): textured shapes moving over a textured
background, two objects, one of which leaves the frame, JPEG frames and indexed-PNG masks. Random
tiny weights carry no notion of "the same thing moved", so propagation quality is judged with a
hand-made colour feature extractor (per-cell colour statistics through a fixed tanh layer);
the flux-tiny export runs once end to end to prove the plumbing. The sparse propagation is held
against a dense numpy port of the authors' loop (their (hw x hw) mask, top-k over all context
tokens, scale-factor upsampling, norm_mask), and J / F against straightforward re-implementations
of the official formulas.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from ditf_runtime.davis import LabelPropagator, PropagationSettings, evaluate_davis, propagate, score_video
from ditf_runtime.davis.dataset import load_video, load_videos
from ditf_runtime.davis.features import clip_windows, protocol_size
from ditf_runtime.davis.masks import davis_palette, decode_labels, read_label_png, write_label_png
from ditf_runtime.davis.metrics import boundary_f, region_similarity, statistics
from ditf_runtime.davis.overlay import draw_mask_overlay
from ditf_runtime.davis.propagation import normalized_tokens, one_hot
from ditf_runtime.errors import InputError
from davis_synthetic import ClipColourFeatures, ColourFeatures, make_davis
from PIL import Image

FRAME_SIZE = (96, 160)  # height, width of the synthetic frames (make_davis's default)
STRIDE = 8  # ColourFeatures' cells
SHORT_SIDE = 96  # protocol size for the hand-made extractor: frames keep 96 x 160


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("davis")
    make_davis(root)
    return root


@pytest.fixture(scope="module")
def colour_run(davis_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("davis-out")
    result = evaluate_davis(ColourFeatures(), davis_root, size=SHORT_SIDE, out_dir=out)
    return result, out


# -- a dense port of the authors' loop (reference only: (hw)^2 memory per context frame) ---------


def _dense_step(target, sources, labels, grid, radius, topk, temperature):
    """One label_propagation call, the authors' way: full affinity, dense window mask, top-k over all."""
    h, w = grid
    tar = target.reshape(target.shape[1], -1).T  # hw x C
    tar = tar / np.maximum(np.linalg.norm(tar, axis=1, keepdims=True), 1e-12)
    src = np.stack([s.reshape(s.shape[1], -1) for s in sources])  # n x C x hw
    src = src / np.maximum(np.linalg.norm(src, axis=1, keepdims=True), 1e-12)
    aff = np.exp(np.einsum("tc,ncs->nts", tar, src) / np.float32(temperature)).astype(np.float32)
    if radius > 0:
        mask = np.zeros((h, w, h, w), np.float32)
        for i in range(h):
            for j in range(w):
                mask[i, j, max(i - radius, 0) : i + radius + 1, max(j - radius, 0) : j + radius + 1] = 1
        aff *= mask.reshape(h * w, h * w)[None]
    aff = aff.transpose(0, 2, 1).reshape(-1, h * w)  # (n * hw sources) x hw targets
    kth = np.sort(aff, axis=0)[-min(topk, aff.shape[0])]
    aff[aff < kth] = 0
    aff = aff / aff.sum(axis=0, keepdims=True)
    segs = np.concatenate(labels)  # n x L x h x w
    segs = segs.reshape(len(labels), segs.shape[1], -1).transpose(0, 2, 1).reshape(-1, segs.shape[1]).T
    return (segs @ aff).reshape(1, -1, h, w)


def _dense_decode(soft, factor, original):
    """F.interpolate(scale_factor) by the per-pixel formula, norm_mask, argmax, PIL nearest."""
    _, channels, h, w = soft.shape

    def axis(n_in):
        src = np.maximum((np.arange(n_in * factor) + 0.5) / factor - 0.5, 0)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, n_in - 1), (src - low).astype(np.float32)

    (y0, y1, ly), (x0, x1, lx) = axis(h), axis(w)
    x = soft[0]
    ly, lx = ly[:, None], lx[None, :]
    up = (1 - ly) * ((1 - lx) * x[:, y0][:, :, x0] + lx * x[:, y0][:, :, x1]) + ly * (
        (1 - lx) * x[:, y1][:, :, x0] + lx * x[:, y1][:, :, x1]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in range(channels):
            if up[c].max() > 0:
                up[c] = up[c] - up[c].min()
                up[c] = up[c] / up[c].max()
    ids = np.argmax(up, axis=0).astype(np.uint8)
    return np.asarray(Image.fromarray(ids).resize((original[1], original[0]), Image.Resampling.NEAREST))


def dense_video(features, first_labels, original, factor, n_last=7, radius=12, topk=5, temperature=0.1):
    """The authors' eval_video_tracking_davis over precomputed [1, C, h, w] maps: masks per frame."""
    grid = features[0].shape[-2:]
    small = np.asarray(Image.fromarray(first_labels).resize((grid[1], grid[0]), Image.Resampling.NEAREST))
    first_seg = one_hot(small, int(first_labels.max()) + 1).transpose(2, 0, 1)[None]
    queue, masks = [], [first_labels]
    for target in features[1:]:
        sources = [features[0]] + [f for f, _ in queue]
        segs = [first_seg] + [s for _, s in queue]
        soft = _dense_step(target, sources, segs, grid, radius, topk, temperature)
        if len(queue) == n_last:
            queue.pop(0)
        if n_last:
            queue.append((target, soft))
        masks.append(_dense_decode(soft, factor, original))
    return masks


# -- propagation ----------------------------------------------------------------------------


def test_protocol_size_follows_the_authors_rule():
    assert protocol_size(480, 854, 480) == (480, 832)  # a DAVIS 480p frame: 854 -> floor(26.7) * 32
    assert protocol_size(854, 480, 480) == (832, 480)  # portrait: the width is the short side
    assert protocol_size(480, 480, 480) == (480, 480)
    assert protocol_size(96, 160, 128) == (128, 192)  # 213.3 floored to 192


@pytest.mark.parametrize(
    "grid, contexts, radius, topk, tile",
    [((5, 7), 3, 2, 5, 2), ((6, 4), 2, 1, 3, 8), ((4, 9), 4, 0, 5, 3), ((3, 3), 1, 1, 20, 2), ((7, 5), 8, 3, 1, 4)],
)
def test_sparse_propagation_equals_the_dense_reference(grid, contexts, radius, topk, tile):
    rng = np.random.default_rng(sum(grid) + contexts)
    h, w = grid
    maps = [rng.standard_normal((1, 16, h, w)).astype(np.float32) for _ in range(contexts + 1)]
    labels = [rng.dirichlet(np.ones(3), size=(h, w)).astype(np.float32) for _ in range(contexts)]
    settings = PropagationSettings(radius=radius, topk=topk, temperature=0.1)
    context = [normalized_tokens(m) for m in maps[1:]]
    sparse = propagate(normalized_tokens(maps[0]), context, labels, settings, tile=tile)
    dense = _dense_step(maps[0], maps[1:], [lab.transpose(2, 0, 1)[None] for lab in labels], grid, radius, topk, 0.1)
    dense = dense[0].transpose(1, 2, 0)
    np.testing.assert_allclose(sparse, dense, rtol=2e-5, atol=1e-7)
    assert np.array_equal(sparse.argmax(axis=2), dense.argmax(axis=2))


def test_ties_at_the_kth_affinity_are_all_kept_as_in_the_reference():
    # Every context token identical: all affinities tie, so top-1 keeps all of them (mean of labels).
    h, w = 3, 4
    target = np.ones((1, 4, h, w), np.float32)
    labels = np.random.default_rng(1).dirichlet(np.ones(2), size=(h, w)).astype(np.float32)
    settings = PropagationSettings(radius=0, topk=1)
    sparse = propagate(normalized_tokens(target), [normalized_tokens(target)], [labels], settings, tile=2)
    dense = _dense_step(target, [target], [labels.transpose(2, 0, 1)[None]], (h, w), 0, 1, 0.1)[0].transpose(1, 2, 0)
    np.testing.assert_allclose(sparse, np.broadcast_to(labels.mean(axis=(0, 1)), sparse.shape), rtol=1e-5)
    np.testing.assert_allclose(sparse, dense, rtol=1e-5)


def test_masks_equal_a_dense_port_of_the_authors_loop(colour_run, davis_root):
    """Identical PNGs from evaluate_davis (sparse, tiled) and the dense port on the same features."""
    _, out = colour_run
    extractor = ColourFeatures()
    for video in load_videos(davis_root):
        features = [extractor.features(Image.open(p).convert("RGB")) for p in video.frames]
        expected = dense_video(features, video.first_labels, video.size, STRIDE)
        for path, mask in zip(video.frames, expected):
            assert np.array_equal(read_label_png(out / video.name / f"{path.stem}.png"), mask), path


def test_propagation_beats_copying_the_first_mask(colour_run, davis_root, tmp_path):
    result, _ = colour_run
    copied = []
    for video in load_videos(davis_root):
        for frame in video.frames:
            write_label_png(tmp_path / video.name / f"{frame.stem}.png", video.first_labels)
        copied += score_video(video, tmp_path / video.name)
    copy_jf = np.mean([(o.j_stats[0] + o.f_stats[0]) / 2 for o in copied])
    assert result.jf_mean > 0.65, result.table()
    assert result.jf_mean > copy_jf + 0.2, (result.jf_mean, copy_jf)
    assert len(result.objects) == 4 and [v.name for v in result.videos] == ["shapes-a", "shapes-b"]
    # The square leaves: in its last scored frames the truth is empty; J there is 1 exactly when
    # nothing was predicted, the official convention.
    square = next(o for o in result.objects if o.video == "shapes-a" and o.object_id == 2)
    assert square.j.shape == (7,)  # frames 1..7 of 9: the first and the last are not scored


def test_label_propagator_keeps_first_plus_n_last_frames():
    rng = np.random.default_rng(0)
    first = rng.standard_normal((1, 8, 4, 5)).astype(np.float32)
    propagator = LabelPropagator(first, one_hot(rng.integers(0, 3, (4, 5)), 3), PropagationSettings(n_last_frames=2))
    for _ in range(5):
        soft = propagator.step(rng.standard_normal((1, 8, 4, 5)).astype(np.float32))
        np.testing.assert_allclose(soft.sum(axis=2), 1, rtol=1e-5)  # soft labels stay distributions
    assert len(propagator.recent) == 2


def test_decode_upsamples_min_max_normalises_and_resizes():
    soft = np.zeros((2, 3, 2), np.float32)
    soft[..., 0] = 1
    soft[1, 2] = [0.4, 0.6]  # object 1 only in one corner cell, and weakly: min-max lifts it to 1
    ids = decode_labels(soft, (16, 24), (20, 30))
    expected = _dense_decode(soft.transpose(2, 0, 1)[None], 8, (20, 30))
    assert ids.shape == (20, 30) and np.array_equal(ids, expected)
    assert ids[-1, -1] == 1 and ids[0, 0] == 0


# -- J and F ----------------------------------------------------------------------------------


def _naive_boundary(mask):
    """Pixel by pixel: differs from its right, lower or lower-right neighbour (borders: along the edge only)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            right = mask[y, x + 1] if x + 1 < w else False
            below = mask[y + 1, x] if y + 1 < h else False
            diag = mask[y + 1, x + 1] if (y + 1 < h and x + 1 < w) else False
            if y == h - 1 and x == w - 1:
                out[y, x] = False
            elif x == w - 1:
                out[y, x] = mask[y, x] != below
            elif y == h - 1:
                out[y, x] = mask[y, x] != right
            else:
                out[y, x] = mask[y, x] != right or mask[y, x] != below or mask[y, x] != diag
    return out


def _naive_f(gt, pred, bound_th=0.008):
    radius = math.ceil(bound_th * math.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2))
    fb, gb = _naive_boundary(pred), _naive_boundary(gt)
    fg_pts, gt_pts = np.argwhere(fb), np.argwhere(gb)

    def matched(points, others):
        if len(others) == 0:
            return 0
        return sum(1 for p in points if (((others - p) ** 2).sum(axis=1) <= radius**2).any())

    if len(fg_pts) == 0 and len(gt_pts) == 0:
        precision = recall = 1.0
    elif len(fg_pts) == 0:
        precision, recall = 1.0, 0.0
    elif len(gt_pts) == 0:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = matched(fg_pts, gt_pts) / len(fg_pts), matched(gt_pts, fg_pts) / len(gt_pts)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _naive_j(gt, pred):
    union = int(np.sum(gt | pred))
    return 1.0 if union == 0 else int(np.sum(gt & pred)) / union


def _hand_made_masks():
    h, w = 40, 70  # radius ceil(0.008 * 80.6) = 1
    big = np.zeros((h, w), bool)
    big[5:30, 10:50] = True
    shifted = np.roll(big, (2, 3), axis=(0, 1))
    ring = big.copy()
    ring[12:22, 20:40] = False
    blob = np.zeros((h, w), bool)
    blob[30:, 60:] = True  # touches the bottom-right border
    empty = np.zeros((h, w), bool)
    large_h, large_w = 250, 400  # radius ceil(0.008 * 471.7) = 4: a real disk
    wide = np.zeros((large_h, large_w), bool)
    wide[40:200, 60:300] = True
    wobbly = wide.copy()
    wobbly[40:44, 100:140] = False
    wobbly[195:203, 250:270] = True
    return [
        (big, shifted), (big, ring), (big, blob), (blob, blob), (big, empty), (empty, big), (empty, empty),
        (wide, wobbly), (wide, np.roll(wide, 7, axis=1)),
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(9))
def test_j_and_f_equal_the_official_formulas(index):
    gt, pred = _hand_made_masks()[index]
    assert region_similarity(gt, pred) == pytest.approx(_naive_j(gt, pred), abs=1e-12)
    assert boundary_f(gt, pred) == pytest.approx(_naive_f(gt, pred), abs=1e-12)


def test_empty_and_absent_objects_score_one_when_both_empty():
    empty = np.zeros((30, 40), bool)
    some = empty.copy()
    some[5:10, 5:10] = True
    assert region_similarity(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert region_similarity(empty, some) == 0.0 and boundary_f(empty, some) == 0.0
    assert region_similarity(some, empty) == 0.0 and boundary_f(some, empty) == 0.0


def test_statistics_mean_recall_decay():
    values = np.array([1.0, 0.9, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2])
    mean, recall, decay = statistics(values)
    # bins over 8 frames: edges round(linspace(1, 8, 5)) - 1 = 0, 2, 4, 5, 7 -> [0:3], ..., [5:8]
    assert mean == pytest.approx(values.mean())
    assert recall == pytest.approx(4 / 8)  # strictly above 0.5
    assert decay == pytest.approx(values[0:3].mean() - values[5:8].mean())


# -- the evaluation loop: resume, JSON, video exports, overlays --------------------------------


def test_rerun_resumes_finished_videos_and_redoes_interrupted_ones(davis_root, tmp_path):
    extractor = ColourFeatures()
    first = evaluate_davis(extractor, davis_root, size=SHORT_SIDE, out_dir=tmp_path)
    assert extractor.frames_seen == 18
    again = ColourFeatures()
    second = evaluate_davis(again, davis_root, size=SHORT_SIDE, out_dir=tmp_path)
    assert again.frames_seen == 0 and all(v.resumed for v in second.videos)
    assert second.measures() == first.measures()
    (tmp_path / "shapes-b" / "00004.png").unlink()  # as if interrupted mid-video
    third = ColourFeatures()
    redone = evaluate_davis(third, davis_root, size=SHORT_SIDE, out_dir=tmp_path)
    assert third.frames_seen == 9 and [v.resumed for v in redone.videos] == [True, False]
    assert redone.measures() == first.measures()
    with pytest.raises(InputError, match="other settings.*topk"):
        evaluate_davis(ColourFeatures(), davis_root, size=SHORT_SIDE, out_dir=tmp_path, topk=3)
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes leave no temporaries
    record = json.loads((tmp_path / "ditf-davis.json").read_text())
    assert record["radius"] == 12 and record["short_side"] == SHORT_SIDE


def test_result_json_and_table(colour_run):
    result, out = colour_run
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data["measures"]) == {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}
    assert data["measures"]["J&F-Mean"] == pytest.approx((data["measures"]["J-Mean"] + data["measures"]["F-Mean"]) / 2)
    assert [o["object"] for o in data["objects"]] == [1, 2, 1, 2]
    table = result.table()
    assert "shapes-a" in table and "J&F-Mean" in table and f"{100 * result.jf_mean:.2f}" in table


def test_video_exports_run_in_full_length_clips(davis_root, tmp_path, colour_run):
    clips = ClipColourFeatures(frame_range=(2, 4))
    result = evaluate_davis(clips, davis_root, size=SHORT_SIDE, out_dir=tmp_path, videos=["shapes-a"])
    assert clips.clips == [4, 4, 4]  # 9 frames: [0:4], [4:8], then [5:9] for the last frame
    assert clips.frames_seen == 0
    _, image_out = colour_run
    for png in sorted((tmp_path / "shapes-a").glob("*.png")):  # same per-frame features: same masks
        assert np.array_equal(read_label_png(png), read_label_png(image_out / "shapes-a" / png.name))
    assert result.videos[0].name == "shapes-a"
    assert clip_windows(5, 8, 2) == [(0, 0, 5)] and clip_windows(7, 3, 2) == [(0, 0, 3), (3, 3, 6), (4, 6, 7)]


def _erode(mask, steps):
    mask = mask.copy()
    for _ in range(steps):
        mask[1:] &= mask[:-1].copy()
        mask[:-1] &= mask[1:].copy()
        mask[:, 1:] &= mask[:, :-1].copy()
        mask[:, :-1] &= mask[:, 1:].copy()
    return mask


def test_overlay_pictures(davis_root, tmp_path, colour_run):
    _, out = colour_run
    evaluate_davis(ColourFeatures(), davis_root, size=SHORT_SIDE, out_dir=out, overlay_dir=tmp_path)
    pictures = sorted((tmp_path / "shapes-a").glob("*.png"))
    assert len(pictures) == 9
    frame = np.asarray(Image.open(davis_root / "JPEGImages/480p/shapes-a/00000.jpg").convert("RGB"))
    labels = read_label_png(out / "shapes-a" / "00000.png")
    picture = np.asarray(Image.open(pictures[0]).convert("RGB"))
    height, width = labels.shape
    assert picture.shape[1] == width and picture.shape[0] > height  # the legend strip sits below the frame
    inside = _erode(labels == 1, 3)  # away from the outline
    tint = 0.5 * frame[inside].astype(float) + 0.5 * davis_palette()[1]
    assert np.abs(picture[:height][inside] - tint).max() <= 1
    outside = _erode(labels == 0, 3)
    assert np.array_equal(picture[:height][outside], frame[outside])
    swatch = picture[height:]
    for object_id in (1, 2):  # each object's colour appears in the legend
        assert (np.abs(swatch.astype(int) - davis_palette()[object_id]).sum(axis=2) == 0).any()
    direct = draw_mask_overlay(frame, labels, objects=[1, 2], title="shapes-a 00000")
    assert np.array_equal(np.asarray(direct), picture)


# -- the real runtime: an image export (flux-tiny) and a video export (tiny Latte) end to end ---


def test_flux_tiny_export_end_to_end(flux_tiny_export, davis_root, tmp_path):
    import ditf_runtime

    with ditf_runtime.load(flux_tiny_export, threads=1) as extractor:
        result = ditf_runtime.evaluate_davis(extractor, davis_root, videos=["shapes-b"], out_dir=tmp_path, seed=3)
    masks = sorted((tmp_path / "shapes-b").glob("*.png"))
    assert [p.stem for p in masks] == [f"{t:05d}" for t in range(9)]
    assert np.array_equal(read_label_png(masks[0]), load_video(davis_root, "shapes-b").first_labels)
    assert Image.open(masks[3]).mode == "P" and read_label_png(masks[3]).shape == FRAME_SIZE
    assert set(np.unique(read_label_png(masks[5]))) <= {0, 1, 2}
    record = json.loads((tmp_path / "ditf-davis.json").read_text())
    assert record["short_side"] == 128  # the export's manifest long side: frames 128 x 192, grid 8 x 12
    assert record["model"]["model_name"] and record["extract_options"] == {"seed": 3}
    assert len(result.objects) == 2 and all(0 <= o.j_stats[0] <= 1 and 0 <= o.f_stats[0] <= 1 for o in result.objects)


@pytest.fixture(scope="module")
def latte_export(tmp_path_factory, family_tiny_dir):
    """The tiny Latte (a video family, clips of 2..4 frames), exported at its first temporal block."""
    from ditf_export.export import ExportRequest, export
    from ditf_export.tiny import LATTE_TINY_MASSIVE

    out = tmp_path_factory.mktemp("latte-davis") / "latte-l1"
    export(ExportRequest(model=str(family_tiny_dir("latte")), out=out, layer=1, ensemble=1, image_size=128,
                         discard=",".join(map(str, LATTE_TINY_MASSIVE))))  # fmt: skip
    return out


def test_video_export_end_to_end(latte_export, davis_root, tmp_path):
    import ditf_runtime

    with ditf_runtime.load(latte_export, threads=1) as extractor:
        assert extractor.is_video and extractor.frame_range == (2, 4)
        result = ditf_runtime.evaluate_davis(extractor, davis_root, videos=["shapes-a"], out_dir=tmp_path)
    masks = sorted((tmp_path / "shapes-a").glob("*.png"))
    assert len(masks) == 9  # clips [0:4], [4:8] and [5:9] for the last frame
    assert np.array_equal(read_label_png(masks[0]), load_video(davis_root, "shapes-a").first_labels)
    assert all(read_label_png(p).shape == FRAME_SIZE for p in masks)
    assert len(result.objects) == 2


def test_cli_eval_davis(flux_tiny_export, davis_root, tmp_path):
    from click.testing import CliRunner
    from ditf_runtime.cli import main

    out, overlay, report = tmp_path / "masks", tmp_path / "overlay", tmp_path / "davis.json"
    args = ["eval-davis", str(davis_root), "--model", str(flux_tiny_export), "--threads", "1", "--videos", "shapes-a",
            "--out", str(out), "--overlay", str(overlay), "--json", str(report), "--radius", "6"]  # fmt: skip
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    assert "shapes-a" in run.output and "J&F-Mean" in run.output
    data = json.loads(report.read_text())
    assert data["settings"]["radius"] == 6 and data["videos"][0]["video"] == "shapes-a"
    assert len(list((out / "shapes-a").glob("*.png"))) == 9 and len(list((overlay / "shapes-a").glob("*.png"))) == 9
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "(resumed)" in again.output
    changed = CliRunner().invoke(main, args[:-2] + ["--radius", "12"])
    assert changed.exit_code == 1 and "other settings (differs in radius)" in changed.output
    missing = CliRunner().invoke(main, args[:6] + ["--videos", "bear"])
    assert missing.exit_code == 1 and "Error: videos ['bear'] are not in ImageSets/2017/val.txt" in missing.output
    assert "Traceback" not in missing.output


# -- bad inputs ------------------------------------------------------------------------------


@pytest.fixture
def small_davis(tmp_path) -> Path:
    root = tmp_path / "davis"
    make_davis(root, videos=("clip",), frames=4)
    return root


def test_missing_first_annotation(small_davis):
    (small_davis / "Annotations/480p/clip/00000.png").unlink()
    with pytest.raises(InputError, match="00000.png not found: the first frame's annotation"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE)


def test_palette_png_with_unknown_labels(small_davis):
    path = small_davis / "Annotations/480p/clip/00000.png"
    labels = np.array(Image.open(path))
    labels[0, 0] = 200
    image = Image.fromarray(labels)
    image.putpalette(davis_palette()[:17].reshape(-1).tolist())  # a 17-colour palette: 200 has no entry
    image.save(path)
    with pytest.raises(InputError, match=r"pixel values \[200\] have no entry in the PNG's 17-colour palette"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE)


def test_ground_truth_with_objects_the_first_frame_lacks(small_davis):
    path = small_davis / "Annotations/480p/clip/00002.png"
    labels = read_label_png(path)
    labels[:4, :4] = 3
    write_label_png(path, labels)
    with pytest.raises(InputError, match=r"object ids \[3\] do not appear in the first frame"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE)


def test_colour_mask_instead_of_ids(small_davis):
    path = small_davis / "Annotations/480p/clip/00000.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(InputError, match="RGB image; DAVIS annotations are indexed"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE)


def test_frames_of_different_sizes(small_davis):
    path = small_davis / "JPEGImages/480p/clip/00002.jpg"
    Image.open(path).resize((150, 96)).save(path)
    with pytest.raises(InputError, match="mixes frame sizes: 00000.jpg is 160x96 but 00002.jpg is 150x96"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE)


def test_empty_video_folder(small_davis):
    for path in (small_davis / "JPEGImages/480p/clip").iterdir():
        path.unlink()
    with pytest.raises(InputError, match="the video folder holds no frames"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE)


def test_video_not_in_the_split(small_davis):
    with pytest.raises(InputError, match=r"videos \['bear'\] are not in ImageSets/2017/val.txt"):
        evaluate_davis(ColourFeatures(), small_davis, videos=["bear"], size=SHORT_SIDE)


def test_missing_split_and_bad_settings(small_davis):
    with pytest.raises(InputError, match="ImageSets/2017/train.txt not found"):
        evaluate_davis(ColourFeatures(), small_davis, split="train", size=SHORT_SIDE)
    with pytest.raises(InputError, match="give size="):
        evaluate_davis(ColourFeatures(), small_davis)
    with pytest.raises(InputError, match="topk must be >= 1"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE, topk=0)
    with pytest.raises(InputError, match="temperature 0.01 is too small"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE, temperature=0.01)


def test_video_without_later_annotations_is_propagated_but_not_scored(small_davis, tmp_path):
    for t in (1, 2, 3):  # a test split: only the first frame is annotated
        (small_davis / f"Annotations/480p/clip/{t:05d}.png").unlink()
    result = evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE, out_dir=tmp_path)
    assert not result and result.unscored == ["clip"] and "not scored" in result.table()
    assert len(list((tmp_path / "clip").glob("*.png"))) == 4
    with pytest.raises(InputError, match="no video names given"):
        evaluate_davis(ColourFeatures(), small_davis, size=SHORT_SIDE, videos=[" "])

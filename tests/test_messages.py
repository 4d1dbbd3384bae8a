"""Messages and outputs in the user's words (issue 27): command-line refusals that name command-line options and
come before anything loads, registry typos refused before torch is imported, results and pictures that say which
model made them, distinct matches from degenerate inputs, pictures with a minimum width and legible labels.

Everything here runs on the torch-free hand-built export (tests/runtime_graphs.py); `ditf-export`'s refusals
before torch is imported are checked in a fresh interpreter by tests/test_export_cli.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.annotate import font
from ditf_runtime.cli import main
from ditf_runtime.draw import GAP, draw_matches
from ditf_runtime.loading import LoadOptions
from ditf_runtime.manifest import Manifest
from PIL import Image

from runtime_graphs import build_tiny_export, with_geometry


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    assert "Traceback" not in result.output  # a user error is one "Error: ..." line, never a traceback
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def video_export(tmp_path_factory) -> Path:
    """A hand-built export whose manifest says video (geometry.frame_axis): what `ditf track` needs."""
    folder = tmp_path_factory.mktemp("video-export")
    build_tiny_export(folder, geometry=with_geometry(frame_axis=1))
    return folder


@pytest.fixture(scope="module")
def random_export(tmp_path_factory) -> Path:
    """The hand-built export with its manifest saying random weights, as a built-in test model's does."""
    folder = tmp_path_factory.mktemp("random-export")
    manifest = build_tiny_export(folder)
    replace(manifest, random_weights=True).save(folder)
    return folder


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Any attempt to open an export fails loudly: refusals must come from the manifests alone."""

    def refuse(*args, **kwargs):
        raise AssertionError("an export was loaded before the command line was checked")

    monkeypatch.setattr(LoadOptions, "load", refuse)


def _image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


# -- 1. command-line combinations, checked before loading anything ----------------------------------------


def test_track_with_an_image_model_says_which_commands_take_it(export_dir, tmp_path, nothing_loads):
    result = invoke("track", tmp_path, "--model", export_dir, "--points", "1,1")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "`ditf track` follows points through a clip: it needs a video model" in message
    assert f"--model {export_dir} (tiny-random, tiny) is an image model" in message
    assert "`ditf match SOURCE TARGET`" in message
    assert "extract(images)" not in message  # the Python API's words stay out of the CLI


@pytest.mark.parametrize("command", ["extract", "match", "show", "eval-spair", "eval-ap10k"])
def test_image_commands_with_a_video_model_say_use_track(command, video_export, tmp_path, nothing_loads):
    image = _image(tmp_path / "a.png", 20, 20)
    args = {"extract": [image, "--out", tmp_path / "out"], "match": [image, image],
            "show": [image, "--out", tmp_path / "pca.png"], "eval-spair": [tmp_path], "eval-ap10k": [tmp_path]}[command]
    result = invoke(command, *args, "--model", video_export)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"`ditf {command}` takes images: --model {video_export} (tiny-random, tiny) is a video model" in message
    assert "`ditf track FRAMES_DIR`" in message and "extract_video" not in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "pca.png").exists()


def test_fusing_an_image_and_a_video_model_is_refused_in_cli_terms(export_dir, video_export, tmp_path, nothing_loads):
    image = _image(tmp_path / "a.png", 20, 20)
    result = invoke("match", image, image, "--model", export_dir, "--model", video_export)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "is an image model and" in message and "a video model: fuse two image models" in message


def test_fused_eval_davis_without_size_names_the_option(export_dir, tmp_path, nothing_loads):
    result = invoke("eval-davis", tmp_path, "--model", export_dir, "--model", export_dir)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "--size PX is required when fusing two models" in message and "size=" not in message


# -- 2. registry names resolved before torch is imported (the CLI in a fresh interpreter: test_export_cli) -----


def test_request_check_knows_names_folders_and_hf_ids(tmp_path):
    from ditf_export.errors import ExportInputError
    from ditf_export.request import ExportRequest

    for model in ("flux-tiny", "sd3.5-medium", "dinov2-base-reg", "owner/some-model", str(tmp_path)):
        ExportRequest(model=model, out=tmp_path / "out").check()  # no refusal: resolved later
    with pytest.raises(ExportInputError, match="did you mean sd3.5-medium"):
        ExportRequest(model="sd3.5-meduim", out=tmp_path / "out").check()
    with pytest.raises(ExportInputError, match="not a registry name") as refused:
        ExportRequest(model="something-else", out=tmp_path / "out").check()
    assert "did you mean" not in str(refused.value)


def test_the_torch_free_name_list_is_the_registry():
    from ditf_export import catalog
    from ditf_export.registry import MODEL_NAMES

    assert sorted(catalog.models()) == sorted(MODEL_NAMES)


# -- 3. results name the model ---------------------------------------------------------------------------


def _spair(root: Path) -> Path:
    (root / "PairAnnotation" / "test").mkdir(parents=True)
    (root / "JPEGImages" / "cat").mkdir(parents=True)
    for name, seed in (("a.jpg", 1), ("b.jpg", 2)):
        _image(root / "JPEGImages" / "cat" / name, 60, 40, seed)
    (root / "PairAnnotation" / "test" / "0:cat.json").write_text(json.dumps({
        "src_imname": "a.jpg", "trg_imname": "b.jpg", "category": "cat", "src_kps": [[5, 5], [30, 20]],
        "trg_kps": [[6, 6], [31, 21]], "trg_bndbox": [0, 0, 59, 39]}))
    return root


def test_eval_spair_table_and_json_say_which_model_and_warn_of_random_weights(random_export, tmp_path):
    from ditf_runtime.annotate import RANDOM_WEIGHTS_SCORES

    dataset = _spair(tmp_path / "spair")
    result = invoke("eval-spair", dataset, "--model", random_export, "--json", tmp_path / "pck.json")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()  # (stderr's progress line is mixed in here)
    first = lines.index(f"WARNING: {RANDOM_WEIGHTS_SCORES}")
    assert lines[first + 1].startswith("model: tiny-random · layer 0 (tiny) · fp32 · t=260 · E=2 · long side 64 px")
    record = json.loads((tmp_path / "pck.json").read_text())["model"]
    assert {k: record[k] for k in ("model_name", "layer", "precision", "timestep", "ensemble", "long_side",
                                   "random_weights", "trained_on")} == {
        "model_name": "tiny-random", "layer": 0, "precision": "fp32", "timestep": 260.0, "ensemble": 2,
        "long_side": 64, "random_weights": True, "trained_on": None}
    assert record["warning"] == RANDOM_WEIGHTS_SCORES


def test_trained_weights_are_named_in_results(tmp_path):
    from ditf_runtime.annotate import describe_run, described_lines

    folder = tmp_path / "export"
    manifest = build_tiny_export(folder)
    trained = replace(manifest, trained_on="synthetic creatures")

    class Stub:
        def __init__(self, manifest):
            self.manifest = manifest

    described = describe_run(Stub(trained), size=96)
    assert described["trained_on"] == "synthetic creatures" and described["long_side"] == 96
    assert "model: tiny-random: weights trained on synthetic creatures" in described_lines(described)
    assert described["warning"] is None
    assert describe_run(object()) is None  # a stand-in extractor without a manifest: nothing to say


def test_davis_results_and_overlays_carry_the_caption(random_export, tmp_path):
    import ditf_runtime
    from ditf_runtime.annotate import RANDOM_WEIGHTS_SCORES
    from davis_synthetic import make_davis
    from ditf_runtime.davis import evaluate_davis

    dataset = tmp_path / "davis"
    make_davis(dataset, videos=("shapes-a",), frames=4)
    with ditf_runtime.load(random_export, threads=1) as extractor:
        plain = evaluate_davis(extractor, dataset, size=64, overlay_dir=tmp_path / "plain", videos=["shapes-a"])
    assert plain.model["model_name"] == "tiny-random" and plain.model["short_side"] == 64
    assert plain.to_dict()["model"]["random_weights"] is True
    assert plain.table().splitlines()[0] == f"WARNING: {RANDOM_WEIGHTS_SCORES}"
    assert "short side 64 px" in plain.table()
    overlay = next((tmp_path / "plain" / "shapes-a").glob("*.png"))
    frame = next((dataset / "JPEGImages" / "480p" / "shapes-a").glob("*.jpg"))
    legend_only = _legend_height(frame)
    assert Image.open(overlay).height > legend_only + 40  # the caption strip below the legend


def _legend_height(frame: Path) -> int:
    from ditf_runtime.davis.overlay import draw_mask_overlay

    image = Image.open(frame)
    return draw_mask_overlay(image, np.zeros((image.height, image.width), np.uint8), objects=[1]).height


# -- 4. degenerate inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (3, 2)])  # smaller than the 4x3 feature grid
def test_match_from_a_tiny_source_returns_distinct_matches(export_dir, tmp_path, size):
    source, target = _image(tmp_path / "src.png", *size), _image(tmp_path / "trg.png", 90, 70, 1)
    result = invoke("match", source, target, "--model", export_dir)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    pairs = [(tuple(m["source"]), tuple(m["target"])) for m in report["matches"]]
    assert len(pairs) == len(set(pairs)) and len({s for s, _ in pairs}) == len(pairs)
    width, height = size
    assert len(pairs) <= width * height
    if size == (1, 1):
        assert pairs[0][0] == (0, 0) and len(pairs) == 1
        assert "fall on only 1 distinct pixel(s) of the 1x1 px source" in report["mutual_nearest_neighbours"]


def test_match_picture_says_how_many_distinct_matches(export_dir, tmp_path):
    from ditf_runtime.annotate import MIN_PICTURE_WIDTH

    source, target = _image(tmp_path / "src.png", 1, 1), _image(tmp_path / "trg.png", 90, 70, 1)
    result = invoke("match", source, target, "--model", export_dir, "--out", tmp_path / "m.png")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("1 distinct match, cosine")
    assert Image.open(tmp_path / "m.png").width >= MIN_PICTURE_WIDTH


def test_show_on_a_one_pixel_image_writes_a_readable_picture(export_dir, tmp_path):
    """It wrote a 10x738 px picture, its caption one character per line."""
    from ditf_runtime.annotate import MIN_PICTURE_WIDTH

    image = _image(tmp_path / "dot.png", 1, 1)
    result = invoke("show", image, "--model", export_dir, "--out", tmp_path / "pca.png")
    assert result.exit_code == 0, result.output
    picture = Image.open(tmp_path / "pca.png")
    assert picture.width >= MIN_PICTURE_WIDTH
    assert picture.height < picture.width  # the caption wraps into a few lines, not one letter a line


# -- 5. match labels: legible, inside the picture ---------------------------------------------------------


def _boxes_overlap(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_labels_of_close_points_do_not_touch_and_stay_inside():
    """12 beside 10 read "120", 36 on 28; labels at the right edge were cut off."""
    from ditf_runtime.annotate import LabelPlacer

    face, radius = font(11), 3
    dots = [(100, 50), (106, 50), (112, 52), (100, 57), (197, 10), (199, 98)]  # a cluster, two at the edges
    placer = LabelPlacer(face, radius, dots)
    bounds = (0, 0, 200, 100)
    boxes = [placer.place(xy, str(k + 10), bounds)[0] for k, xy in enumerate(dots)]
    for k, box in enumerate(boxes):
        assert 0 <= box[0] and box[2] <= 200 and 0 <= box[1] and box[3] <= 100, (k, box)
        for j, other in enumerate(boxes[:k]):
            assert not _boxes_overlap(box, other), (k, j, box, other)
        for j, (x, y) in enumerate(dots):  # no label hides a dot
            assert not _boxes_overlap(box, (x - radius, y - radius, x + radius + 1, y + radius + 1)), (k, j)


def _dark_pixels(picture: Image.Image) -> int:
    return int((np.asarray(picture).max(axis=2) < 60).sum())


def test_a_label_at_the_right_edge_is_drawn_whole():
    grey = Image.new("RGB", (200, 150), (128, 128, 128))
    middle = draw_matches(grey, grey, [[100, 75]], [[100, 75]], radius=4)
    edge = draw_matches(grey, grey, [[100, 75]], [[199, 75]], radius=4)
    assert middle.width == edge.width == 200 + GAP + 200
    # the label "1" twice in each picture: as many dark pixels (text, box outline, dot rim) when one is at the
    # edge, up to anti-aliasing (a label cut off at the edge lost all of its own)
    assert _dark_pixels(edge) >= 0.9 * _dark_pixels(middle)


# -- 6. failure output stays readable -------------------------------------------------------------------


def test_export_steps_log_no_trace_lines_into_test_output(caplog):
    """A failing export test dumped ~175 `DEBUG torch.__trace` lines (torch's structured trace, meant for
    TORCH_TRACE files) into pytest's captured log."""
    import logging

    import torch
    from ditf_export import onnx_export

    def export_one(scale: float) -> int:
        """torch.export a fresh little module; how many torch.__trace records pytest captured meanwhile."""

        class Scaled(torch.nn.Module):
            def forward(self, x):
                return scale * x + x.sin()

        before = len([r for r in caplog.records if r.name == "torch.__trace"])
        torch.export.export(Scaled(), (torch.rand(2, 3),))
        return len([r for r in caplog.records if r.name == "torch.__trace"]) - before

    caplog.set_level(logging.DEBUG)
    # What pytest does at each test phase for every non-propagating logger that exists by then (torch's,
    # once torch is imported): attach its capture handler.
    trace_log = logging.getLogger(onnx_export.TORCH_TRACE_LOG)
    added = caplog.handler not in trace_log.handlers
    if added:
        trace_log.addHandler(caplog.handler)
    try:
        assert export_one(2.0) > 0  # outside: pytest's handler gets them (so the check below can fail)
        with onnx_export.torch_trace_kept_to_torch():  # what export_onnx runs torch.onnx.export (torch.export) in
            assert export_one(3.0) == 0
        assert export_one(4.0) > 0  # the handlers are back afterwards
    finally:
        if added:
            trace_log.removeHandler(caplog.handler)


def test_export_cleanup_touches_no_deprecated_torch_object():
    """Every export printed `FutureWarning: torch.distributed.reduce_op is deprecated`: the step that frees
    onnxscript's matchers walked every object with isinstance(), which reads reduce_op's deprecated attribute."""
    import warnings

    import torch.distributed  # noqa: F401  (holds the deprecated reduce_op object the walk passes)
    from ditf_export.onnx_export import forget_rewriter_state

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test: none is expected, none is hidden
        forget_rewriter_state()


@pytest.mark.parametrize("options, says", [
    (["--backend", "tensorrt", "--device", "cpu"], "--backend tensorrt runs engines on a GPU: add --device cuda"),
    (["--backend", "tensorrt", "--threads", "2"], "--threads sets onnxruntime's CPU threads; --backend tensorrt"),
    (["--cpu-variant", "on", "--device", "cuda"], "--cpu-variant on runs model.cpu.onnx on onnxruntime's CPU"),
    (["--cpu-variant", "on"], "has no CPU variant: run `ditf optimize-cpu"),
])
def test_backend_option_combinations_are_refused_in_cli_terms(options, says, export_dir, tmp_path, nothing_loads):
    image = _image(tmp_path / "a.png", 20, 20)
    result = invoke("match", image, image, "--model", export_dir, *options)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert says in message
    assert "='" not in message and "device=" not in message  # no Python keyword arguments

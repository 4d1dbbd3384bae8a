"""Fusion through the `ditf` commands and feature files: two --model exports (flux-tiny + dinov2-tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import ditf_runtime
from ditf_runtime.cli import main
from ditf_runtime.errors import InputError
from ditf_runtime.storage import load_features, load_parts

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
CAT_A, CAT_B = str(EXAMPLES / "cat-a.jpg"), str(EXAMPLES / "cat-b.jpg")


@pytest.fixture(scope="module")
def exports(flux_tiny_export, dinov2_tiny_export):
    return str(flux_tiny_export), str(dinov2_tiny_export(False))


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_match_with_two_models_is_the_fused_extractor(exports, tmp_path):
    flux, dino = exports
    result = _run("match", CAT_A, CAT_B, "--model", flux, "--model", dino, "--fuse-weight", "0.4",
                  "--points", "200,150 120,90 10,10", "--out", str(tmp_path / "m.png"), "--json", str(tmp_path / "m.json"))
    assert result.exit_code == 0, result.output
    matches = json.loads((tmp_path / "m.json").read_text())["matches"]
    with ditf_runtime.load(flux, dino, weights=(0.4, 0.6)) as fused:
        src, trg = fused.extract([CAT_A, CAT_B])
    xy, scores = ditf_runtime.transfer_keypoints(src, trg, [[200, 150], [120, 90], [10, 10]], return_scores=True)
    assert [m["target"] for m in matches] == xy.tolist()
    assert [m["cosine"] for m in matches] == [round(float(s), 6) for s in scores]
    assert Image.open(tmp_path / "m.png").size[1] > 300  # the 300-px pair, then its caption strip


@pytest.mark.parametrize("extra, message", [
    (["--fuse-weight", "1.5"], r"must lie in \[0, 1\]"),
    (["--fuse-weight", "-0.1"], r"must lie in \[0, 1\]"),
    (["--size", "128", "--size", "112", "--size", "96"], "--size given 3 times for 2 --model"),
    (["--model", "{flux}"], "--model given 3 times"),
])
def test_bad_fusion_options(extra, message, exports):
    flux, dino = exports
    extra = [e.format(flux=flux) for e in extra]
    result = _run("match", CAT_A, CAT_B, "--model", flux, "--model", dino, *extra)
    assert result.exit_code != 0 and message.replace("\\", "") in result.output.replace("\\", ""), result.output
    single = _run("show", CAT_A, "--model", flux, "--fuse-weight", "0.5", "--out", "x.png")
    assert single.exit_code != 0 and "give a second --model" in single.output


def test_extract_stores_both_maps_and_the_weights(exports, tmp_path):
    flux, dino = exports
    out = tmp_path / "feats"
    result = _run("extract", CAT_A, CAT_B, "--model", flux, "--model", dino, "--fuse-weight", "0.3", "--out", str(out))
    assert result.exit_code == 0, result.output
    record = json.loads((out / "ditf-extract.json").read_text())
    assert record["models"][1]["model_name"] == "dinov2-tiny" and record["models"][0]["layer"] == 3
    assert record["weights"] == [0.3, 0.7] and record["models"][1]["timestep"] is None
    with ditf_runtime.load(flux, dino, weights=(0.3, 0.7)) as fused:
        want = fused.extract([CAT_A, CAT_B])
        parts = fused.extract_parts([CAT_A])[0]
    stored = load_features(out / "cat-a.safetensors")
    np.testing.assert_array_equal(stored.array, want[0].array)
    assert (stored.image_size, stored.stride, stored.grid_size) == (want[0].image_size, want[0].stride,
                                                                   want[0].grid_size)
    on_disk = load_parts(out / "cat-a.safetensors")
    assert on_disk.weights == (0.3, 0.7)
    for a, b in zip(on_disk.maps, parts.maps):  # each model's own map, as its single extraction gives it
        np.testing.assert_array_equal(a.array, b.array)
        assert (a.input_size, a.stride) == (b.input_size, b.stride)
    # re-weighting needs no model run
    with ditf_runtime.load(flux, dino, weights=(0.8, 0.2)) as other:
        np.testing.assert_array_equal(load_features(out / "cat-a.safetensors", weights=(0.8, 0.2)).array,
                                      other.extract([CAT_A])[0].array)
    # pictures read fused files like any feature file
    assert _run("show", str(out / "cat-b.safetensors"), "--out", str(tmp_path / "p.png")).exit_code == 0
    # one folder, one setting: another weight is refused; npy cannot hold two maps
    again = _run("extract", CAT_A, "--model", flux, "--model", dino, "--fuse-weight", "0.5", "--out", str(out))
    assert again.exit_code == 1 and "differs in weights" in again.output
    npy = _run("extract", CAT_A, "--model", flux, "--model", dino, "--format", "npy", "--out", str(tmp_path / "n"))
    assert npy.exit_code == 1 and "stored as safetensors" in npy.output
    with pytest.raises(InputError, match="holds one model's features"):
        single = tmp_path / "single"
        assert _run("extract", CAT_A, "--model", flux, "--out", str(single)).exit_code == 0
        load_features(single / "cat-a.safetensors", weights=(0.5, 0.5))


def _spair(root: Path) -> Path:
    """Two categories in SPair-71k's layout from the example photos; targets are the sources flipped."""
    rng = np.random.default_rng(0)
    for category, names in (("cat", ("cat-a", "cat-b")), ("thing", ("coffee", "rocket"))):
        images = root / "JPEGImages" / category
        images.mkdir(parents=True)
        for name in names:
            pixels = np.asarray(Image.open(EXAMPLES / f"{name}.jpg").convert("RGB").resize((120, 90)))
            Image.fromarray(pixels).save(images / f"{name}.jpg", quality=95)
            Image.fromarray(pixels[:, ::-1]).save(images / f"{name}-flip.jpg", quality=95)
        folder = root / "PairAnnotation" / "test"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            kps = [[int(rng.integers(10, 110)), int(rng.integers(10, 80))] for _ in range(5)]
            (folder / f"{name}:{category}.json").write_text(json.dumps({
                "src_imname": f"{name}.jpg", "trg_imname": f"{name}-flip.jpg", "category": category,
                "src_kps": kps, "trg_kps": [[119 - x, y] for x, y in kps], "trg_bndbox": [5, 5, 115, 85],
                "src_imsize": [120, 90, 3], "trg_imsize": [120, 90, 3]}))
    return root


def test_eval_spair_with_two_models(exports, tmp_path):
    flux, dino = exports
    root = _spair(tmp_path / "spair")
    result = _run("eval-spair", str(root), "--model", flux, "--model", dino, "--json", str(tmp_path / "pck.json"))
    assert result.exit_code == 0, result.output
    assert "All" in result.output and "Mean" in result.output
    got = json.loads((tmp_path / "pck.json").read_text())
    assert got["pairs"] == 4 and got["points"] == 20
    with ditf_runtime.load(flux, dino) as fused:
        want = ditf_runtime.evaluate(fused, root)
    assert got["image"]["All"] == pytest.approx(want.all_per_image) and got["point"] == want.to_dict()["point"]


def test_eval_davis_with_two_models(exports, tmp_path):
    from davis_synthetic import make_davis

    flux, dino = exports
    root = tmp_path / "davis"
    make_davis(root, videos=("clip",), frames=4)
    out = tmp_path / "masks"
    args = ["eval-davis", str(root), "--model", flux, "--model", dino, "--fuse-weight", "0.6", "--size", "64",
            "--threads", "1", "--out", str(out), "--json", str(tmp_path / "davis.json")]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "J&F-Mean" in result.output and len(list((out / "clip").glob("*.png"))) == 4
    record = json.loads((out / "ditf-davis.json").read_text())["model"]
    assert record["extractor"] == "FusedExtractor" and record["weights"] == [0.6, 0.4]
    assert [m["model_name"] for m in record["models"]][1] == "dinov2-tiny"
    with ditf_runtime.load(flux, dino, weights=(0.6, 0.4), threads=1) as fused:
        want = ditf_runtime.evaluate_davis(fused, root, size=64)
    assert json.loads((tmp_path / "davis.json").read_text())["measures"] == want.to_dict()["measures"]
    other = _run(*args[:6], "--fuse-weight", "0.5", *args[8:])
    assert other.exit_code == 1 and "differs in model" in other.output  # another weight: another run
    pair = _run(*args[:8], "--size", "64", "--size", "64", *args[10:])
    assert pair.exit_code != 0 and "short side here: give it once" in pair.output

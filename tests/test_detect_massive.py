"""Massive-channel detection (calib/massive.py): planted outlier channels in random models are found, exactly.

Images: examples/images (5 real photos) through the runtime's preprocessing and default noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ditf_runtime.manifest import Manifest

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
SMALL = ["--image-size", "96", "--ensemble", "2"]


def test_channel_ratios_by_hand():
    from ditf_calib.massive import channel_ratios, detect_from_tokens

    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((200, 16)).astype(np.float32)
    tokens[:, 3] = 500.0 * np.sign(tokens[:, 3])  # |h| = 500 everywhere
    tokens[:, 9] += 40.0  # about 60x the median channel: below the paper's 100x
    ratios = channel_ratios(tokens)
    med = np.median(np.abs(tokens), axis=0)
    np.testing.assert_allclose(ratios, med / np.median(med))
    assert detect_from_tokens([tokens, tokens * 2]).channels == (3,)  # scale-free
    assert detect_from_tokens([tokens], threshold=20).channels == (3, 9)
    with pytest.raises(ValueError):
        detect_from_tokens([tokens], threshold=0)


def _detect(args):
    from ditf_export.cli import detect_massive_main

    return CliRunner().invoke(detect_massive_main, args)


@pytest.mark.parametrize("family, layer, planted", [
    ("flux", 3, (7, 41)), ("sd3", 2, (5, 50)), ("pixart", 1, (9, 70)), ("dit", 2, (3, 40)),
    ("latte", 1, (6, 33)),  # video: each photo as a still clip
])
def test_cli_finds_exactly_the_planted_channels(family_tiny_dir, flux_tiny_dir, family, layer, planted, tmp_path):
    folder = flux_tiny_dir if family == "flux" else family_tiny_dir(family)
    out = tmp_path / "found.json"
    embeds = []
    if family == "latte":  # no prompt encoding needed: a T5-sized prompt_embeds file
        import torch
        from safetensors.torch import save_file

        save_file({"prompt_embeds": torch.randn(1, 6, 32)}, str(tmp_path / "e.safetensors"))
        embeds = ["--prompt-embeds", str(tmp_path / "e.safetensors")]
    r = _detect(["--model", str(folder), "--layer", str(layer), "--images", str(IMAGES), "--json", str(out)]
                + SMALL + embeds)
    assert r.exit_code == 0, r.output
    assert f"massive channels (ratio > 100): {','.join(map(str, planted))}" in r.output
    assert r.output.strip().endswith(f"ditf-export --discard {','.join(map(str, planted))}")
    found = json.loads(out.read_text())
    assert found["channels"] == list(planted) and len(found["images"]) == 5
    ratios = {row["channel"]: row["ratio"] for row in found["top"]}
    assert min(ratios[c] for c in planted) > 100
    assert max(r for c, r in ratios.items() if c not in planted) < 20  # a wide margin, not a near miss


def test_threshold_decides_a_weaker_channel_and_clean_model_has_none(tmp_path):
    """A channel planted at ~1/10 of the massive magnitude sits between thresholds; a model without plants has none."""
    import torch
    from diffusers import DiTTransformer2DModel

    from ditf_export.tiny import build_dit_tiny

    folder = build_dit_tiny(tmp_path / "dit-weak", massive=(3, 40))
    model = DiTTransformer2DModel.from_pretrained(folder / "transformer")
    with torch.no_grad():
        model.pos_embed.proj.bias[20] = 30.0
    model.save_pretrained(folder / "transformer", safe_serialization=True)
    common = ["--model", str(folder), "--layer", "1", "--images", str(IMAGES), "--json", str(tmp_path / "f.json")]
    r = _detect(common + SMALL)
    assert r.exit_code == 0 and "ratio > 100): 3,40\n" in r.output, r.output
    weak = {row["channel"]: row["ratio"] for row in json.loads((tmp_path / "f.json").read_text())["top"]}[20]
    assert 10 < weak < 100
    r = _detect(common + SMALL + ["--threshold", "8"])
    assert r.exit_code == 0 and "ratio > 8): 3,20,40\n" in r.output, r.output

    clean = build_dit_tiny(tmp_path / "dit-clean", massive=())
    r = _detect(["--model", str(clean), "--layer", "1", "--images", str(IMAGES)] + SMALL)
    assert r.exit_code == 0 and "ratio > 100): none" in r.output, r.output


def test_export_discard_auto_records_channels_and_ratios(family_tiny_dir, tmp_path):
    from ditf_export.export import ExportRequest, export

    out = tmp_path / "dit-auto"
    m = export(ExportRequest(model=str(family_tiny_dir("dit")), out=out, layer=1, discard="auto",
                             calib_images=IMAGES, ensemble=2, image_size=96))
    assert m.feature.discard == (3, 40) and m.feature.discard_source == "auto"
    assert Manifest.load(out).feature.discard == (3, 40)
    ratios = m.feature.massive_channel_ratios
    assert set(ratios) >= {"3", "40"} and min(ratios["3"], ratios["40"]) > 100
    assert all(v < 100 for k, v in ratios.items() if k not in ("3", "40"))  # the margin is recorded too
    assert any("detected over 5 calibration images" in n for n in m.feature.notes)
    assert m.parity["passed"]
    # the exported graph really zeroes them: features equal those of an explicit --discard 3,40
    from ditf_export.export import build_graph, plan

    explicit = build_graph(plan(ExportRequest(model=str(family_tiny_dir("dit")), out=tmp_path / "x", layer=1,
                                              discard="3,40", image_size=96))).graph
    import onnxruntime as ort
    import torch
    from safetensors.numpy import load_file

    ref = load_file(str(out / "reference.safetensors"))
    with torch.no_grad():
        expected = explicit(torch.from_numpy(ref["image"]), torch.from_numpy(ref["noise"])).numpy()
    got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["features"], {"image": ref["image"], "noise": ref["noise"]})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--discard", "auto"], "pass --calib-images DIR"),
    (["--discard", "auto", "--calib-images", "{empty}"], "no images"),
    (["--discard", "auto", "--calib-images", "{images}", "--massive-threshold", "0.5"], "must be > 1"),
], ids=["no-images", "empty-folder", "bad-threshold"])
def test_discard_auto_bad_input(family_tiny_dir, tmp_path, args, message):
    from ditf_export.cli import main

    (tmp_path / "empty").mkdir()
    subs = {"{empty}": str(tmp_path / "empty"), "{images}": str(IMAGES)}
    r = CliRunner().invoke(main, ["--model", str(family_tiny_dir("dit")), "--layer", "1", "--out", str(tmp_path / "o")]
                           + [subs.get(a, a) for a in args])
    assert r.exit_code != 0 and message in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_detect_cli_bad_input(family_tiny_dir, tmp_path):
    r = _detect(["--model", str(family_tiny_dir("dit")), "--layer", "1", "--images", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "no such folder" in r.output and "Traceback" not in r.output
    r = _detect(["--model", str(family_tiny_dir("dit")), "--layer", "9", "--images", str(IMAGES)])
    assert r.exit_code != 0 and "out of range" in r.output

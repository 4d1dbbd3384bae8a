"""DINOv2 exports (issue 12): the built-in dinov2-tiny / dinov2-tiny-reg (random weights of transformers'
Dinov2Model / Dinov2WithRegistersModel) against transformers' own forward.

The graph must reproduce `last_hidden_state` (patch tokens, after the final LayerNorm) for any H, W that are
multiples of 14, including the position-embedding interpolation transformers runs at each size (bicubic;
antialiased in the registers model). Sizes below use token grids 4x6 and 7x5 (down from the 7x7 position
table), 9x13 and 20x12 (up). Thresholds as for every family: per-token cosine >= 0.99999, rel. error <= 1e-4.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ditf_runtime.manifest import Manifest
from ditf_runtime.parity import compare

MIN_COSINE = 0.99999
MAX_REL_ERROR = 1e-4
SIZES = ((56, 84), (98, 70), (126, 182), (280, 168))
EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _tiny_folder(registers: bool):
    from ditf_export.loading import resolve_source

    return resolve_source("dinov2-tiny-reg" if registers else "dinov2-tiny").path


def _transformers_model(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).eval()


def _transformers_tokens(model, image: torch.Tensor, layer: int | None = None) -> np.ndarray:
    """transformers' own forward on the model card's normalisation of [-1, 1] pixels: patch tokens [B, C, h, w]
    of last_hidden_state (layer None) or of hidden_states[layer]."""
    skip = 1 + getattr(model.config, "num_register_tokens", 0)
    with torch.no_grad():
        out = model(((image + 1) / 2 - MEAN) / STD, output_hidden_states=layer is not None)
    tokens = out.last_hidden_state if layer is None else out.hidden_states[layer]
    b, _, h, w = image.shape
    return tokens[:, skip:].transpose(1, 2).reshape(b, -1, h // 14, w // 14).numpy()


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "registers"])
def test_onnx_export_matches_transformers_forward(registers, dinov2_tiny_export):
    import onnxruntime as ort

    out = dinov2_tiny_export(registers)
    model = _transformers_model(_tiny_folder(registers))
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]  # no noise input
    for k, (h, w) in enumerate(SIZES):
        image = _image(h, w, seed=k)
        got = sess.run(["features"], {"image": image.numpy()})[0]
        res = compare(got, _transformers_tokens(model, image), "fp32")
        print(f"dinov2-tiny{'-reg' if registers else ''} ORT vs transformers {h}x{w}: {res}")
        assert got.shape == (2, 32, h // 14, w // 14)
        assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res


def test_manifest_says_what_the_graph_is(dinov2_tiny_export):
    m = Manifest.load(dinov2_tiny_export(False))
    assert m.family == "dinov2" and m.model_name == "dinov2-tiny"
    assert [t.name for t in m.inputs] == ["image"] and m.inputs[0].shape == ("batch", 3, "height", "width")
    assert m.outputs[0].shape == ("batch", 32, "height/14", "width/14")
    g = m.geometry
    assert (g.latent_channels, g.vae_stride, g.feature_stride, g.size_multiple) == (0, 0, 14, 14)
    assert g.max_size == 128 * 14  # the position tables' verified limit
    f = m.feature
    assert f.layer == 3 and f.block.startswith("layernorm of hidden_states[3]")
    assert (f.timestep, f.noising, f.latent, f.ensemble, f.prompt) == (None, "none", "none", 1, None)
    notes = " ".join(f.notes)
    assert "mean [0.485, 0.456, 0.406]" in notes and "up to 128 per side" in notes and "CLS and register" in notes
    assert m.preprocess.long_side == 224 and m.parity["passed"]
    assert [(r["height"], r["width"]) for r in m.parity["results"]] == [(56, 84), (98, 70)]
    assert list(m.tensorrt_profiles["max"]) == ["image"]
    from ditf_runtime.backends import trt  # `ditf build-engine` profiles: the image alone

    assert trt.cli_profile(m, "1x224x224", "1x840x630", "2x1022x1022", 1).shapes == {
        "image": ((1, 3, 224, 224), (1, 3, 840, 630), (2, 3, 1022, 1022))}
    assert list(trt.manifest_profiles(m)[0].shapes) == ["image"]
    assert "model.safetensors" in m.source_weights
    # sealed, and every file the runtime opens recorded with its sha256 (as for the diffusion families)
    assert m.digest and set(m.files) == {"model.onnx", "model.onnx.data", "reference.safetensors"}
    assert all(len(record["sha256"]) == 64 for record in m.files.values())


def test_runtime_refuses_sizes_past_the_position_tables(dinov2_tiny_export):
    import ditf_runtime
    from ditf_runtime.errors import InputError

    with ditf_runtime.load(dinov2_tiny_export(False)) as extractor:
        with pytest.raises(InputError, match=r"size 1806 is past this export's limit: .* up to 1792 px \(its position "
                                             r"tables cover token grids up to 128 per side at stride 14\); use --size "
                                             r"1792 or less"):
            extractor.extract(np.zeros((20, 30, 3), np.uint8), size=1806)
        with pytest.raises(InputError, match=r"image 14x1806 is past this export's limit"):
            extractor.run(np.zeros((1, 3, 14, 1806), np.float32))


@pytest.mark.parametrize("registers", [False, True], ids=["plain", "registers"])
@pytest.mark.parametrize("layer", [0, 2])
def test_layer_k_reads_hidden_states_without_the_final_norm(registers, layer, tmp_path):
    from ditf_export.export import ExportRequest, build_graph, plan

    folder = _tiny_folder(registers)
    the_plan = plan(ExportRequest(model=str(folder), out=tmp_path / "unused", layer=layer))
    assert not the_plan.options.final_norm
    assert the_plan.block == f"hidden_states[{layer}] ({'embeddings' if layer == 0 else 'encoder.layer.1'} output)"
    graph = build_graph(the_plan).graph
    model = _transformers_model(folder)
    for h, w in SIZES[1:3]:
        image = _image(h, w, seed=layer)
        with torch.no_grad():
            ours = graph(image).numpy()
        res = compare(ours, _transformers_tokens(model, image, layer), "fp32")
        assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res


def test_position_tables_reproduce_the_antialiased_interpolation():
    """The registers model interpolates with antialias=True: below the table size that differs from plain
    bicubic, and the tables follow transformers, not torch's default."""
    from ditf_export.families.dinov2_graph import PositionTable

    model = _transformers_model(_tiny_folder(True))
    emb = model.embeddings
    table = PositionTable(emb, max_grid=16)
    assert table.verify_against(emb) <= 1e-6
    with torch.no_grad():
        theirs = emb.interpolate_pos_encoding(torch.zeros(1, 1 + 12, 32), 3 * 14, 4 * 14)
        ours = table(3, 4, theirs)
        plain = torch.nn.functional.interpolate(emb.position_embeddings[:, 1:].reshape(1, 7, 7, 32).permute(0, 3, 1, 2),
                                                size=(3, 4), mode="bicubic", align_corners=False)
    plain = plain.permute(0, 2, 3, 1).reshape(1, 12, 32)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert (plain - theirs[:, 1:]).abs().max() > 1e-2  # antialiasing matters at this size


@pytest.mark.parametrize("kw, message", [
    ({"timestep": 260}, "--timestep: dinov2 graphs take no noise"),
    ({"ensemble": 4}, "--ensemble: dinov2 graphs take no noise"),
    ({"prompt": "a cat"}, "--prompt: DINOv2 is not a diffusion model"),
    ({"guidance": 3.5}, "--guidance: DINOv2 is not a diffusion model"),
    ({"class_label": 3}, "--class-label: DINOv2"),
    ({"image_size": 1806}, "verified for sides up to 1792 pixels"),
    ({"image_size": 640}, "must be a positive multiple of 14"),
    ({"layer": 4}, "layers 0..3"),
])
def test_options_a_vit_cannot_honour_are_refused(kw, message, tmp_path):
    from ditf_export.errors import ExportInputError
    from ditf_export.export import ExportRequest, plan

    with pytest.raises(ExportInputError, match=re.escape(message)):
        plan(ExportRequest(model="dinov2-tiny", out=tmp_path / "o", **kw))


def test_registry_local_folders_and_the_hf_cache(tmp_path, monkeypatch):
    from ditf_export.catalog import model_spec
    from ditf_export.errors import ExportInputError
    from ditf_export.export import ExportRequest, plan
    from ditf_export.loading import resolve_source

    for size in ("small", "base", "large", "giant"):
        assert model_spec(f"dinov2-{size}").hf_id == f"facebook/dinov2-{size}"
        assert model_spec(f"dinov2-{size}-reg").hf_id == f"facebook/dinov2-with-registers-{size}"
    assert model_spec("dinov2-base").image_size.value == 840
    # a local transformers folder: family from config.json's model_type, defaults from the family
    folder = _tiny_folder(False)
    local = plan(ExportRequest(model=str(folder), out=tmp_path / "o"))
    assert local.source.family == "dinov2" and local.options.layer == 3 and local.options.final_norm
    assert local.image_size == 840  # the family's default long side (no registry entry of this size)
    # another transformers model is refused by name
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ExportInputError, match=r"config.json \(bert\).*model_type dinov2 or dinov2_with_registers"):
        resolve_source(str(other))
    # not in the local cache: the download command names the transformers files, never diffusers' folders
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ExportInputError, match=r"hf download facebook/dinov2-base --include 'config.json' --include 'model.safetensors'"):
        resolve_source("dinov2-base")


def test_int8_keeps_the_position_interpolation_fp32(dinov2_tiny_export):
    """INT8 quantizes linear layers only: the interpolation MatMul (constant table first) stays FP32."""
    m = Manifest.load(dinov2_tiny_export(precision="int8"))
    report = m.parity["precision"]
    assert report["linear_layers_quantized"] == 3 * 6  # q, k, v, o, fc1, fc2 in each of the 3 layers
    assert not any("index_select" in name for name in report["activation_amax"])
    for r in m.parity["results"]:
        assert r["passed"] and r["min_cosine"] >= 0.9999, r


def test_detect_massive_runs_on_a_vit(tmp_path):
    from click.testing import CliRunner

    from ditf_export.cli import detect_massive_main

    result = CliRunner().invoke(detect_massive_main, ["--model", "dinov2-tiny", "--images", str(EXAMPLE_IMAGES),
                                                      "--json", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert "no noise" in result.output and "massive channels (ratio > 100): none" in result.output
    found = json.loads((tmp_path / "m.json").read_text())
    assert found["family"] == "dinov2" and found["channels"] == [] and len(found["top"]) == 32

"""FLUX exporter: PyTorch reference vs diffusers' own forward, ONNX vs PyTorch, loading paths, bad input.

Thresholds (stated here, asserted below): reference vs diffusers hooks and ONNX vs PyTorch at fp32:
per-token cosine >= 0.99999 and max relative error <= 1e-4.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ditf_runtime.manifest import SCHEMA_VERSION, Manifest
from ditf_runtime.parity import compare

MIN_COSINE = 0.99999
MAX_REL_ERROR = 1e-4


def _rng_inputs(b, e, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g) * 2 - 1
    noise = torch.randn(b, e, 16, h // 8, w // 8, generator=g)
    return image, noise


@torch.no_grad()
def diffusers_hook_features(folder: Path, layer: int, image, noise, timestep=260.0, guidance=3.5,
                            discard=(7, 41), prompt="", head="adaln"):
    """DiTF features computed independently: the untouched full FluxTransformer2DModel.forward, the
    pipeline's own encode_prompt, and hooks on block K (its input hidden states and its AdaLN linear).
    head "raw": the ensemble mean of block K's input after discard, nothing more (`ditf-export --head raw`)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    transformer = FluxTransformer2DModel.from_pretrained(folder / "transformer").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder").eval(),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(folder / "text_encoder_2").eval(),
        tokenizer_2=AutoTokenizer.from_pretrained(folder / "tokenizer_2"),
    )
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=32)

    b, e, c, h, w = noise.shape
    z = vae.encode(image).latent_dist.mean
    z = (z - vae.config.shift_factor) * vae.config.scaling_factor
    t = timestep / 1000.0
    x_t = (t * noise + (1 - t) * z[:, None]).reshape(b * e, c, h, w)
    packed = FluxPipeline._pack_latents(x_t, b * e, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b * e, h // 2, w // 2, "cpu", torch.float32)

    n_double = transformer.config.num_layers
    block = (transformer.transformer_blocks[layer] if layer < n_double
             else transformer.single_transformer_blocks[layer - n_double])
    norm = block.norm1 if layer < n_double else block.norm
    captured = {}

    def keep_input(module, args, kwargs):
        captured["h"] = kwargs["hidden_states"]

    def keep_modulation(module, args, out):
        captured["mod"] = out

    h1 = block.register_forward_pre_hook(keep_input, with_kwargs=True)
    h2 = norm.linear.register_forward_hook(keep_modulation)
    try:
        transformer(hidden_states=packed, encoder_hidden_states=prompt_embeds.expand(b * e, -1, -1),
                    pooled_projections=pooled.expand(b * e, -1), timestep=torch.full((b * e,), t),
                    img_ids=img_ids, txt_ids=text_ids,
                    guidance=None if guidance is None else torch.full((b * e,), guidance))
    finally:
        h1.remove()
        h2.remove()
    hk = captured["h"].reshape(b, e, -1, captured["h"].shape[-1]).mean(1)
    hk[..., list(discard)] = 0
    dim = hk.shape[-1]
    if head == "raw":
        return hk.transpose(1, 2).reshape(b, dim, h // 2, w // 2).numpy()
    shift, scale = captured["mod"][0, :dim], captured["mod"][0, dim : 2 * dim]
    feat = torch.nn.functional.layer_norm(hk, (dim,), eps=1e-6) * (1 + scale) + shift
    return feat.transpose(1, 2).reshape(b, dim, h // 2, w // 2).numpy()


def _our_graph(folder: Path, layer: int):
    from ditf_export.export import ExportRequest, build_graph, plan

    return build_graph(plan(ExportRequest(model=str(folder), out=folder.parent / "unused", layer=layer,
                                          discard="7,41", text_max_length=32))).graph


@pytest.mark.parametrize("layer", [1, 4], ids=["double-block", "single-block"])
def test_reference_matches_diffusers_forward_with_hooks(flux_tiny_dir, layer):
    image, noise = _rng_inputs(2, 3, 64, 96, seed=layer)
    expected = diffusers_hook_features(flux_tiny_dir, layer, image, noise)
    with torch.no_grad():
        ours = _our_graph(flux_tiny_dir, layer)(image, noise).numpy()
    res = compare(ours, expected, "fp32")
    assert res.min_cosine >= MIN_COSINE, res
    assert res.rel_error <= MAX_REL_ERROR, res
    # the head is not the identity: the modulation and discard really were applied
    assert np.abs(ours[:, [7, 41]] - ours[:, [7, 41]].mean()).max() < np.abs(ours).max()


def test_planted_channels_dominate_without_discard(flux_tiny_dir):
    """The planted massive channels are real: raw h_K is dominated by them (what discard removes)."""
    from ditf_export.export import ExportRequest, build_graph, plan

    graph = build_graph(plan(ExportRequest(model=str(flux_tiny_dir), out=flux_tiny_dir.parent / "x", layer=2,
                                           discard="none"))).graph
    captured = {}

    def keep_raw(module, args):
        captured["raw"] = args[0]

    graph.head.register_forward_pre_hook(keep_raw)
    with torch.no_grad():
        graph(*_rng_inputs(1, 2, 64, 64))
    med = captured["raw"].abs().median(dim=1).values[0]  # per-channel median |h| over tokens
    ratio = med / med.median()
    assert set(torch.nonzero(ratio > 50).flatten().tolist()) == {7, 41}


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (2, 2, 96, 48), (3, 2, 128, 160), (1, 4, 48, 112)])
def test_onnx_matches_pytorch_at_many_sizes(flux_tiny_export, flux_tiny_dir, shape):
    """One exported graph, dynamic B/E/H/W, against the PyTorch reference (planted channels discarded)."""
    import onnxruntime as ort

    b, e, h, w = shape
    graph = _our_graph(flux_tiny_dir, 3)
    image, noise = _rng_inputs(b, e, h, w, seed=sum(shape))
    with torch.no_grad():
        ref = graph(image, noise).numpy()
    sess = ort.InferenceSession(str(flux_tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": image.numpy(), "noise": noise.numpy()})[0]
    assert got.shape == (b, 64, h // 16, w // 16)
    res = compare(got, ref, "fp32")
    assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res
    assert np.all(got[:, [7, 41]] == got[:, [7, 41]])  # finite
    assert res.nn_agreement >= 0.99


def test_export_folder_contract(flux_tiny_export):
    names = sorted(p.name for p in flux_tiny_export.iterdir())
    # plus the verification stamp (files hashed at export: the first load need not hash them again)
    assert names == [".ditf-verified.json", "manifest.json", "model.onnx", "model.onnx.data", "reference.safetensors"]
    m = Manifest.load(flux_tiny_export)
    m.verify_files(flux_tiny_export)
    assert m.family == "flux" and m.feature.layer == 3 and m.feature.block == "single_transformer_blocks.1"
    assert m.feature.discard == (7, 41) and m.feature.timestep == 260 and m.feature.guidance == 3.5
    assert m.geometry.latent_channels == 16 and m.geometry.feature_channels == 64
    assert m.parity["passed"] and len(m.parity["results"]) == 2
    for r in m.parity["results"]:
        assert r["min_cosine"] >= MIN_COSINE and r["rel_error"] <= MAX_REL_ERROR
        assert r["pck_points"] > 0 and r["pck_agreement"] >= 0.95  # keypoint transfers (exact matcher) agree
    assert set(m.tools) >= {"torch", "diffusers", "onnx", "onnxruntime"}
    assert "transformer/diffusion_pytorch_model.safetensors" in m.source_weights
    # the reference arrays reproduce on onnxruntime without torch in the loop
    from safetensors.numpy import load_file
    import onnxruntime as ort

    ref = load_file(str(flux_tiny_export / "reference.safetensors"))
    sess = ort.InferenceSession(str(flux_tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": ref["image"], "noise": ref["noise"]})[0]
    assert compare(got, ref["features"], "fp32")


def test_graph_has_no_conditioning_path_and_no_forbidden_ops(flux_tiny_export):
    """Baked: no timestep/guidance/pooled embedding, no modulation linears, no float64/Einsum."""
    import onnx

    from ditf_export.graph_checks import check_graph

    counts = check_graph(flux_tiny_export / "model.onnx")
    model = onnx.load(str(flux_tiny_export / "model.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["image", "noise"]
    assert [o.name for o in model.graph.output] == ["features"]
    names = " ".join(n.name for n in model.graph.node) + " ".join(i.name for i in model.graph.initializer)
    for absent in ("time_text_embed", "timestep_embedder", "guidance_embedder", "context_embedder",
                   "norm1.linear.weight", "norm.linear.weight"):
        assert absent not in names, absent
    # the baked modulation constants are there instead, one per kept block's AdaLN
    assert sum(".linear.value" in i.name for i in model.graph.initializer) >= 3
    assert "Sin" not in counts and "Cos" not in counts  # RoPE comes from float32 tables
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["ditf.layer"] == "3"


def test_truncated_loading_reads_only_kept_blocks(flux_tiny_dir):
    from ditf_export.loading import load_truncated_transformer, resolve_source
    from ditf_export.catalog import adapter_for

    source = resolve_source(str(flux_tiny_dir))
    adapter = adapter_for("flux")
    small, r1 = load_truncated_transformer(source, adapter, 1)
    big, r2 = load_truncated_transformer(source, adapter, 5)
    assert len(small.transformer_blocks) == 2 and len(small.single_transformer_blocks) == 0
    assert len(big.single_transformer_blocks) == 4
    assert r1.bytes_read < r2.bytes_read and r1.files == r2.files
    # block K's attention is never read, only its AdaLN linear
    assert small.transformer_blocks[1].attn.to_q.weight.is_meta
    assert not small.transformer_blocks[1].norm1.linear.weight.is_meta


def test_prompt_changes_features_and_prompt_embeds_path(flux_tiny_dir, tmp_path):
    """--prompt-embeds loads no text encoder: a folder without them exports the same graph."""
    import shutil

    from safetensors.torch import save_file

    from ditf_export.export import ExportRequest, build_graph, plan
    from ditf_export.text import encode_clip_t5

    embeds = encode_clip_t5(type("S", (), {"path": flux_tiny_dir})(), "a photo of a cat", 32)
    path = tmp_path / "embeds.safetensors"
    save_file({k: v.contiguous() for k, v in embeds.items()}, str(path))
    bare = tmp_path / "bare"
    for sub in ("transformer", "vae"):
        shutil.copytree(flux_tiny_dir / sub, bare / sub)
    shutil.copy(flux_tiny_dir / "model_index.json", bare / "model_index.json")

    image, noise = _rng_inputs(1, 2, 64, 64)
    outs = []
    for model, kw in ((bare, {"prompt_embeds": path}), (flux_tiny_dir, {"prompt": "a photo of a cat"}),
                      (flux_tiny_dir, {"prompt": ""})):
        graph = build_graph(plan(ExportRequest(model=str(model), out=tmp_path / "o", layer=2, text_max_length=32,
                                               **kw))).graph
        with torch.no_grad():
            outs.append(graph(image, noise).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert np.abs(outs[1] - outs[2]).max() > 1e-3  # the prompt is really baked in


def test_hf_id_resolves_from_the_local_cache_offline(tmp_path, flux_tiny_dir, monkeypatch):
    """An HF id is looked up in the local cache only (the cache layout huggingface_hub writes)."""
    import shutil

    from ditf_export.loading import resolve_source

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--flux-tiny"
    shutil.copytree(flux_tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_source("someone/flux-tiny")
    assert source.path == repo / "snapshots" / commit and source.family == "flux"


def test_cli_export_registry_name_offline(tmp_path):
    from ditf_export.cli import main

    out = tmp_path / "cli-out"
    r = CliRunner().invoke(main, ["--model", "flux-tiny", "--layer", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = Manifest.load(out)
    assert m.model_name == "flux-tiny" and m.feature.discard == (7, 41) and m.feature.discard_source == "registry"
    assert m.preprocess.long_side == 256


# -- bad input: a clear message, exit != 0, nothing left behind --------------------------------------------


def _invoke(args):
    from ditf_export.cli import main

    return CliRunner().invoke(main, args)


def _nothing_left(parent: Path, name: str):
    return not any(p.name.startswith((name, f".{name}")) for p in parent.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "flux-huge"], "not a registry name"),
        (["--model", "/nonexistent/folder/x"], "--model /nonexistent/folder/x: no such folder"),
        (["--model", "flux"], "not in the local Hugging Face cache"),
        (["--model", "{tiny}", "--layer", "6"], "out of range: this flux model has layers 0..5"),
        (["--model", "{tiny}", "--layer", "-1"], "--layer -1: layers are numbered from 0"),
        (["--model", "{tiny}", "--layer", "1", "--discard", "7,64"], "outside this model's hidden size 0..63"),
        (["--model", "{tiny}", "--layer", "1", "--discard", "a,b"], "comma list"),
        (["--model", "{tiny}", "--layer", "1", "--timestep", "1200"], "must be in [0, 1000]"),
        (["--model", "{bad_embeds}", "--layer", "1", "--prompt-embeds", "{embeds}"], "expected [1, L, 32]"),
        (["--model", "{empty}", "--layer", "1"], "not a diffusers pipeline folder"),
    ],
    ids=["unknown-model", "missing-folder", "hf-not-cached", "layer-high", "layer-negative", "discard-range",
         "discard-syntax", "timestep", "prompt-embeds-shape", "not-a-pipeline"],
)
def test_bad_inputs_are_refused_with_a_message(tmp_path, flux_tiny_dir, args, message, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    embeds = tmp_path / "bad.safetensors"
    save_file({"prompt_embeds": torch.zeros(1, 8, 31), "pooled_prompt_embeds": torch.zeros(1, 32)}, str(embeds))
    (tmp_path / "empty").mkdir()
    subs = {"{tiny}": str(flux_tiny_dir), "{bad_embeds}": str(flux_tiny_dir), "{embeds}": str(embeds),
            "{empty}": str(tmp_path / "empty")}
    args = [subs.get(a, a) for a in args]
    out = tmp_path / "out"
    r = _invoke(args + ["--out", str(out)])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output
    assert _nothing_left(tmp_path, "out")


def test_guidance_on_model_without_guidance_embedding_is_an_error(tmp_path):
    from ditf_export.tiny import build_flux_tiny

    folder = build_flux_tiny(tmp_path / "schnell-like", guidance_embeds=False)
    r = _invoke(["--model", str(folder), "--layer", "1", "--guidance", "3.5", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "no guidance embedding" in r.output


def test_model_without_guidance_embedding_matches_diffusers(tmp_path):
    """A schnell-like FLUX (no guidance embedding) takes the other time-text embedding; `--guidance none`
    says the same explicitly, and on a guidance-distilled model it is refused."""
    from ditf_export.export import ExportRequest, build_graph, plan
    from ditf_export.tiny import build_flux_tiny

    folder = build_flux_tiny(tmp_path / "schnell-like", guidance_embeds=False)
    for guidance in ({}, {"guidance": None}):  # not given / explicitly none
        the_plan = plan(ExportRequest(model=str(folder), out=tmp_path / "o", layer=1, discard="7,41",
                                      text_max_length=32, **guidance))
        assert the_plan.options.guidance is None
    image, noise = _rng_inputs(2, 2, 48, 80, seed=3)
    with torch.no_grad():
        ours = build_graph(the_plan).graph(image, noise).numpy()
    res = compare(ours, diffusers_hook_features(folder, 1, image, noise, guidance=None), "fp32")
    assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res
    r = _invoke(["--model", "flux-tiny", "--layer", "1", "--guidance", "none", "--out", str(tmp_path / "o2")])
    assert r.exit_code != 0 and "guidance-distilled: pass --guidance" in r.output, r.output
    r = _invoke(["--model", "flux-tiny", "--layer", "1", "--guidance", "lots", "--out", str(tmp_path / "o2")])
    assert r.exit_code != 0 and "is not a number (or 'none')" in r.output, r.output


def test_existing_out_needs_force_and_force_replaces_atomically(tmp_path, flux_tiny_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "0", "--out", str(out)])
    assert r.exit_code != 0 and "already exists; pass --force" in r.output
    assert (out / "keep.txt").read_text() == "mine"
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "0", "--out", str(out), "--force"])
    assert r.exit_code == 0, r.output
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_export_leaves_nothing(tmp_path, flux_tiny_dir, monkeypatch):
    """A failure after the ONNX was written (here: parity) leaves no folder that looks finished."""
    from ditf_export import export as export_mod

    def failing_parity(*a, **k):
        raise export_mod.ParityError("simulated parity failure")

    monkeypatch.setattr(export_mod.parity, "run_parity", failing_parity)
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "0", "--out", str(tmp_path / "out")])
    assert r.exit_code != 0 and "simulated parity failure" in r.output
    assert list(tmp_path.iterdir()) == []


def test_onnx_refuses_sizes_not_multiple_of_16(flux_tiny_export):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(flux_tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):
        sess.run(["features"], {"image": np.zeros((1, 3, 40, 64), np.float32),
                                "noise": np.zeros((1, 1, 16, 5, 8), np.float32)})


def test_a_damaged_builtin_cache_is_rebuilt(tmp_path, monkeypatch):
    """The built-in model cache is trusted only when complete: every component model_index.json lists has
    its config and weights, and tiny.py's random-weights mark is there (an older build lacks it)."""
    from ditf_export.loading import builtin_complete, resolve_source

    monkeypatch.setenv("DITF_CACHE", str(tmp_path))
    source = resolve_source("flux-tiny")
    config_file = "transformer/config.json"
    assert source.path == tmp_path / "flux-tiny" and source.random_weights
    assert builtin_complete(source.path, config_file)
    index = json.loads((source.path / "model_index.json").read_text())
    assert {"transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"} <= set(index)
    weights = source.path / "vae" / "diffusion_pytorch_model.safetensors"
    weights.unlink()  # an interrupted copy, a cleaned-up cache...
    assert not builtin_complete(source.path, config_file)
    assert resolve_source("flux-tiny").path == source.path and weights.is_file()  # rebuilt, offline
    shutil.rmtree(source.path / "text_encoder_2")
    assert not builtin_complete(source.path, config_file)
    # a single transformers model (dinov2-tiny): its config carries the mark, its safetensors must be there
    dino = resolve_source("dinov2-tiny")
    assert dino.random_weights and builtin_complete(dino.path, "config.json")
    (dino.path / "model.safetensors").unlink()
    assert not builtin_complete(dino.path, "config.json")
    assert resolve_source("dinov2-tiny").random_weights and (dino.path / "model.safetensors").is_file()


def test_latte_tiny_is_a_builtin_video_model(tmp_path, monkeypatch):
    from ditf_export.catalog import model_spec
    from ditf_export.loading import resolve_source

    monkeypatch.setenv("DITF_CACHE", str(tmp_path))
    spec = model_spec("latte-tiny")
    assert spec.family == "latte" and spec.hf_id is None and spec.builtin is not None
    source = resolve_source("latte-tiny")  # built offline on first use, like flux-tiny
    assert source.family == "latte" and source.random_weights and source.spec is spec


def test_the_not_cached_error_names_a_working_hf_download_command(tmp_path, monkeypatch):
    """huggingface_hub ships `hf` (no `huggingface-cli`); FLUX.1-dev is gated and the message says so."""
    import shlex
    import subprocess
    import sys

    from ditf_export.errors import ExportInputError
    from ditf_export.loading import download_command, resolve_source

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    with pytest.raises(ExportInputError) as dev:
        resolve_source("flux")
    message = str(dev.value)
    assert download_command("black-forest-labs/FLUX.1-dev") in message and "huggingface-cli" not in message
    assert "is gated: accept its licence at https://huggingface.co/black-forest-labs/FLUX.1-dev" in message
    with pytest.raises(ExportInputError) as schnell:
        resolve_source("flux-schnell")
    assert "gated" not in str(schnell.value)
    # The installed `hf` parses the command as patterns, not file names (offline: it stops at the network).
    hf = Path(sys.executable).parent / "hf"
    command = shlex.split(download_command("owner/model"))
    run = subprocess.run([str(hf), *command[1:], "--dry-run"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-empty")})
    assert command[:3] == ["hf", "download", "owner/model"] and command.count("--include") == 6
    assert "Ignoring `--include`" not in run.stderr and "No such option" not in run.stderr, run.stderr

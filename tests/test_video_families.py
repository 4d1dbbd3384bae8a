"""Wan 2.1 and CogVideoX (causal 3-D VAEs, spacetime tokens): the exported graph against diffusers' own forward, hooked.

Tiny random-weight pipelines of the real classes (exporter/tiny.py, saved with save_pretrained). The
reference is diffusers itself: `AutoencoderKLWan.encode` / `AutoencoderKLCogVideoX.encode` (their chunked cache
loops), the noise mix (flow matching for Wan; the scheduler's own `add_noise` for CogVideoX), and the transformer's
forward stopped at block K's input by hooks (several K from one forward).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ditf_export.tiny import COGVIDEOX_TINY_MASSIVE, WAN_TINY_MASSIVE
from ditf_runtime.manifest import Manifest
from ditf_runtime.parity import compare

MIN_COSINE = 0.99999
MAX_REL_ERROR = 1e-4
TIMESTEP = 260


class _Stop(Exception):
    pass


def _wan_embeds(seed: int = 8) -> dict:
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, 12, 32, generator=g)
    embeds[:, 7:] = 0  # WanPipeline zero-pads past the prompt's tokens (no mask)
    return {"prompt_embeds": embeds}


def _embeds_file(tmp: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    path = tmp / "wan-embeds.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _video_graph(folder: Path, layer: int, tmp: Path, massive: tuple[int, ...], embeds: dict):
    """The exporter's PyTorch feature module of a tiny video model at `layer` (no ONNX), baked with `embeds`."""
    from ditf_export.export import ExportRequest, build_graph, plan

    return build_graph(plan(ExportRequest(
        model=str(folder), out=tmp / "unused", layer=layer, timestep=TIMESTEP, image_size=128,
        discard=",".join(map(str, massive)), prompt_embeds=_embeds_file(tmp, embeds)))).graph


def _clip_inputs(b, e, frames, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    latent_frames = 1 + (frames - 1) // 4
    return (torch.rand(b, frames, 3, h, w, generator=g) * 2 - 1,
            torch.randn(b, e, latent_frames, 4, h // 8, w // 8, generator=g))


def _block_inputs(blocks, layers, take, forward) -> dict:
    """What `take(args, kwargs)` picks from the inputs of blocks[K] for every K in `layers`, from ONE `forward()`
    (stopped after the last of them)."""
    captured = {}

    def keeper(layer):
        def keep(module, args, kwargs):
            captured[layer] = take(args, kwargs)
            if layer == max(layers):
                raise _Stop
        return keep

    handles = [blocks[k].register_forward_pre_hook(keeper(k), with_kwargs=True) for k in layers]
    try:
        forward()
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _assert_blocks_match(graph_of_layer, expected, image, noise, channels: int, label: str) -> None:
    """Our PyTorch graph at every block K of `expected` equals the hooked diffusers features (fp32 bounds)."""
    frames, (h, w) = image.shape[1], image.shape[-2:]
    lf, hp, wp = 1 + (frames - 1) // 4, h // 16, w // 16
    for layer, want in expected.items():
        with torch.no_grad():
            ours = graph_of_layer(layer)(image, noise).numpy()
        assert ours.shape == (image.shape[0], lf, channels, hp, wp)
        res = compare(ours.reshape(-1, channels, hp, wp), want.reshape(-1, channels, hp, wp), "fp32")
        print(f"{label} layer {layer}, {frames} frames, {(h, w)}: {res}")
        assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, (layer, res)


def _assert_onnx_matches(export: Path, graph, clips, channels: int, label: str) -> None:
    """onnxruntime on the exported model.onnx equals the PyTorch graph it came from, for each (frames, (h, w))."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    for frames, size in clips:
        image, noise = _clip_inputs(1, 2, frames, *size, seed=frames)
        with torch.no_grad():
            ref = graph(image, noise).numpy()
        got = sess.run(["features"], {"image": image.numpy(), "noise": noise.numpy()})[0]
        assert got.shape == ref.shape == (1, 1 + (frames - 1) // 4, channels, size[0] // 16, size[1] // 16)
        res = compare(got.reshape(-1, *got.shape[2:]), ref.reshape(-1, *ref.shape[2:]), "fp32")
        print(f"{label} ORT vs PyTorch {frames} frames {size}: {res}")
        assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res


@torch.no_grad()
def wan_hook_features(folder: Path, layers, image, noise, embeds, discard) -> dict[int, np.ndarray]:
    """diffusers end to end: AutoencoderKLWan.encode (chunked, cached), (z - mean) / std, flow-matching mix, then
    ONE WanTransformer3DModel.forward with hooks on blocks[K] for every K in `layers` (stopped after the last);
    each K's input gets the DiTF head with block K's own modulation. Returns {K: [B, F', C, h, w]}."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from safetensors.torch import load_file

    vae = AutoencoderKLWan.from_pretrained(folder / "vae").eval()
    # from_pretrained refuses this class without accelerate (keep_in_fp32_modules): the config and the saved
    # safetensors, loaded strictly, are the same model
    transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder / "transformer")).eval()
    transformer.load_state_dict(load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors"), strict=True)
    b, e, lf, c, h, w = noise.shape
    z = vae.encode(image.transpose(1, 2)).latent_dist.mean  # [B, c, F', h, w]
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
    z = ((z - mean) * (1.0 / std)).transpose(1, 2)  # [B, F', c, h, w]
    assert z.shape[1] == lf
    t = TIMESTEP / 1000
    x_t = ((1 - t) * z[:, None] + t * noise).flatten(0, 1)  # [B*E, F', c, h, w]
    captured = _block_inputs(transformer.blocks, layers, lambda args, kwargs: (args[0], args[2]), lambda: transformer(
        x_t.transpose(1, 2), timestep=torch.full((b * e,), float(TIMESTEP)),
        encoder_hidden_states=embeds["prompt_embeds"].expand(b * e, -1, -1)))
    out = {}
    for k in layers:
        hidden, t6 = captured[k]
        hk = hidden.reshape(b, e, lf, -1, hidden.shape[-1]).mean(1)  # [B, F', P, C]
        dim = hk.shape[-1]
        hk[..., list(discard)] = 0
        mod = transformer.blocks[k].scale_shift_table + t6[:1].float()
        feat = torch.nn.functional.layer_norm(hk, (dim,), eps=1e-6) * (1 + mod[0, 1]) + mod[0, 0]
        out[k] = feat.transpose(-1, -2).reshape(b, lf, dim, h // 2, w // 2).numpy()
    return out


@torch.no_grad()
def test_wan_clip_encoder_equals_diffusers_chunked_encode(family_tiny_dir):
    """One causal pass over the clip == AutoencoderKLWan's chunk-by-chunk cache loop, for 1 + 4k frames."""
    from diffusers import AutoencoderKLWan

    from ditf_export.families.wan import WanClipEncoder

    folder = family_tiny_dir("wan")
    ours = WanClipEncoder(AutoencoderKLWan.from_pretrained(folder / "vae").eval())
    vae = AutoencoderKLWan.from_pretrained(folder / "vae").eval()
    c = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, c, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, c, 1, 1, 1)
    for frames, (h, w) in ((5, (40, 56)), (9, (48, 32)), (13, (24, 40))):
        clip = torch.rand(1, frames, 3, h, w, generator=torch.Generator().manual_seed(frames)) * 2 - 1
        want = ((vae.encode(clip.transpose(1, 2)).latent_dist.mean - mean) * inv_std).transpose(1, 2)
        got = ours(clip)
        assert got.shape == (1, 1 + (frames - 1) // 4, c, h // 8, w // 8)
        assert torch.allclose(got, want, rtol=0, atol=1e-5 * float(want.abs().max())), (frames, (got - want).abs().max())


@pytest.mark.parametrize("frames, size", [(5, (48, 80)), (13, (64, 48))], ids=["5f-48x80", "13f-64x48"])
def test_wan_reference_matches_diffusers_forward_with_hooks(frames, size, family_tiny_dir, tmp_path):
    """Every block K of the tiny model (0, 1, 2) from one hooked diffusers forward, at a non-square size."""
    folder = family_tiny_dir("wan")
    layers = (0, 1, 2)
    image, noise = _clip_inputs(2, 2, frames, *size, seed=frames)
    expected = wan_hook_features(folder, layers, image, noise, _wan_embeds(), WAN_TINY_MASSIVE)
    assert sorted(expected) == list(layers)
    _assert_blocks_match(lambda layer: _video_graph(folder, layer, tmp_path, WAN_TINY_MASSIVE, _wan_embeds()),
                         expected, image, noise, 48, "wan")


@pytest.fixture(scope="module")
def wan_export(tmp_path_factory, family_tiny_dir):
    """The tiny Wan exported once at block 1 (fp32), shared by the ONNX, runtime and DAVIS checks."""
    from ditf_export.export import ExportRequest, export
    root = tmp_path_factory.mktemp("wan-export")
    out = root / "wan-l1"
    export(ExportRequest(model=str(family_tiny_dir("wan")), out=out, layer=1, timestep=TIMESTEP, ensemble=1,
                         image_size=128, discard=",".join(map(str, WAN_TINY_MASSIVE)),
                         prompt_embeds=_embeds_file(root, _wan_embeds())))
    return out


def test_wan_onnx_matches_pytorch_for_other_clip_lengths_and_sizes(wan_export, family_tiny_dir, tmp_path):
    m = Manifest.load(wan_export)
    assert m.family == "wan" and m.geometry.frame_axis == 1 and m.geometry.frame_stride == 4
    assert m.feature.block == "blocks.1"
    assert m.input("image").shape == ("batch", "frames", 3, "height", "width")
    assert m.input("noise").shape == ("batch", "ensemble", "1+(frames-1)/4", 4, "height/8", "width/8")
    assert m.outputs[0].shape == ("batch", "1+(frames-1)/4", 48, "height/16", "width/16")
    assert m.geometry.max_size == 64 * 16
    for r in m.parity["results"]:
        assert r["min_cosine"] >= MIN_COSINE and r["rel_error"] <= MAX_REL_ERROR, r
    graph = _video_graph(family_tiny_dir("wan"), 1, tmp_path, WAN_TINY_MASSIVE, _wan_embeds())
    _assert_onnx_matches(wan_export, graph,
                         ((5, (48, 112)), (17, (32, 48))), 48, "wan")


def test_wan_runtime_maps_latent_frames_back_to_video_frames(wan_export):
    """Any clip length: padded with its last frame to 1 + 4k, then frame f reads latent frame ceil(f / 4)."""
    import ditf_runtime

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(7)]
    with ditf_runtime.load(wan_export, threads=1) as extractor:
        assert extractor.is_video and extractor.frame_range == (1, 81)
        maps = extractor.extract_video(frames)
        padded = extractor.extract_video(frames + [frames[-1]] * 2)  # 9 = 1 + 4 * 2 frames: no padding
    assert len(maps) == 7 and len(padded) == 9
    for f in range(7):
        assert np.array_equal(np.asarray(maps[f]), np.asarray(padded[f]))
    assert np.array_equal(np.asarray(maps[1]), np.asarray(maps[4]))  # frames 1..4 share latent frame 1
    assert not np.array_equal(np.asarray(maps[4]), np.asarray(maps[5]))


@pytest.mark.parametrize("export_fixture", ["wan_export", "cog_export"])
def test_track_and_eval_davis(export_fixture, request, tmp_path):
    """ditf track and ditf eval-davis on a Wan and a CogVideoX export (1 + 4k frame clips, frames mapped back)."""
    export = request.getfixturevalue(export_fixture)
    from click.testing import CliRunner

    from davis_synthetic import make_davis
    from ditf_runtime.cli import main

    root = tmp_path / "davis"
    make_davis(root, videos=("shapes-a",), frames=6)
    frames_dir = root / "JPEGImages" / "480p" / "shapes-a"
    run = CliRunner().invoke(main, ["track", str(frames_dir), "--model", str(export), "--threads", "1",
                                    "--points", "10,10 40,30", "--json", str(tmp_path / "track.json")])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(main, ["eval-davis", str(root), "--model", str(export), "--threads", "1",
                                    "--videos", "shapes-a", "--size", "64", "--out", str(tmp_path / "masks"),
                                    "--json", str(tmp_path / "davis.json")])
    assert run.exit_code == 0, run.output
    assert "J&F-Mean" in run.output
    assert len(list((tmp_path / "masks" / "shapes-a").glob("*.png"))) == 6


# -- CogVideoX ---------------------------------------------------------------------------------------------------

def _cog_embeds(seed: int = 9) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": torch.randn(1, 12, 32, generator=g)}  # max_text_seq_length tokens, as the pipeline pads


@pytest.fixture(scope="module")
def cog_dirs(family_tiny_dir, tmp_path_factory):
    """{"sincos": the 2b-like tiny CogVideoX (family_tiny_dir's), "rope": the same weights as a 5b-like RoPE model}."""
    from ditf_export.tiny import build_cogvideox_tiny

    rope = build_cogvideox_tiny(tmp_path_factory.mktemp("cog") / "cogvideox-rope-tiny",
                                use_rotary_positional_embeddings=True)
    return {"sincos": family_tiny_dir("cogvideox"), "rope": rope}


@torch.no_grad()
def cog_hook_features(folder: Path, layers, image, noise, embeds, discard) -> dict[int, np.ndarray]:
    """diffusers end to end: AutoencoderKLCogVideoX.encode (8-frame chunks, cached), mean * scaling_factor, the
    scheduler's own add_noise, RoPE (5b-like) as CogVideoXPipeline prepares it, then ONE
    CogVideoXTransformer3DModel.forward hooked at transformer_blocks[K] for every K; block K's own norm1 (its
    affine LayerNorm, shift and scale) on each K's input. Returns {K: [B, F', C, h, w]}."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    vae = AutoencoderKLCogVideoX.from_pretrained(folder / "vae").eval()
    transformer = CogVideoXTransformer3DModel.from_pretrained(folder / "transformer").eval()
    scheduler = CogVideoXDDIMScheduler.from_pretrained(folder / "scheduler")
    b, e, lf, c, h, w = noise.shape
    z = (vae.encode(image.transpose(1, 2)).latent_dist.mean * vae.config.scaling_factor).transpose(1, 2)
    assert z.shape[1] == lf
    x_t = scheduler.add_noise(z[:, None].expand(b, e, *z.shape[1:]).flatten(0, 1), noise.flatten(0, 1),
                              torch.full((b * e,), TIMESTEP, dtype=torch.long))
    rope = None
    if transformer.config.use_rotary_positional_embeddings:
        pipe = SimpleNamespace(vae_scale_factor_spatial=8, transformer=transformer)
        rope = CogVideoXPipeline._prepare_rotary_positional_embeddings(pipe, image.shape[-2], image.shape[-1], lf,
                                                                       torch.device("cpu"))
    blocks = transformer.transformer_blocks
    captured = _block_inputs(blocks, layers, lambda args, kwargs: (kwargs["hidden_states"], kwargs["temb"]), lambda: transformer(
        x_t, encoder_hidden_states=embeds["prompt_embeds"].expand(b * e, -1, -1),
        timestep=torch.full((b * e,), TIMESTEP, dtype=torch.long), image_rotary_emb=rope))
    out = {}
    for k in layers:
        hidden, temb = captured[k]
        hk = hidden.reshape(b, e, lf, -1, hidden.shape[-1]).mean(1)  # [B, F', P, C]
        hk[..., list(discard)] = 0
        norm1 = blocks[k].norm1
        shift, scale = norm1.linear(norm1.silu(temb[:1])).chunk(6, dim=1)[:2]
        feat = norm1.norm(hk) * (1 + scale) + shift
        out[k] = feat.transpose(-1, -2).reshape(b, lf, -1, h // 2, w // 2).numpy()
    return out


@torch.no_grad()
def test_cogvideox_clip_encoder_equals_diffusers_chunked_encode(family_tiny_dir):
    """One pass with per-chunk GroupNorm statistics == AutoencoderKLCogVideoX.encode's 8-frame chunk loop, for 1 + 4k
    frames: one chunk (5, 13) and several (17 = 9 + 8, 21 = 13 + 8), where a plain whole-clip pass differs."""
    from diffusers import AutoencoderKLCogVideoX

    from ditf_export.families.cogvideox import CogVideoXClipEncoder

    folder = family_tiny_dir("cogvideox")
    vae = AutoencoderKLCogVideoX.from_pretrained(folder / "vae").eval()
    ours = CogVideoXClipEncoder(AutoencoderKLCogVideoX.from_pretrained(folder / "vae").eval(), max_frames=25)
    scale = vae.config.scaling_factor
    for frames, (h, w) in ((5, (40, 56)), (13, (24, 40)), (17, (16, 24)), (21, (24, 16))):
        clip = torch.rand(1, frames, 3, h, w, generator=torch.Generator().manual_seed(frames)) * 2 - 1
        want = (vae.encode(clip.transpose(1, 2)).latent_dist.mean * scale).transpose(1, 2)
        got = ours(clip)
        assert got.shape == (1, 1 + (frames - 1) // 4, 4, h // 8, w // 8)
        tol = 1e-5 * float(want.abs().max())
        assert torch.allclose(got, want, rtol=0, atol=tol), (frames, (got - want).abs().max())
        if frames > 16:  # the per-chunk statistics matter: diffusers' encoder over the whole clip at once is off
            whole = (vae.encoder(clip.transpose(1, 2))[0][:, :4] * scale).transpose(1, 2)
            assert (whole - want).abs().max() > 100 * tol


@pytest.mark.parametrize("kind, frames, size", [("sincos", 5, (48, 80)), ("sincos", 17, (32, 48)),
                                                ("rope", 9, (64, 48)), ("rope", 5, (32, 112))],
                         ids=["2b-like-5f-48x80", "2b-like-17f-32x48", "5b-like-9f-64x48", "5b-like-5f-32x112"])
def test_cogvideox_reference_matches_diffusers_forward_with_hooks(kind, frames, size, cog_dirs, tmp_path):
    """Blocks 0, 1, 2 of the tiny model from one hooked diffusers forward; sin-cos (2b) and RoPE (5b, whose crop of
    the base grid depends on the aspect ratio: 64x48 is taller, 32x112 wider than the base 4 x 6 tokens)."""
    folder = cog_dirs[kind]
    layers = (0, 1, 2)
    image, noise = _clip_inputs(2, 2, frames, *size, seed=frames)
    expected = cog_hook_features(folder, layers, image, noise, _cog_embeds(), COGVIDEOX_TINY_MASSIVE)
    assert sorted(expected) == list(layers)
    _assert_blocks_match(lambda layer: _video_graph(folder, layer, tmp_path, COGVIDEOX_TINY_MASSIVE, _cog_embeds()),
                         expected, image, noise, 64, f"cogvideox {kind}")


@pytest.fixture(scope="module")
def cog_export(tmp_path_factory, cog_dirs):
    """The 5b-like (RoPE) tiny CogVideoX exported once at block 1 (fp32): its crop table is gathered by the grid's
    own size inside the ONNX graph. (The 2b-like sin-cos model is exported by test_trt_rtx_builds.py.)"""
    from ditf_export.export import ExportRequest, export
    root = tmp_path_factory.mktemp("cog-export")
    out = root / "cog-rope-l1"
    export(ExportRequest(model=str(cog_dirs["rope"]), out=out, layer=1, timestep=TIMESTEP, ensemble=1,
                         image_size=128, discard=",".join(map(str, COGVIDEOX_TINY_MASSIVE)),
                         prompt_embeds=_embeds_file(root, _cog_embeds())))
    return out


def test_cogvideox_onnx_matches_pytorch_for_other_clip_lengths_and_sizes(cog_export, cog_dirs, tmp_path):
    """Several VAE chunks (17 = 9 + 8 and 21 = 13 + 8 frames) and other aspect ratios (other RoPE crops) through
    onnxruntime; the manifest states the frame axis, the stride and the limits."""
    m = Manifest.load(cog_export)
    assert m.family == "cogvideox" and m.geometry.frame_axis == 1 and m.geometry.frame_stride == 4
    assert m.feature.block == "transformer_blocks.1"
    assert m.input("image").shape == ("batch", "frames", 3, "height", "width")
    assert m.input("noise").shape == ("batch", "ensemble", "1+(frames-1)/4", 4, "height/8", "width/8")
    assert m.outputs[0].shape == ("batch", "1+(frames-1)/4", 64, "height/16", "width/16")
    assert m.geometry.max_size == 128 * 16
    for r in m.parity["results"]:
        assert r["min_cosine"] >= MIN_COSINE and r["rel_error"] <= MAX_REL_ERROR, r
    graph = _video_graph(cog_dirs["rope"], 1, tmp_path, COGVIDEOX_TINY_MASSIVE, _cog_embeds())
    _assert_onnx_matches(cog_export, graph,
                         ((17, (48, 112)), (21, (64, 32))), 64, "cogvideox")


def test_cogvideox_runtime_refuses_longer_clips_and_maps_frames(cog_export):
    """Clips up to the model's 25 frames (the tiny config's sample_frames) are padded to 1 + 4k; longer ones are
    refused with one clear message (the VAE's chunk table and the position tables stop there)."""
    import ditf_runtime
    from ditf_runtime.errors import InputError

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    with ditf_runtime.load(cog_export, threads=1) as extractor:
        assert extractor.is_video and extractor.frame_range == (1, 25)
        maps = extractor.extract_video(frames)
        assert len(maps) == 6
        assert np.array_equal(np.asarray(maps[1]), np.asarray(maps[4]))  # frames 1..4 share latent frame 1
        with pytest.raises(InputError, match="25"):
            extractor.extract_video(frames * 5)  # 30 frames


def test_cogvideox_prompt_is_padded_to_the_model_text_length_and_other_lengths_are_refused(cog_dirs, tmp_path):
    """--prompt goes through CogVideoXPipeline.encode_prompt (padded to max_text_seq_length, 12 here) and changes
    the features; the sin-cos model's table has exactly that many text rows, so other lengths are refused."""
    from safetensors.torch import save_file

    from ditf_export.catalog import models
    from ditf_export.errors import ExportInputError
    from ditf_export.export import ExportRequest, build_graph, plan

    folder = cog_dirs["sincos"]
    image, noise = _clip_inputs(1, 1, 5, 32, 48)
    outs = {}
    for prompt in ("a cat walks", ""):
        the_plan = plan(ExportRequest(model=str(folder), out=tmp_path / "o", layer=1, timestep=TIMESTEP, prompt=prompt))
        with torch.no_grad():
            outs[prompt] = build_graph(the_plan).graph(image, noise).numpy()
    assert np.abs(outs["a cat walks"] - outs[""]).max() > 1e-3
    short = tmp_path / "short.safetensors"
    save_file({"prompt_embeds": torch.randn(1, 7, 32)}, str(short))
    with pytest.raises(ExportInputError, match="has 7 tokens; this CogVideoX model takes exactly 12"):
        build_graph(plan(ExportRequest(model=str(folder), out=tmp_path / "o", layer=1, prompt_embeds=short)))
    specs = models()
    assert specs["cogvideox-2b"].hf_id == "THUDM/CogVideoX-2b" and specs["cogvideox-5b"].hf_id == "THUDM/CogVideoX-5b"
    assert specs["cogvideox-2b"].family == specs["cogvideox-5b"].family == "cogvideox"


# -- bf16 / fp16 (the fp32 exports above, rewritten by the export's own precision step: tests/low_precision_twin.py) --

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_wan_low_precision_matches_diffusers_forward_within_tolerance(precision, wan_export, family_tiny_dir,
                                                                      tmp_path):
    """bf16 / fp16 Wan: the Cast-emulated twin (what the export's parity runs) against diffusers' own hooked forward
    (fp32, the reference the tolerance table is stated against) on a 9-frame non-square clip, E = 2."""
    from low_precision_twin import assert_typed, low_precision_twin

    from ditf_runtime.parity import TOLERANCES

    folder = family_tiny_dir("wan")
    image, noise = _clip_inputs(1, 2, 9, 48, 80, seed=21)
    expected = wan_hook_features(folder, (1,), image, noise, _wan_embeds(), WAN_TINY_MASSIVE)[1]
    request = dict(model=str(folder), layer=1, timestep=TIMESTEP, ensemble=1, image_size=128,
                   discard=",".join(map(str, WAN_TINY_MASSIVE)), prompt_embeds=_embeds_file(tmp_path, _wan_embeds()))
    got, typed, report = low_precision_twin(wan_export, precision, request, {"image": image, "noise": noise}, tmp_path)
    assert got.shape == expected.shape == (1, 3, 48, 3, 5)
    res = compare(got.reshape(-1, 48, 3, 5), expected.reshape(-1, 48, 3, 5), precision)
    print(f"wan {precision} twin vs diffusers fp32: {res}")
    tol = TOLERANCES[precision]
    assert res and res.min_cosine >= tol.min_cosine and res.rel_error <= tol.max_rel_error, res
    assert res.rel_error > 1e-6, res  # really rounded
    assert report["range_check"]["nonfinite_tensors"] == []
    assert_typed(typed, precision)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cogvideox_low_precision_matches_diffusers_forward_within_tolerance(precision, cog_export, cog_dirs, tmp_path):
    """bf16 / fp16 CogVideoX (5b-like, RoPE): the emulated twin against diffusers' hooked fp32 forward, 9 frames."""
    from low_precision_twin import assert_typed, low_precision_twin

    from ditf_runtime.parity import TOLERANCES

    folder = cog_dirs["rope"]
    image, noise = _clip_inputs(1, 2, 9, 64, 48, seed=22)
    expected = cog_hook_features(folder, (1,), image, noise, _cog_embeds(), COGVIDEOX_TINY_MASSIVE)[1]
    request = dict(model=str(folder), layer=1, timestep=TIMESTEP, ensemble=1, image_size=128,
                   discard=",".join(map(str, COGVIDEOX_TINY_MASSIVE)), prompt_embeds=_embeds_file(tmp_path, _cog_embeds()))
    got, typed, report = low_precision_twin(cog_export, precision, request, {"image": image, "noise": noise}, tmp_path)
    assert got.shape == expected.shape == (1, 3, 64, 4, 3)
    res = compare(got.reshape(-1, 64, 4, 3), expected.reshape(-1, 64, 4, 3), precision)
    print(f"cogvideox {precision} twin vs diffusers fp32: {res}")
    tol = TOLERANCES[precision]
    assert res and res.min_cosine >= tol.min_cosine and res.rel_error <= tol.max_rel_error, res
    assert res.rel_error > 1e-6, res
    assert report["range_check"]["nonfinite_tensors"] == []
    assert_typed(typed, precision)

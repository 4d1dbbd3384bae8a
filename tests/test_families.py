"""Every DiT family (docs/DESIGN.md, "Noising per family"), each a tiny random model of the real diffusers class.

Per family: the PyTorch reference (the module that is exported) against diffusers' own forward with hooks
on block K, at layers 0 .. last; and the ONNX export at a layer after the first block and at the last
block, ORT vs PyTorch at two image sizes from one graph (the export's parity: 64x96 and 112x80, whose token
grid 7x5 is odd and non-square) plus one more odd grid here. Thresholds as in test_export_flux.py:
per-token cosine >= 0.99999 and relative error <= 1e-4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from ditf_runtime.manifest import Manifest
from ditf_runtime.parity import compare

MIN_COSINE = 0.99999
MAX_REL_ERROR = 1e-4
TIMESTEP = 260
LAST = 2  # the tiny models have 3 blocks: layers 0, 1, 2


class _Stop(Exception):
    """Raised from a hook once block K's input and modulation are captured: the rest of forward is not needed."""


def _inputs(b, e, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1, torch.randn(b, e, c, h // 8, w // 8, generator=g)


def _latent(folder: Path, image):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    z = vae.encode(image).latent_dist.mean
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def _vp_noised(folder: Path, z, noise, t):
    """x_t exactly as the pipeline's scheduler betas give it: DDPMScheduler.add_noise on the saved config."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    b, e = noise.shape[:2]
    x0 = z[:, None].expand_as(noise).reshape(b * e, *noise.shape[2:])
    return sched.add_noise(x0, noise.reshape(b * e, *noise.shape[2:]), torch.full((b * e,), t, dtype=torch.long))


def _head(hk, shift, scale, discard, b, e, hp, wp):
    hk = hk.reshape(b, e, -1, hk.shape[-1]).mean(1)
    hk[..., list(discard)] = 0
    dim = hk.shape[-1]
    feat = torch.nn.functional.layer_norm(hk, (dim,), eps=1e-6) * (1 + scale) + shift
    return feat.transpose(1, 2).reshape(b, dim, hp, wp).numpy()


def _run_until_block(block, norm_linear, call):
    """Run diffusers' forward; capture block K's input hidden states and (if given) its AdaLN linear output."""
    captured = {}

    def keep_input(module, args, kwargs):
        captured["h"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        # BasicTransformerBlock's `timestep` (PixArt, Latte: the adaLN-single vector t6), by keyword or position
        captured["t6"] = kwargs.get("timestep", args[4] if len(args) > 4 else None)
        if norm_linear is None:
            raise _Stop

    def keep_modulation(module, args, out):
        captured["mod"] = out
        raise _Stop

    hooks = [block.register_forward_pre_hook(keep_input, with_kwargs=True)]
    if norm_linear is not None:
        hooks.append(norm_linear.register_forward_hook(keep_modulation))
    try:
        call()
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return captured


@torch.no_grad()
def sd3_hook_features(folder: Path, layer: int, image, noise, embeds, discard):
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel.from_pretrained(folder / "transformer").eval()
    b, e, c, h, w = noise.shape
    t = TIMESTEP / 1000.0
    x_t = (t * noise + (1 - t) * _latent(folder, image)[:, None]).reshape(b * e, c, h, w)
    block = transformer.transformer_blocks[layer]
    cap = _run_until_block(block, block.norm1.linear, lambda: transformer(
        hidden_states=x_t, encoder_hidden_states=embeds["prompt_embeds"].expand(b * e, -1, -1),
        pooled_projections=embeds["pooled_prompt_embeds"].expand(b * e, -1),
        timestep=torch.full((b * e,), float(TIMESTEP))))
    dim = cap["h"].shape[-1]
    return _head(cap["h"], cap["mod"][0, :dim], cap["mod"][0, dim:2 * dim], discard, b, e, h // 2, w // 2)


@torch.no_grad()
def pixart_hook_features(folder: Path, layer: int, image, noise, embeds, discard, image_size=128):
    from diffusers import PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_pretrained(folder / "transformer").eval()
    b, e, c, h, w = noise.shape
    x_t = _vp_noised(folder, _latent(folder, image), noise, TIMESTEP)
    n = b * e
    added = {"resolution": torch.tensor([[float(image_size), float(image_size)]]).repeat(n, 1),
             "aspect_ratio": torch.tensor([[1.0]]).repeat(n, 1)}
    block = transformer.transformer_blocks[layer]
    cap = _run_until_block(block, None, lambda: transformer(
        x_t, encoder_hidden_states=embeds["prompt_embeds"].expand(n, -1, -1), timestep=torch.full((n,), TIMESTEP),
        added_cond_kwargs=added, encoder_attention_mask=embeds["prompt_attention_mask"].expand(n, -1)))
    mod = block.scale_shift_table[None] + cap["t6"].reshape(n, 6, -1)
    return _head(cap["h"], mod[0, 0], mod[0, 1], discard, b, e, h // 2, w // 2)


@torch.no_grad()
def dit_hook_features(folder: Path, layer: int, image, noise, class_label, discard):
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer").eval()
    b, e, c, h, w = noise.shape
    x_t = _vp_noised(folder, _latent(folder, image), noise, TIMESTEP)
    n = b * e
    block = transformer.transformer_blocks[layer]
    cap = _run_until_block(block, block.norm1.linear, lambda: transformer(
        x_t, timestep=torch.full((n,), TIMESTEP), class_labels=torch.full((n,), class_label)))
    dim = cap["h"].shape[-1]
    return _head(cap["h"], cap["mod"][0, :dim], cap["mod"][0, dim:2 * dim], discard, b, e, h // 2, w // 2)


# -- the families, their tiny models and how each is conditioned ------------------------------------------


@dataclass
class Family:
    name: str
    builder: Callable
    massive: tuple[int, ...]
    latent_channels: int
    hidden: int
    export_kw: Callable[[Path], dict] = field(default=lambda tmp: {})


def _sd3_embeds(tmp: Path) -> dict:
    g = torch.Generator().manual_seed(7)
    return {"prompt_embeds": torch.randn(1, 12, 32, generator=g),
            "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}


def _pixart_embeds(tmp: Path) -> dict:
    g = torch.Generator().manual_seed(8)
    mask = torch.zeros(1, 10, dtype=torch.long)
    mask[0, :6] = 1  # the last four tokens are padding: masked in diffusers, dropped in the graph
    return {"prompt_embeds": torch.randn(1, 10, 32, generator=g), "prompt_attention_mask": mask}


def _embeds_file(tmp: Path, name: str, tensors: dict) -> Path:
    from safetensors.torch import save_file

    path = tmp / f"{name}-embeds.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _families():
    from ditf_export import tiny

    return {
        "sd3": Family("sd3", tiny.build_sd3_tiny, tiny.SD3_TINY_MASSIVE, 16, 64,
                      lambda tmp: {"prompt_embeds": _embeds_file(tmp, "sd3", _sd3_embeds(tmp))}),
        "pixart": Family("pixart", tiny.build_pixart_tiny, tiny.PIXART_TINY_MASSIVE, 4, 96,
                         lambda tmp: {"prompt_embeds": _embeds_file(tmp, "pixart", _pixart_embeds(tmp))}),
        "dit": Family("dit", tiny.build_dit_tiny, tiny.DIT_TINY_MASSIVE, 4, 64, lambda tmp: {"class_label": 3}),
    }


FAMILIES = _families()
EXPORT_LAYERS = (1, LAST)


@pytest.fixture(scope="session")
def family_exports(tmp_path_factory, family_tiny_dir):
    """(family, layer) -> export folder; each exported once per session."""
    from ditf_export.export import ExportRequest, export

    root = tmp_path_factory.mktemp("family-exports")
    done: dict[tuple[str, int], Path] = {}

    def get(name: str, layer: int) -> Path:
        if (name, layer) not in done:
            fam = FAMILIES[name]
            out = root / f"{name}-l{layer}"
            export(ExportRequest(model=str(family_tiny_dir(name)), out=out, layer=layer, timestep=TIMESTEP,
                                 discard=",".join(map(str, fam.massive)), ensemble=2, image_size=128,
                                 **fam.export_kw(root)))
            done[(name, layer)] = out
        return done[(name, layer)]

    return get


def _our_graph(folder: Path, layer: int, fam: Family, tmp: Path, **kw):
    from ditf_export.export import ExportRequest, build_graph, plan

    return build_graph(plan(ExportRequest(
        model=str(folder), out=tmp / "unused", layer=layer, timestep=TIMESTEP,
        discard=",".join(map(str, fam.massive)), image_size=128, **{**fam.export_kw(tmp), **kw}))).graph


def _reference(name: str, folder: Path, layer: int, image, noise, tmp: Path):
    fam = FAMILIES[name]
    if name == "sd3":
        return sd3_hook_features(folder, layer, image, noise, _sd3_embeds(tmp), fam.massive)
    if name == "pixart":
        return pixart_hook_features(folder, layer, image, noise, _pixart_embeds(tmp), fam.massive)
    return dit_hook_features(folder, layer, image, noise, 3, fam.massive)


@pytest.mark.parametrize("layer", [0, 1, LAST])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_reference_matches_diffusers_forward_with_hooks(name, layer, family_tiny_dir, tmp_path):
    """Our PyTorch module (what is exported) vs diffusers' own forward, hooked at block K; non-square, odd grid."""
    fam = FAMILIES[name]
    folder = family_tiny_dir(name)
    image, noise = _inputs(2, 3, fam.latent_channels, 48, 80, seed=layer)  # token grid 3x5
    expected = _reference(name, folder, layer, image, noise, tmp_path)
    with torch.no_grad():
        ours = _our_graph(folder, layer, fam, tmp_path)(image, noise).numpy()
    res = compare(ours, expected, "fp32")
    print(f"{name} layer {layer} vs diffusers hooks: {res}")
    assert ours.shape == (2, fam.hidden, 3, 5)
    assert res.min_cosine >= MIN_COSINE, res
    assert res.rel_error <= MAX_REL_ERROR, res


@pytest.mark.parametrize("layer", EXPORT_LAYERS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_onnx_matches_pytorch_at_two_sizes_from_one_graph(name, layer, family_exports, family_tiny_dir, tmp_path):
    import onnxruntime as ort

    fam = FAMILIES[name]
    out = family_exports(name, layer)
    m = Manifest.load(out)
    assert m.family == name and m.feature.layer == layer and m.feature.block == f"transformer_blocks.{layer}"
    assert m.geometry.latent_channels == fam.latent_channels and m.geometry.feature_channels == fam.hidden
    assert m.geometry.feature_stride == 16 and m.geometry.size_multiple == 16
    assert m.feature.noising == ("flow-matching" if name == "sd3" else "variance-preserving")
    # the export's own parity: 64x96 (grid 4x6) and 112x80 (grid 7x5: odd, non-square), one graph
    sizes = [(r["height"], r["width"]) for r in m.parity["results"]]
    assert sizes == [(64, 96), (112, 80)]
    for r in m.parity["results"]:
        print(f"{name} layer {layer} export parity {r['height']}x{r['width']}: min cosine {r['min_cosine']:.7f}, "
              f"rel err {r['rel_error']:.2e}")
        assert r["min_cosine"] >= MIN_COSINE and r["rel_error"] <= MAX_REL_ERROR
    # position tables are gathered float32 constants: no Sin/Cos, no float64 (check_graph) in the graph
    from ditf_export.graph_checks import check_graph

    counts = check_graph(out / "model.onnx")
    assert "Sin" not in counts and "Cos" not in counts
    assert m.feature.class_label == (3 if name == "dit" else None)
    # and one more odd grid here (3x7), against a freshly built reference
    image, noise = _inputs(1, 2, fam.latent_channels, 48, 112, seed=5)
    with torch.no_grad():
        ref = _our_graph(family_tiny_dir(name), layer, fam, tmp_path)(image, noise).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": image.numpy(), "noise": noise.numpy()})[0]
    assert got.shape == (1, fam.hidden, 3, 7)
    res = compare(got, ref, "fp32")
    print(f"{name} layer {layer} ORT vs PyTorch 48x112: {res}")
    assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res


def test_every_registered_family_has_a_tiny_fixture():
    """Like optimum's test_all_models_tested: a new adapter without a tiny model here fails CI."""
    from ditf_export.catalog import families, models

    from ditf_export.tiny import TINY_BUILDERS

    tested = set(FAMILIES) | {"flux", "latte", "dinov2", "wan", "cogvideox"}  # flux: test_export_flux.py; latte: video
    # tests below; wan, cogvideox: test_video_families.py;
    # dinov2: test_dinov2_export.py
    assert set(families()) <= tested, f"families without tests here: {set(families()) - tested}"
    missing = set(families()) - set(TINY_BUILDERS)
    assert not missing, f"families without a tiny builder: {missing}"
    for name, fam in FAMILIES.items():
        assert fam.builder is TINY_BUILDERS[name]
    for spec in models().values():
        assert spec.family in families()
        for d in (spec.layer, spec.timestep, spec.image_size, spec.discard, spec.ensemble):
            assert d.source, f"{spec.name}: a default without provenance"


# -- video: Latte (frames in, spacetime features out) ------------------------------------------------------

VIDEO_FRAMES = 4  # the tiny Latte's video_length: diffusers' own forward takes exactly this many frames


def _latte_embeds(tmp: Path) -> dict:
    return _pixart_embeds(tmp)


def _video_inputs(b, e, f, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, f, 3, h, w, generator=g) * 2 - 1, torch.randn(b, e, f, 4, h // 8, w // 8, generator=g)


@torch.no_grad()
def latte_hook_features(folder: Path, layer: int, image, noise, embeds, discard):
    """LatteTransformer3DModel.forward itself ([B, C, F, H, W] latents, the pipeline's masked T5 prompt),
    hooked at block K: spatial blocks see [B*F, P, C], temporal ones [B*P, F, C]."""
    from diffusers import AutoencoderKL, LatteTransformer3DModel

    transformer = LatteTransformer3DModel.from_pretrained(folder / "transformer").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    b, e, f, c, h, w = noise.shape
    z = (vae.encode(image.flatten(0, 1)).latent_dist.mean * vae.config.scaling_factor).unflatten(0, (b, f))
    x_t = _vp_noised(folder, z, noise, TIMESTEP)  # [B*E, F, c, h, w]
    n, p = b * e, (h // 2) * (w // 2)
    keep = embeds["prompt_attention_mask"][0] > 0  # LattePipeline.mask_text_embeddings keeps these tokens
    block = (transformer.temporal_transformer_blocks if layer % 2 else transformer.transformer_blocks)[layer // 2]
    cap = _run_until_block(block, None, lambda: transformer(
        x_t.permute(0, 2, 1, 3, 4), encoder_hidden_states=embeds["prompt_embeds"][:, keep].expand(n, -1, -1),
        timestep=torch.full((n,), TIMESTEP)))
    hk = cap["h"]
    dim = hk.shape[-1]
    if layer % 2:
        hk = hk.reshape(n, p, f, dim).permute(0, 2, 1, 3)
    hk = hk.reshape(b, e, f, p, dim).mean(1)
    hk[..., list(discard)] = 0
    mod = block.scale_shift_table[None] + cap["t6"].reshape(-1, 6, dim)[:1]
    feat = torch.nn.functional.layer_norm(hk, (dim,), eps=1e-6) * (1 + mod[0, 1]) + mod[0, 0]
    return feat.transpose(-1, -2).reshape(b, f, dim, h // 2, w // 2).numpy()


def _latte_graph(folder: Path, layer: int, tmp: Path):
    from ditf_export.export import ExportRequest, build_graph, plan
    from ditf_export.tiny import LATTE_TINY_MASSIVE

    path = _embeds_file(tmp, "latte", _latte_embeds(tmp))
    return build_graph(plan(ExportRequest(
        model=str(folder), out=tmp / "unused", layer=layer, timestep=TIMESTEP, image_size=128,
        discard=",".join(map(str, LATTE_TINY_MASSIVE)), prompt_embeds=path))).graph


@pytest.mark.parametrize("layer", [0, 1, 2, 3], ids=["spatial0", "temporal0", "spatial1", "temporal1"])
def test_video_reference_matches_diffusers_forward_with_hooks(layer, family_tiny_dir, tmp_path):
    from ditf_export.tiny import LATTE_TINY_MASSIVE

    folder = family_tiny_dir("latte")
    image, noise = _video_inputs(2, 2, VIDEO_FRAMES, 48, 80, seed=layer)
    expected = latte_hook_features(folder, layer, image, noise, _latte_embeds(tmp_path), LATTE_TINY_MASSIVE)
    with torch.no_grad():
        ours = _latte_graph(folder, layer, tmp_path)(image, noise).numpy()
    assert ours.shape == (2, VIDEO_FRAMES, 64, 3, 5)
    res = compare(ours.reshape(-1, 64, 3, 5), expected.reshape(-1, 64, 3, 5), "fp32")  # per frame map
    print(f"latte layer {layer} vs diffusers hooks: {res}")
    assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res


@pytest.fixture(scope="session")
def latte_exports(tmp_path_factory, family_tiny_dir):
    from ditf_export.export import ExportRequest, export
    from ditf_export.tiny import LATTE_TINY_MASSIVE

    root = tmp_path_factory.mktemp("latte-exports")
    done: dict[int, Path] = {}

    def get(layer: int) -> Path:
        if layer not in done:
            out = root / f"latte-l{layer}"
            export(ExportRequest(model=str(family_tiny_dir("latte")), out=out, layer=layer, timestep=TIMESTEP,
                                 discard=",".join(map(str, LATTE_TINY_MASSIVE)), ensemble=2, image_size=128,
                                 prompt_embeds=_embeds_file(root, "latte", _latte_embeds(root))))
            done[layer] = out
        return done[layer]

    return get


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_video_low_precision_matches_diffusers_forward_within_tolerance(precision, latte_exports, family_tiny_dir,
                                                                        tmp_path):
    """bf16 / fp16 Latte (video families were fp32 only): the export's precision step on the layer-1 fp32 export,
    its Cast-emulated twin against diffusers' hooked fp32 forward within the stated tolerance (tests/low_precision_twin.py)."""
    from low_precision_twin import assert_typed, low_precision_twin

    from ditf_export.tiny import LATTE_TINY_MASSIVE
    from ditf_runtime.parity import TOLERANCES

    folder = family_tiny_dir("latte")
    image, noise = _video_inputs(1, 2, VIDEO_FRAMES, 48, 80, seed=23)
    expected = latte_hook_features(folder, 1, image, noise, _latte_embeds(tmp_path), LATTE_TINY_MASSIVE)
    request = dict(model=str(folder), layer=1, timestep=TIMESTEP, ensemble=2, image_size=128,
                   discard=",".join(map(str, LATTE_TINY_MASSIVE)),
                   prompt_embeds=_embeds_file(tmp_path, "latte", _latte_embeds(tmp_path)))
    got, typed, report = low_precision_twin(latte_exports(1), precision, request, {"image": image, "noise": noise},
                                            tmp_path)
    assert got.shape == expected.shape == (1, VIDEO_FRAMES, 64, 3, 5)
    res = compare(got.reshape(-1, 64, 3, 5), expected.reshape(-1, 64, 3, 5), precision)
    print(f"latte {precision} twin vs diffusers fp32: {res}")
    tol = TOLERANCES[precision]
    assert res and res.min_cosine >= tol.min_cosine and res.rel_error <= tol.max_rel_error, res
    assert res.rel_error > 1e-6 and report["range_check"]["nonfinite_tensors"] == []
    assert_typed(typed, precision)


@pytest.mark.parametrize("layer", [1, 2], ids=["temporal0", "spatial1"])
def test_video_onnx_matches_pytorch_at_two_sizes_from_one_graph(layer, latte_exports, family_tiny_dir, tmp_path):
    import onnxruntime as ort

    out = latte_exports(layer)
    m = Manifest.load(out)
    assert m.family == "latte" and m.geometry.frame_axis == 1
    assert m.feature.block == ("temporal_transformer_blocks.0" if layer == 1 else "transformer_blocks.1")
    assert m.input("image").shape == ("batch", "frames", 3, "height", "width")
    assert m.input("noise").shape == ("batch", "ensemble", "frames", 4, "height/8", "width/8")
    assert m.outputs[0].shape == ("batch", "frames", 64, "height/16", "width/16")
    assert [(r["height"], r["width"], r["frames"]) for r in m.parity["results"]] == [(64, 96, 4), (112, 80, 4)]
    for r in m.parity["results"]:
        print(f"latte layer {layer} export parity {r['height']}x{r['width']}x{r['frames']}f: "
              f"min cosine {r['min_cosine']:.7f}, rel err {r['rel_error']:.2e}")
        assert r["min_cosine"] >= MIN_COSINE and r["rel_error"] <= MAX_REL_ERROR
    # fewer frames and another odd grid through the same graph
    image, noise = _video_inputs(1, 2, 3, 48, 112, seed=9)
    with torch.no_grad():
        ref = _latte_graph(family_tiny_dir("latte"), layer, tmp_path)(image, noise).numpy()
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": image.numpy(), "noise": noise.numpy()})[0]
    assert got.shape == (1, 3, 64, 3, 7)
    res = compare(got.reshape(3, 64, 3, 7), ref.reshape(3, 64, 3, 7), "fp32")
    print(f"latte layer {layer} ORT vs PyTorch 48x112x3f: {res}")
    assert res.min_cosine >= MIN_COSINE and res.rel_error <= MAX_REL_ERROR, res
    if layer == 1:
        # frame maps feed the runtime's matcher directly: track points from frame 0 to each frame
        from ditf_runtime.matching import transfer_keypoints

        pts = np.array([[8, 8], [100, 40]])
        for f in range(3):
            moved = transfer_keypoints(got[0, 0], got[0, f], pts, (48, 112), (48, 112))
            assert np.asarray(moved).shape == (2, 2)
        same = np.asarray(transfer_keypoints(got[0, 0], got[0, 0], pts, (48, 112), (48, 112)))
        assert np.abs(same - pts).max() <= 16  # a frame tracked onto itself stays within one feature cell


@pytest.mark.parametrize("name", ["sd3", "pixart", "latte"])
def test_prompt_encoding_matches_prompt_embeds_path(name, family_tiny_dir, tmp_path):
    """--prompt encodes with the tiny text encoders through the pipelines' own encode_prompt; the same
    embeddings given as --prompt-embeds build the same graph; the prompt really changes the features."""
    from safetensors.torch import save_file

    from ditf_export.export import ExportRequest, build_graph, plan
    from ditf_export.loading import resolve_source
    from ditf_export.catalog import adapter_for

    folder = family_tiny_dir(name)
    source = resolve_source(str(folder))
    adapter = adapter_for(name)
    video = name == "latte"
    image, noise = _video_inputs(1, 2, 2, 48, 64) if video else _inputs(1, 2, 16 if name == "sd3" else 4, 48, 64)
    outs = {}
    for key, kw in (("prompt", {"prompt": "a photo of a cat"}), ("empty", {"prompt": ""})):
        the_plan = plan(ExportRequest(model=str(folder), out=tmp_path / "o", layer=1, timestep=TIMESTEP,
                                      text_max_length=16, **kw))
        options = the_plan.options
        with torch.no_grad():
            outs[key] = build_graph(the_plan).graph(image, noise).numpy()
        if key == "prompt":
            embeds = adapter.conditioning(source, source.transformer_config, options)
    path = tmp_path / "embeds.safetensors"
    save_file({k: v.contiguous() for k, v in embeds.items()}, str(path))
    from_file_plan = plan(ExportRequest(model=str(folder), out=tmp_path / "o", layer=1, timestep=TIMESTEP,
                                        prompt_embeds=path))
    with torch.no_grad():
        from_file = build_graph(from_file_plan).graph(image, noise).numpy()
    np.testing.assert_allclose(from_file, outs["prompt"], rtol=1e-5, atol=1e-5)
    assert np.abs(outs["prompt"] - outs["empty"]).max() > 1e-3
    if name == "latte":  # LattePipeline keeps exactly the unmasked tokens: the same as dropping masked ones
        from diffusers import LattePipeline
        from transformers import AutoTokenizer, T5EncoderModel

        pipe = LattePipeline(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                             text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder"),
                             vae=None, transformer=None, scheduler=None)
        with torch.no_grad():
            theirs, _ = pipe.encode_prompt("a photo of a cat", do_classifier_free_guidance=False,
                                           device=torch.device("cpu"))
            ours = adapter.conditioning(source, source.transformer_config,
                                        type(options)(layer=1, timestep=TIMESTEP, discard=(), prompt="a photo of a cat",
                                                      text_max_length=120))
        keep = ours["prompt_attention_mask"][0] > 0
        np.testing.assert_allclose(ours["prompt_embeds"][:, keep].numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)


def test_registry_names_defaults_and_local_folders(tmp_path):
    import json

    from ditf_export.loading import resolve_source
    from ditf_export.catalog import model_spec

    expected = {"sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
                "sd3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
                "sd3.5-large": "stabilityai/stable-diffusion-3.5-large",
                "pixart-alpha": "PixArt-alpha/PixArt-XL-2-1024-MS",
                "pixart-sigma": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "dit-xl-2-256": "facebook/DiT-XL-2-256",
                "latte": "maxin-cn/Latte-1"}
    for name, hf_id in expected.items():
        assert model_spec(name).hf_id == hf_id
    large = model_spec("sd3.5-large")
    assert large.discard.value == (676,) and large.discard.source.startswith("paper")
    assert model_spec("sd3").discard.value == () and "detect" in model_spec("sd3").discard.source
    # a local folder takes the defaults of the registered model whose config facts it has
    folder = tmp_path / "sd35-large-like"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "SD3Transformer2DModel", "num_attention_heads": 38, "attention_head_dim": 64}))
    source = resolve_source(str(folder))
    assert source.spec.name == "sd3.5-large" and "hidden size 2432" in source.defaults_rule
    (folder / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "SD3Transformer2DModel", "num_attention_heads": 3, "attention_head_dim": 64,
         "qk_norm": "rms_norm"}))
    source = resolve_source(str(folder))  # SD3.5-like (q/k norm) without dual attention, of no known width
    assert source.spec is None and "no registered sd3 model" in source.defaults_rule


@pytest.mark.parametrize("name, kw, message", [
    ("dit", {"timestep": 1000}, "integer timesteps 0..999"),
    ("dit", {"timestep": 260.5}, "integer timesteps"),
    ("dit", {"class_label": 11}, "classes 0..9 and the null class 10"),
    ("dit", {"prompt": "a cat"}, "takes no prompt"),
    ("pixart", {"class_label": 1}, "not class-conditional"),
    ("pixart", {"guidance": 3.5}, "no guidance embedding"),
    ("sd3", {"discard": "auto"}, "pass --calib-images"),
    ("latte", {"precision": "int8", "calib_images": Path(__file__).resolve().parents[1] / "examples" / "images"},
     "video families (latte) export fp32, bf16 or fp16"),
])
def test_family_options_are_checked_before_loading(name, kw, message, family_tiny_dir, tmp_path):
    from ditf_export.export import ExportRequest, plan
    from ditf_export.errors import ExportInputError

    with pytest.raises(ExportInputError, match=re.escape(message)):
        plan(ExportRequest(model=str(family_tiny_dir(name)), out=tmp_path / "o", layer=1, **kw))


def test_dit_defaults_to_the_null_class_and_vp_noise_from_the_scheduler(family_tiny_dir, tmp_path):
    from diffusers import DDPMScheduler

    from ditf_export.export import ExportRequest, plan

    folder = family_tiny_dir("dit")
    dit = plan(ExportRequest(model=str(folder), out=tmp_path / "o", layer=1, timestep=500))
    assert dit.options.class_label == 10 and dit.options.prompt is None
    a, b = dit.adapter.noise_coefficients(dit.source, dit.options)
    abar = DDPMScheduler.from_pretrained(folder / "scheduler").alphas_cumprod[500]
    assert a == pytest.approx(float(abar) ** 0.5, rel=1e-6) and b == pytest.approx(float(1 - abar) ** 0.5, rel=1e-6)
    # PixArt's tiny uses scaled-linear betas: a different abar at the same t, read from its own config
    px = family_tiny_dir("pixart")
    pixart = plan(ExportRequest(model=str(px), out=tmp_path / "o", layer=1, timestep=500))
    assert pixart.adapter.noise_coefficients(pixart.source, pixart.options)[0] != pytest.approx(a, rel=1e-3)


@pytest.mark.parametrize("size, interp, dim, max_size", [
    (8, 2, 96, None), (32, 1, 1152, None), (128, 2, 1152, None),  # tiny, DiT-XL-2-256, PixArt-α 1024
    (16, 1, 64, 32), (128, 1, 1536, 96),  # tiny SD3, SD3-medium's cropped table
])
def test_position_tables_are_bit_identical_to_diffusers(size, interp, dim, max_size):
    """Gathered float32 tables vs diffusers' PatchEmbed (float64 rebuild / slice crop), square and odd grids."""
    from diffusers.models.embeddings import PatchEmbed

    from ditf_export.families.posembed import CroppedPatchEmbed, SinCosPatchEmbed

    torch.manual_seed(0)
    theirs = PatchEmbed(height=size, width=size, patch_size=2, in_channels=4, embed_dim=dim,
                        interpolation_scale=interp, pos_embed_max_size=max_size)
    ours = (SinCosPatchEmbed if max_size is None else CroppedPatchEmbed)(theirs)
    for hw in ((size, size), (6, 14), (14, 18), (2 * 13, 2 * 4)):
        x = torch.randn(1, 4, *hw)
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x)), hw


# -- family defaults from the config (the model's own facts, not its width) --------------------------------


def _plan(folder, tmp_path, **kw):
    from ditf_export.export import ExportRequest, plan

    return plan(ExportRequest(model=str(folder), out=tmp_path / "never-written", **kw))


def test_flux_schnell_shaped_folder_gets_schnell_defaults(tmp_path):
    """No guidance embedding: schnell's defaults (no guidance, 256 T5 tokens), not FLUX.1-dev's 3.5."""
    from ditf_export.errors import ExportInputError
    from ditf_export.tiny import build_flux_tiny

    folder = build_flux_tiny(tmp_path / "schnell-like", with_text=False, guidance_embeds=False)
    the_plan = _plan(folder, tmp_path, layer=1, prompt_embeds=None)
    assert the_plan.source.spec.name == "flux-schnell"
    assert the_plan.source.defaults_rule == "config: guidance_embeds false (flux-schnell)"
    assert the_plan.options.guidance is None and the_plan.options.text_max_length == 256
    # schnell's discard channels belong to its 3072 channels, not to this 64-wide model
    assert the_plan.options.discard == () and any("belong to its hidden size 3072" in n for n in the_plan.notes)
    with pytest.raises(ExportInputError, match="no guidance embedding"):
        _plan(folder, tmp_path, layer=1, guidance=3.5)
    # the same config found in the HF cache layout: identified by its id
    hub = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-schnell" / "snapshots" / "0123abc"
    hub.parent.mkdir(parents=True)
    folder.rename(hub)
    rule = _plan(hub, tmp_path, layer=1).source.defaults_rule
    assert rule == "HF cache folder of black-forest-labs/FLUX.1-schnell (flux-schnell)"


def test_an_hf_id_contradicted_by_the_config_loses_to_the_config(tmp_path):
    from ditf_export.tiny import build_flux_tiny

    hub = tmp_path / "hub" / "models--black-forest-labs--FLUX.1-dev" / "snapshots" / "0123abc"
    build_flux_tiny(hub, with_text=False, guidance_embeds=False)
    source = _plan(hub, tmp_path, layer=1).source
    assert source.spec.name == "flux-schnell"
    assert "black-forest-labs/FLUX.1-dev names flux, whose config facts (guidance_embeds true)" in source.defaults_rule


def test_flux_dev_shaped_folder_keeps_dev_defaults(flux_tiny_export):
    from ditf_runtime.manifest import Manifest

    m = Manifest.load(flux_tiny_export)
    assert m.defaults == {"model": "flux", "rule": "config: guidance_embeds true (flux)"}
    assert m.feature.guidance == 3.5


def test_sd3_and_sd35_medium_shaped_folders_get_their_own_defaults(tmp_path, family_tiny_dir):
    from ditf_export.tiny import build_sd3_tiny

    medium35 = _plan(family_tiny_dir("sd3"), tmp_path, layer=1)  # the tiny SD3 has a dual-attention block
    assert medium35.source.spec.name == "sd3.5-medium"
    assert medium35.source.defaults_rule == "config: dual_attention_layers non-empty (sd3.5-medium)"
    assert medium35.options.discard == () and any("[676] belong to its hidden size 1536" in n for n in medium35.notes)
    sd3 = build_sd3_tiny(tmp_path / "sd3-like", with_text=False, dual_attention_layers=(), qk_norm=None)
    plain = _plan(sd3, tmp_path, layer=1, prompt_embeds=None)
    assert plain.source.spec.name == "sd3" and "qk_norm null" in plain.source.defaults_rule


# -- size limits: the largest token grid each export's position tables cover --------------------------------


@pytest.mark.parametrize("name, grid", [("sd3", 32), ("pixart", 128), ("dit", 128)])
def test_oversize_images_are_refused_by_exporter_and_runtime(name, grid, family_exports, family_tiny_dir, tmp_path):
    """SD3's stored table (pos_embed_max_size) would wrap; PixArt's/DiT's sin-cos tables stop at 128."""
    from ditf_export.errors import ExportInputError

    import ditf_runtime
    from ditf_runtime.errors import InputError
    from ditf_runtime.manifest import Manifest

    limit = grid * 16
    with pytest.raises(ExportInputError, match=rf"--image-size {limit + 16}: .* up to {limit} pixels .* up to {grid} "
                                               rf"per side at stride 16\); use --image-size {limit} or less"):
        _plan(family_tiny_dir(name), tmp_path, layer=1, image_size=limit + 16, **FAMILIES[name].export_kw(tmp_path))
    folder = family_exports(name, 1)
    manifest = Manifest.load(folder)
    assert manifest.geometry.max_size == limit
    assert max(manifest.tensorrt_profiles["max"]["image"][-2:]) <= limit
    with ditf_runtime.load(folder) as extractor:
        image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
        with pytest.raises(InputError, match=rf"size {limit + 16} is past this export's limit: .*use --size {limit}"):
            extractor.extract(image, size=limit + 16)
        if name == "sd3":  # small enough to run at the limit itself: the largest size still works
            assert np.asarray(extractor.extract(image, size=limit, ensemble=1)[0]).shape[-2:] == (grid, grid * 3 // 4)
            side = limit + 16
            with pytest.raises(InputError, match=r"image 16x528 is past this export's limit"):
                extractor.run(np.zeros((1, 3, 16, side), np.float32), np.zeros((1, 1, 16, 2, side // 8), np.float32))


def test_a_default_image_size_past_the_limit_is_lowered_with_a_note(family_tiny_dir, tmp_path):
    the_plan = _plan(family_tiny_dir("sd3"), tmp_path, layer=1)  # sd3.5-medium's default 640 > 512
    assert the_plan.image_size == 512
    assert any("default image size 640 lowered to 512" in n for n in the_plan.notes)

"""Small random-weight pipelines built from the real diffusers/transformers classes, offline.

`flux-tiny` is what `make demo` exports on a fresh machine: a FLUX-architecture transformer (2 double
+ 4 single blocks, hidden 64), a 16-channel AutoencoderKL, and a tiny CLIP + T5 pair with tokenizers
built from a character vocabulary. Saved with `save_pretrained`, so export runs the same loading
code as real weights. Two massive-activation channels are planted (x_embedder bias) so the
channel discard is exercised.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from ditf_runtime.files import staged_folder

from .registry import RANDOM_WEIGHTS_KEY

FLUX_TINY_MASSIVE = (7, 41)
FLUX_TINY_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=16,
    num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
)
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
)


def tiny_vae(seed: int, **overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**{**FLUX_VAE, **overrides}).eval()


def tiny_flux_transformer(seed: int, massive: tuple[int, ...] = FLUX_TINY_MASSIVE, magnitude: float = 300.0,
                          **overrides):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**{**FLUX_TINY_TRANSFORMER, **overrides}).eval()
    with torch.no_grad():
        # Random init leaves the AdaLN linears near zero-mean noise; scale them up so the baked
        # modulation (what the head applies) is far from the identity and tests can see it.
        for name, p in model.named_parameters():
            if ".linear." in name or name.endswith("linear.weight"):
                p.mul_(4.0)
        for c in massive:  # plant massive activations in the residual stream
            model.x_embedder.bias[c] = magnitude if c % 2 else -magnitude
    return model


def tiny_text_encoders(folder: Path, seed: int, text_dim: int = 32, pooled_dim: int = 32) -> None:
    """CLIP (pooled) + T5 (hidden states) with offline character-level tokenizers."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(specials + chars + [c + "</w>" for c in chars])}
    clip_tok = CLIPTokenizer(vocab=vocab, merges=[])
    clip_tok.model_max_length = 77
    clip_tok.save_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=pooled_dim, intermediate_size=2 * pooled_dim, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=pooled_dim,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    clip.save_pretrained(folder / "text_encoder", safe_serialization=True)

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    t5_tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    t5_tok.save_pretrained(folder / "tokenizer_2")
    torch.manual_seed(seed + 1)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(pieces), d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )).eval()
    t5.save_pretrained(folder / "text_encoder_2", safe_serialization=True)


def save_pipeline_folder(path: str | Path, components: dict, with_text: bool, pipeline_class: str,
                         text_builder=None) -> Path:
    """Write a diffusers-style folder atomically: temp folder, then rename."""
    path = Path(path)
    with staged_folder(path) as tmp:
        # Random weights, marked so: exports record it and the runtime's pictures say so.
        index = {"_class_name": pipeline_class, "_diffusers_version": "0.42.1", RANDOM_WEIGHTS_KEY: True}
        for sub, module in components.items():
            module.save_pretrained(tmp / sub, safe_serialization=True)
            index[sub] = ["diffusers", type(module).__name__]
        if with_text and text_builder is not None:
            text_builder(tmp)
            for sub in sorted(p.name for p in tmp.iterdir() if p.is_dir() and p.name not in index):
                index[sub] = ["transformers", _transformers_class(tmp / sub)]  # as diffusers lists them
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def _transformers_class(folder: Path) -> str:
    """The class a saved text encoder or tokenizer folder holds (model_index.json names it)."""
    for name, key in (("config.json", "architectures"), ("tokenizer_config.json", "tokenizer_class")):
        if (folder / name).is_file():
            value = json.loads((folder / name).read_text()).get(key)
            return value[0] if isinstance(value, list) else str(value)
    return "unknown"


def build_flux_tiny(path: str | Path, seed: int = 0, with_text: bool = True, **transformer_overrides) -> Path:
    cfg = {**FLUX_TINY_TRANSFORMER, **transformer_overrides}
    return save_pipeline_folder(
        path,
        {"transformer": tiny_flux_transformer(seed, **transformer_overrides), "vae": tiny_vae(seed + 100)},
        with_text,
        "FluxPipeline",
        lambda folder: tiny_text_encoders(folder, seed + 200, cfg["joint_attention_dim"],
                                          cfg["pooled_projection_dim"]),
    )


# -- the other DiT families (docs/DESIGN.md, "Noising per family"): real diffusers classes at toy sizes -------
# Massive channels are planted in the patch-embedding bias, so they ride the residual stream into every block.

SD3_TINY_MASSIVE = (5, 50)
SD3_TINY_TRANSFORMER = dict(
    sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=16, num_attention_heads=4,
    joint_attention_dim=32, caption_projection_dim=64, pooled_projection_dim=32, out_channels=16,
    pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm",  # SD3.5-style: block 0 dual attention
)
SD3_VAE = dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
               use_post_quant_conv=False)  # SD3's VAE numbers, not FLUX's
SD_VAE = dict(latent_channels=4, scaling_factor=0.18215, shift_factor=None, use_quant_conv=True,
              use_post_quant_conv=True)  # the 4-channel SD VAE of DiT and PixArt-α
PIXART_TINY_MASSIVE = (9, 70)
PIXART_TINY_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=24, in_channels=4, out_channels=8, num_layers=3, cross_attention_dim=96,
    sample_size=8, caption_channels=32, use_additional_conditions=True, interpolation_scale=2,  # PixArt-α 1024-style
)
DIT_TINY_MASSIVE = (3, 40)
DIT_TINY_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=3, sample_size=8,
    patch_size=2, num_embeds_ada_norm=10,
)


def _plant(model, bias, massive: tuple[int, ...], magnitude: float, linear_gain: float = 4.0) -> None:
    """Scale AdaLN linears (random init leaves the baked modulation near identity) and plant massive channels."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".linear." in name or name.endswith("linear.weight") or name.endswith("scale_shift_table"):
                p.mul_(linear_gain)
        for c in massive:
            bias[c] = magnitude if c % 2 else -magnitude


def _char_vocab() -> tuple[list[str], dict[str, int]]:
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    specials = ["<|startoftext|>", "<|endoftext|>"]
    return chars, {tok: i for i, tok in enumerate(specials + chars + [c + "</w>" for c in chars])}


def _tiny_clip_with_projection(folder: Path, tok_sub: str, enc_sub: str, seed: int, hidden: int, projection: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    _, vocab = _char_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77
    tok.save_pretrained(folder / tok_sub)
    torch.manual_seed(seed)
    CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=projection,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval().save_pretrained(folder / enc_sub, safe_serialization=True)


def _tiny_t5(folder: Path, tok_sub: str, enc_sub: str, seed: int, d_model: int) -> None:
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    chars, _ = _char_vocab()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(folder / tok_sub)
    torch.manual_seed(seed)
    T5EncoderModel(T5Config(
        vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )).eval().save_pretrained(folder / enc_sub, safe_serialization=True)


def build_sd3_tiny(path: str | Path, seed: int = 0, with_text: bool = True, massive: tuple[int, ...] = SD3_TINY_MASSIVE,
                   **transformer_overrides) -> Path:
    """SD3/SD3.5-architecture pipeline: SD3Transformer2DModel (one dual-attention block, RMS qk-norm),
    16-channel VAE with SD3's scaling/shift, FlowMatchEulerDiscreteScheduler, CLIP-L + CLIP-G + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    cfg = {**SD3_TINY_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(**cfg).eval()
    _plant(model, model.pos_embed.proj.bias, massive, 300.0)
    clip_hidden = cfg["joint_attention_dim"] // 4  # CLIP-L + CLIP-G hidden states are zero-padded to the T5 width
    half_pooled = cfg["pooled_projection_dim"] // 2

    def text(folder: Path) -> None:
        _tiny_clip_with_projection(folder, "tokenizer", "text_encoder", seed + 200, clip_hidden, half_pooled)
        _tiny_clip_with_projection(folder, "tokenizer_2", "text_encoder_2", seed + 201, clip_hidden, half_pooled)
        _tiny_t5(folder, "tokenizer_3", "text_encoder_3", seed + 202, cfg["joint_attention_dim"])

    return save_pipeline_folder(
        path, {"transformer": model, "vae": tiny_vae(seed + 100, **SD3_VAE),
               "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)},
        with_text, "StableDiffusion3Pipeline", text,
    )


def build_pixart_tiny(path: str | Path, seed: int = 0, with_text: bool = True,
                      massive: tuple[int, ...] = PIXART_TINY_MASSIVE, **transformer_overrides) -> Path:
    """PixArt-α-architecture pipeline: PixArtTransformer2DModel with size conditioning and interpolation scale 2,
    4-channel SD VAE, a DPM-Solver scheduler config (scaled-linear betas, so the VP schedule is really read), T5."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    cfg = {**PIXART_TINY_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(**cfg).eval()
    _plant(model, model.pos_embed.proj.bias, massive, 300.0)
    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return save_pipeline_folder(
        path, {"transformer": model, "vae": tiny_vae(seed + 100, **SD_VAE), "scheduler": scheduler},
        with_text, "PixArtAlphaPipeline",
        lambda folder: _tiny_t5(folder, "tokenizer", "text_encoder", seed + 200, cfg["caption_channels"]),
    )


def build_dit_tiny(path: str | Path, seed: int = 0, massive: tuple[int, ...] = DIT_TINY_MASSIVE,
                   **transformer_overrides) -> Path:
    """DiT-architecture pipeline: DiTTransformer2DModel (10 classes + null), 4-channel SD VAE, DDIM (linear betas)."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    cfg = {**DIT_TINY_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(**cfg).eval()
    _plant(model, model.pos_embed.proj.bias, massive, 300.0)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
    return save_pipeline_folder(
        path, {"transformer": model, "vae": tiny_vae(seed + 100, **SD_VAE), "scheduler": scheduler},
        False, "DiTPipeline",
    )


LATTE_TINY_MASSIVE = (6, 33)
LATTE_TINY_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2, cross_attention_dim=64,
    attention_bias=True, sample_size=8, patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
    norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=32, video_length=4,
)  # Latte-1's block settings at toy width; 2 spatial + 2 temporal blocks, clips of up to 4 frames


def build_latte_tiny(path: str | Path, seed: int = 0, with_text: bool = True,
                     massive: tuple[int, ...] = LATTE_TINY_MASSIVE, **transformer_overrides) -> Path:
    """Latte-architecture video pipeline: LatteTransformer3DModel, per-frame 4-channel SD VAE, DDIM (linear), T5."""
    from diffusers import DDIMScheduler, LatteTransformer3DModel

    cfg = {**LATTE_TINY_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    model = LatteTransformer3DModel(**cfg).eval()
    _plant(model, model.pos_embed.proj.bias, massive, 300.0)
    scheduler = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
    return save_pipeline_folder(
        path, {"transformer": model, "vae": tiny_vae(seed + 100, **SD_VAE), "scheduler": scheduler},
        with_text, "LattePipeline",
        lambda folder: _tiny_t5(folder, "tokenizer", "text_encoder", seed + 200, cfg["caption_channels"]),
    )


WAN_TINY_MASSIVE = (5, 40)
WAN_TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32,
    freq_dim=32, ffn_dim=96, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=64,
)  # Wan 2.1 T2V's block settings at toy width (3 blocks, hidden 48); RoPE for 64 positions per axis
WAN_TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=0, attn_scales=[],
                    temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, -0.05],
                    latents_std=[1.5, 0.8, 2.0, 1.1])
# Wan 2.1's VAE layout (8x spatial, 4x temporal) at toy width: the three resamples (two causal temporal ones)
# and the mid block's cached residual blocks + per-frame attention, no residual blocks in the down levels.
# Those add nothing the mid block does not test, and each one costs seconds of symbolic shape work in the
# ONNX export (a tiny export took ~2 min with one per level, ~25 s without).


def _tiny_umt5(folder: Path, seed: int, d_model: int) -> None:
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    chars, _ = _char_vocab()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(folder / "tokenizer")
    torch.manual_seed(seed)
    UMT5EncoderModel(UMT5Config(
        vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )).eval().save_pretrained(folder / "text_encoder", safe_serialization=True)


def build_wan_tiny(path: str | Path, seed: int = 0, with_text: bool = True,
                   massive: tuple[int, ...] = WAN_TINY_MASSIVE, **transformer_overrides) -> Path:
    """Wan 2.1 T2V-architecture video pipeline: WanTransformer3DModel, the causal 3-D AutoencoderKLWan (4 latent
    channels), a flow-matching UniPC scheduler (as Wan's), umT5."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    cfg = {**WAN_TINY_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**cfg).eval()
    _plant(model, model.patch_embedding.bias, massive, 300.0)
    with torch.no_grad():  # time_proj is Wan's modulation linear: scale it as _plant does AdaLN linears
        model.condition_embedder.time_proj.weight.mul_(4.0)
    torch.manual_seed(seed + 100)
    vae = AutoencoderKLWan(**WAN_TINY_VAE).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return save_pipeline_folder(
        path, {"transformer": model, "vae": vae, "scheduler": scheduler}, with_text, "WanPipeline",
        lambda folder: _tiny_umt5(folder, seed + 200, cfg["text_dim"]),
    )


COGVIDEOX_TINY_MASSIVE = (6, 45)
COGVIDEOX_TINY_TRANSFORMER = dict(
    num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32, text_embed_dim=32,
    num_layers=3, sample_width=12, sample_height=8, sample_frames=25, patch_size=2, temporal_compression_ratio=4,
    max_text_seq_length=12, spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0,
    use_rotary_positional_embeddings=False,
)  # CogVideoX-2b's block settings at toy width (3 blocks, hidden 64, 12 text tokens); clips of up to 25 frames;
# use_rotary_positional_embeddings=True makes it 5b-like (RoPE over the 4 x 6 base grid's crops)
COGVIDEOX_TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
    layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=1.15258426,
)  # CogVideoX's VAE layout (8x spatial, 4x temporal: GroupNorm at every level, so the per-chunk statistics are
# checked at full, half and quarter frame rate), toy width


def build_cogvideox_tiny(path: str | Path, seed: int = 0, with_text: bool = True,
                         massive: tuple[int, ...] = COGVIDEOX_TINY_MASSIVE, **transformer_overrides) -> Path:
    """CogVideoX-architecture video pipeline: CogVideoXTransformer3DModel, the causal 3-D AutoencoderKLCogVideoX,
    CogVideoX-2b's scheduler (DDIM, scaled-linear betas, SNR shift 3, zero terminal SNR, v-prediction), T5."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    cfg = {**COGVIDEOX_TINY_TRANSFORMER, **transformer_overrides}
    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(**cfg).eval()
    _plant(model, model.patch_embed.proj.bias, massive, 300.0)
    torch.manual_seed(seed + 100)
    vae = AutoencoderKLCogVideoX(**COGVIDEOX_TINY_VAE).eval()
    scheduler = CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       snr_shift_scale=3.0, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                                       prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True)
    return save_pipeline_folder(
        path, {"transformer": model, "vae": vae, "scheduler": scheduler}, with_text, "CogVideoXPipeline",
        lambda folder: _tiny_t5(folder, "tokenizer", "text_encoder", seed + 200, cfg["text_embed_dim"]),
    )


# A ViT at toy width: 3 layers, a 7x7 position table (image_size 98), so the test sizes interpolate it both
# down (4x6) and up (9x13); 4 registers in the registers model, as in facebook/dinov2-with-registers-*.
DINOV2_TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2, image_size=98,
                   patch_size=14, layerscale_value=0.5)


def build_dinov2_tiny(path: str | Path, seed: int = 0, registers: bool = False, **overrides) -> Path:
    """A transformers model folder (config.json, model.safetensors) of Dinov2Model, or Dinov2WithRegistersModel
    with `registers`; random weights, position table and CLS/register tokens drawn at unit scale (the
    initialiser's 0.02 would leave the position embeddings invisible next to the patch embeddings)."""
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    path = Path(path)
    cfg = {**DINOV2_TINY, **overrides}
    torch.manual_seed(seed)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=4, **cfg)).eval()
    else:
        model = Dinov2Model(Dinov2Config(**cfg)).eval()
    with torch.no_grad():
        embeddings = model.embeddings
        embeddings.position_embeddings.normal_()
        embeddings.cls_token.normal_()
        if registers:
            embeddings.register_tokens.normal_()
    with staged_folder(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        config = json.loads((tmp / "config.json").read_text())  # random weights, marked so (as pipelines are)
        (tmp / "config.json").write_text(json.dumps({**config, RANDOM_WEIGHTS_KEY: True}, indent=2))
    return path


# One tiny builder per registered family; tests/test_families.py checks that none is missing.
TINY_BUILDERS = {"flux": build_flux_tiny, "sd3": build_sd3_tiny, "pixart": build_pixart_tiny, "dit": build_dit_tiny,
                 "latte": build_latte_tiny, "wan": build_wan_tiny,
                 "cogvideox": build_cogvideox_tiny, "dinov2": build_dinov2_tiny}

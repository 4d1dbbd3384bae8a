"""Video DiT stand-ins with the real dimensions, built offline with random weights: Wan 2.1 T2V 1.3B and CogVideoX-2b.

What an export's memory depends on is the shape of every tensor it keeps, and an export at layer K keeps
blocks 0..K-1 and block K's modulation only. So each stand-in has the released model's widths and exactly the
blocks an export at the registry's default layer keeps (layer 15 for both: 16 blocks, the 16th holding only the
modulation the export reads), at the real widths, with the real VAE (the diffusers class's defaults are the
released VAE's config) and a random prompt-embeddings file of the pipeline's length (so no text encoder):

- wan2.1-1.3b: WanTransformer3DModel hidden 1536 (12 heads x 128), FFN 8960, umT5 width 4096, 3-D RoPE over
  1024 positions per axis; AutoencoderKLWan (base 96, 16 latent channels, 8x spatial / 4x temporal); 512 text
  tokens (zero after the prompt's, as WanPipeline pads).
- cogvideox-2b: CogVideoXTransformer3DModel hidden 1920 (30 heads x 64), time embedding 512, T5 width 4096,
  226 text tokens, 3-D sin-cos positions (60 x 90 x 13 base grid); AutoencoderKLCogVideoX (128/256/256/512,
  16 latent channels).

The transformer is stored as bf16 shards (bench/standin.py's writer), as the releases are; weights follow
PyTorch's default Linear init, norms are ones. The folders are not recognised as the registry models (they have
16 blocks, not 30): bench_export_memory.py passes the layer, size and prompt embeddings itself.

    python bench/video_standin.py wan2.1-1.3b [--out /work/cache/wan2.1-1.3b-standin]
"""

from __future__ import annotations

import json
from pathlib import Path

from build_cache import cached_build
from standin import _write_transformer

STANDIN_LAYER = 15  # the registry's default layer of wan2.1-1.3b and cogvideox-2b
STANDIN_BLOCKS = STANDIN_LAYER + 1  # blocks 0..14 kept whole, block 15's modulation read
VERSION = 1

WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=1024,
)  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json, num_layers 30 there
COGVIDEOX_2B = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
    text_embed_dim=4096, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=226, spatial_interpolation_scale=1.875,
    temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=False, norm_eps=1e-5,
    norm_elementwise_affine=True, attention_bias=True, flip_sin_to_cos=True, freq_shift=0,
)  # THUDM/CogVideoX-2b transformer/config.json, num_layers 30 there

STANDINS = {
    # name: (transformer class, config, pipeline class, VAE class, text tokens, prompt tokens (rest zero or None))
    "wan2.1-1.3b": ("WanTransformer3DModel", WAN_1_3B, "WanPipeline", "AutoencoderKLWan", 512, 24),
    "cogvideox-2b": ("CogVideoXTransformer3DModel", COGVIDEOX_2B, "CogVideoXPipeline", "AutoencoderKLCogVideoX", 226,
                     None),
}
# what the export uses, as the registry's defaults for the real models
IMAGE_SIZE = {"wan2.1-1.3b": 832, "cogvideox-2b": 720}


def default_out(name: str) -> Path:
    return Path(f"/work/cache/{name}-standin")


def build_video_standin(name: str, out: Path | None = None, seed: int = 0) -> Path:
    """Build (or reuse) the stand-in pipeline folder; its prompt embeds are at out/prompt_embeds.safetensors."""
    cls, config, pipeline, vae_cls, tokens, prompt_tokens = STANDINS[name]
    layers_key = "num_layers"

    def build(folder: Path) -> None:
        import diffusers
        import torch
        from safetensors.torch import save_file

        _write_transformer(folder / "transformer", {**config, layers_key: STANDIN_BLOCKS}, seed, class_name=cls)
        torch.manual_seed(seed + 1)
        getattr(diffusers, vae_cls)().eval().save_pretrained(folder / "vae", safe_serialization=True)
        if name.startswith("wan"):
            scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                          flow_shift=3.0)
        else:
            scheduler = diffusers.CogVideoXDDIMScheduler(
                beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, snr_shift_scale=3.0,
                rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction",
                clip_sample=False, set_alpha_to_one=True)
        scheduler.save_pretrained(folder / "scheduler")
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": pipeline, "_diffusers_version": "0.42.1", "transformer": ["diffusers", cls],
             "vae": ["diffusers", vae_cls], "scheduler": ["diffusers", type(scheduler).__name__]}, indent=2))
        g = torch.Generator().manual_seed(seed + 2)
        width = config["text_dim"] if name.startswith("wan") else config["text_embed_dim"]
        embeds = torch.randn(1, tokens, width, generator=g)
        if prompt_tokens is not None:
            embeds[:, prompt_tokens:] = 0
        save_file({"prompt_embeds": embeds}, str(folder / "prompt_embeds.safetensors"))

    what = {"version": VERSION, "what": f"{name} dimensions, random bf16 weights", "blocks": STANDIN_BLOCKS,
            "layer": STANDIN_LAYER, "seed": seed}
    return cached_build(out or default_out(name), "standin.json", what, build)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(STANDINS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    folder = build_video_standin(args.name, args.out)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"{folder}: {size / 1e9:.2f} GB on disk")


if __name__ == "__main__":
    main()

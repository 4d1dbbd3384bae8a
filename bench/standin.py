"""A FLUX.1-dev stand-in with the real dimensions, built offline with random weights.

The real FLUX.1-dev cannot be downloaded here (and is gated). What an export's memory and time depend
on is the shape of every kept tensor, so this builds the real architecture at the real widths — hidden
3072 (24 heads x 128), T5 width 4096, CLIP pooled width 768, RoPE axes (16, 56, 56), guidance
embedding, the real FLUX VAE (128/256/512/512 channels, 16 latent channels) — with fewer blocks:
2 double + 4 single. Exported at layer 4 (single block 2), it keeps 2 double blocks, 2 single blocks
and block 4's modulation: ~4.1 GB of fp32 weights, the same per-block shapes as a FLUX.1-dev export at
layer 28 (19 double + 9 single blocks, 31.2 GB), which the benchmark extrapolates to.

Like the release, the transformer is stored as bf16 safetensors shards with an index. Weights follow
PyTorch's default Linear init (uniform +-1/sqrt(fan_in)), norms are ones; the prompt is a random
[1, 512, 4096] T5 / [1, 768] CLIP embedding file (--prompt-embeds), so no text encoder is needed.

    python bench/standin.py [--out /work/cache/flux-dev-standin]
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from build_cache import build_cli, cached_build, save_random_prompt_embeds

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_attention_heads=24, attention_head_dim=128, joint_attention_dim=4096,
    pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLUX_DEV_BLOCKS = (19, 38)  # the release's double and single blocks
STANDIN_BLOCKS = (2, 4)
STANDIN_LAYER = 4  # single_transformer_blocks.2: kept weights ~4.1 GB fp32, both block types
FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, sample_size=1024,
)
TEXT_TOKENS = 512  # FLUX.1-dev's T5 length
SHARD_BYTES = 1 << 30
VERSION = 1  # bump when the stand-in changes; a cached folder of another version is rebuilt
DEFAULT_OUT = Path("/work/cache/flux-dev-standin")


def _random_like(name: str, shape: tuple[int, ...], gen):
    import torch

    if len(shape) == 1 and ("norm" in name and name.endswith("weight")):
        return torch.ones(shape)
    fan_in = shape[1] if len(shape) >= 2 else shape[0]
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=gen)


def _write_transformer(folder: Path, config: dict, seed: int, class_name: str = "FluxTransformer2DModel") -> None:
    """bf16 shards of about SHARD_BYTES plus diffusion_pytorch_model.safetensors.index.json, tensor by tensor
    (class_name: the diffusers transformer class; bench/video_standin.py writes Wan and CogVideoX ones)."""
    import diffusers
    import torch
    from safetensors.torch import save_file

    with torch.device("meta"):
        meta = getattr(diffusers, class_name)(**config)
    shapes = [(k, tuple(p.shape)) for k, p in meta.state_dict().items()]
    groups, current, size = [], [], 0
    for name, shape in shapes:
        nbytes = 2 * math.prod(shape)
        if current and size + nbytes > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    groups.append(current)
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    folder.mkdir(parents=True)
    for i, group in enumerate(groups):
        shard = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: _random_like(name, shape, gen).to(torch.bfloat16) for name, shape in group}
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({name: shard for name in tensors})
        del tensors
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(
        {"_class_name": class_name, "_diffusers_version": "0.42.1", **config}, indent=2))


def build_standin(out: Path = DEFAULT_OUT, seed: int = 0) -> Path:
    """Build (or reuse) the stand-in pipeline folder; returns it. prompt embeds are at out/prompt_embeds.safetensors."""

    def build(folder: Path) -> None:
        import torch
        from diffusers import AutoencoderKL

        config = {**FLUX_DEV, "num_layers": STANDIN_BLOCKS[0], "num_single_layers": STANDIN_BLOCKS[1]}
        _write_transformer(folder / "transformer", config, seed)
        torch.manual_seed(seed + 1)
        AutoencoderKL(**FLUX_VAE).eval().save_pretrained(folder / "vae", safe_serialization=True)
        (folder / "model_index.json").write_text(json.dumps(
            {"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1",
             "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
        save_random_prompt_embeds(folder / "prompt_embeds.safetensors", TEXT_TOKENS, FLUX_DEV["joint_attention_dim"],
                                  FLUX_DEV["pooled_projection_dim"], seed + 2)

    what = {"version": VERSION, "what": "FLUX.1-dev dimensions, random bf16 weights", "blocks": STANDIN_BLOCKS,
            "layer": STANDIN_LAYER, "seed": seed}
    return cached_build(out, "standin.json", what, build)


def main() -> None:
    build_cli(__doc__, build_standin, DEFAULT_OUT)


if __name__ == "__main__":
    main()

"""The medium FLUX-architecture model of the benchmarks, as a pipeline folder anyone can export.

Real diffusers classes, random weights: FluxTransformer2DModel with hidden 768 (12 heads x 64), 4 double
+ 4 single blocks, guidance embedding, two planted massive channels (5 and 77, x_embedder bias +-300,
like flux-tiny's), and an AutoencoderKL the size of FLUX's (128/256/512/512 channels, 2 layers per
block, 16 latent channels). Prompt embeddings: a random [1, 512, 256] T5 / [1, 128] CLIP file (512
text tokens, like FLUX.1-dev), so no text encoder is needed. Layer 6 (single block 2) is the usual tap.

    python bench/medium.py [--out /work/cache/flux-medium]
    ditf-export --model /work/cache/flux-medium --layer 6 \
        --prompt-embeds /work/cache/flux-medium/prompt_embeds.safetensors --discard 5,77 --ensemble 8 \
        --precision int8 --calib-images examples/images --out exports/medium-int8
"""

from __future__ import annotations

from pathlib import Path

from build_cache import build_cli, cached_build, save_random_prompt_embeds

HIDDEN, BLOCKS, TEXT_TOKENS = 768, 4, 512
MASSIVE = (5, 77)
LAYER = 6
FLUX_VAE_SIZE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)
VERSION = 1  # bump when the model changes; a cached folder of another version is rebuilt
DEFAULT_OUT = Path("/work/cache/flux-medium")


def transformer_overrides(hidden: int = HIDDEN, blocks: int = BLOCKS) -> dict:
    return dict(num_layers=blocks, num_single_layers=blocks, attention_head_dim=64,
                num_attention_heads=hidden // 64, axes_dims_rope=(8, 28, 28), joint_attention_dim=256,
                pooled_projection_dim=128)


def build_medium(out: Path = DEFAULT_OUT, hidden: int = HIDDEN, blocks: int = BLOCKS,
                 massive: tuple[int, ...] = MASSIVE, text_tokens: int = TEXT_TOKENS, seed: int = 0) -> Path:
    """Build (or reuse, when its stamp matches) the pipeline folder; prompt embeds at out/prompt_embeds.safetensors."""
    from ditf_export.tiny import save_pipeline_folder, tiny_flux_transformer, tiny_vae

    def build(folder: Path) -> None:
        save_pipeline_folder(folder, {"transformer": tiny_flux_transformer(seed, massive=massive,
                                                                           **transformer_overrides(hidden, blocks)),
                                      "vae": tiny_vae(seed + 1, **FLUX_VAE_SIZE)}, False, "FluxPipeline")
        save_random_prompt_embeds(folder / "prompt_embeds.safetensors", text_tokens, 256, 128, seed)

    what = {"version": VERSION, "hidden": hidden, "blocks": blocks, "massive": list(massive),
            "text_tokens": text_tokens, "seed": seed}
    return cached_build(out, "medium.json", what, build)


def main() -> None:
    build_cli(__doc__, build_medium, DEFAULT_OUT)


if __name__ == "__main__":
    main()

"""DiT (DiTTransformer2DModel, Peebles & Xie): class-conditional DiT blocks with AdaLN-Zero.

Each block's AdaLayerNormZero computes its own embedding, `emb(timestep, class_labels)`, inside norm1;
with timestep and class label fixed it is a constant, so every kept block's embedding and modulation
are baked (bake_adaln_with_embedding) and block K's shift/scale are its first two chunks. The class
label defaults to the null class (index num_embeds_ada_norm, the classifier-free-guidance slot).
Variance-preserving noising, 4-channel SD VAE.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import ExportInputError
from ..registry import Default, ModelSpec, fact_equals, register, register_model
from .base import ExportOptions, FeatureParts, SingleStackAdapter, bake_adaln_with_embedding
from .posembed import MAX_GRID, SinCosPatchEmbed


class DiTBackbone(nn.Module):
    """x_t [N, 4, h, w] -> image tokens entering block K [N, h/2 * w/2, C]. Embeddings and modulation are baked."""

    def __init__(self, patch_embed: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        hidden = self.patch_embed(x_t)
        for block in self.blocks:
            hidden = block(hidden, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                           timestep=None, cross_attention_kwargs=None, class_labels=None)
        return hidden


@register("dit")
class DiTAdapter(SingleStackAdapter):
    transformer_class_name = "DiTTransformer2DModel"
    noising = "variance-preserving"

    top_level_weights = ("pos_embed.",)

    def head_weight(self, key: str) -> bool:
        return ".norm1." in key  # AdaLayerNormZero with its own timestep/class embedding

    def max_grid(self, config: dict[str, Any]) -> int:
        return MAX_GRID  # SinCosPatchEmbed's precomputed tables

    def null_class(self, config: dict[str, Any]) -> int:
        return int(config.get("num_embeds_ada_norm") or 1000)

    def check_options(self, config: dict[str, Any], options: ExportOptions) -> ExportOptions:
        if options.guidance is not None:
            raise ExportInputError("--guidance: DiT models have no guidance embedding; drop --guidance")
        if options.prompt_embeds is not None or (options.prompt or ""):
            raise ExportInputError("DiT is class-conditional and takes no prompt: drop --prompt / --prompt-embeds "
                                   "and pass --class-label N (default: the null class)")
        n = self.null_class(config)
        if options.class_label is not None and not 0 <= options.class_label <= n:
            raise ExportInputError(f"--class-label {options.class_label}: this DiT has classes 0..{n - 1} "
                                   f"and the null class {n}")
        # Record what is baked (the manifest reads these): no prompt at all, and the label actually used.
        return replace(options, prompt=None, class_label=n if options.class_label is None else options.class_label)

    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        label = self.null_class(config) if options.class_label is None else int(options.class_label)
        return {"class_labels": torch.tensor([label], dtype=torch.long)}

    @torch.no_grad()
    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        dtype = transformer.pos_embed.proj.weight.dtype
        t = torch.tensor([options.timestep], dtype=dtype)
        labels = conditioning["class_labels"]
        blocks = list(transformer.transformer_blocks)
        kept, head_block = blocks[: options.layer], blocks[options.layer]
        for block in kept:
            bake_adaln_with_embedding(block.norm1, t, labels, hidden_dtype=dtype)
        head = head_block.norm1
        modulation = head.linear(head.silu(head.emb(t, labels, hidden_dtype=dtype)))[0]
        c = transformer.inner_dim
        shift, scale = modulation[:c], modulation[c : 2 * c]
        label = int(labels[0])
        null = self.null_class(transformer.config)
        notes = (f"class label {label}" + (" (the null class)" if label == null else ""),
                 f"position embedding: sin-cos tables for token grids up to {MAX_GRID} per side")
        backbone = DiTBackbone(SinCosPatchEmbed(transformer.pos_embed), kept)
        return FeatureParts(backbone=backbone, shift=shift, scale=scale, norm_eps=1e-6, notes=notes)


# -- registry names ------------------------------------------------------------------------------

_DIT_COMMON = dict(
    family="dit",
    layer=Default(14, "guessed: half of 28 blocks"),
    timestep=Default(261, "guessed: DIFT's SD setting (variance-preserving schedule)"),
    discard=Default((), "unknown: detect with --discard auto / ditf-detect-massive"),
    ensemble=Default(8, "paper"),
    guidance=None,
    hidden_size=1152,
)

register_model(ModelSpec(name="dit-xl-2-256", hf_id="facebook/DiT-XL-2-256",
                         image_size=Default(256, "model card: trained at 256 px"), **_DIT_COMMON,
                         signature=(fact_equals("sample_size", 32),)))  # 32 latent cells = 256 px
register_model(ModelSpec(name="dit-xl-2-512", hf_id="facebook/DiT-XL-2-512",
                         image_size=Default(512, "model card: trained at 512 px"), **_DIT_COMMON,
                         signature=(fact_equals("sample_size", 64),)))

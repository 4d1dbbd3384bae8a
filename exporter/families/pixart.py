"""PixArt-α / Σ (PixArtTransformer2DModel): DiT blocks with T5 cross-attention and adaLN-single.

adaLN-single: `adaln_single` turns the timestep (and, for PixArt-α 1024, the image resolution and aspect
ratio) into one vector t6 = linear(silu(emb)) of 6 * C; each block adds its own `scale_shift_table`
and chunks (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp). With the timestep fixed,
t6 is a constant: blocks 0..K-1 get it as a baked tensor, block K's shift/scale are computed here.
The T5 prompt is baked as caption tokens; masked-out tokens are dropped (diffusers adds -10000 to
their attention logits, which underflows to exactly zero weight in float32). Variance-preserving
noising, abar from the pipeline's scheduler config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ExportInputError
from ..registry import ConfigFact, Default, ModelSpec, fact_equals, register, register_model
from .base import ExportOptions, FeatureParts, SingleStackAdapter
from .posembed import MAX_GRID, SinCosPatchEmbed

TOP_LEVEL = ("pos_embed.", "adaln_single.", "caption_projection.")


class PixArtBackbone(nn.Module):
    """x_t [N, 4, h, w] -> image tokens entering block K [N, h/2 * w/2, C]; t6 and the caption are baked."""

    def __init__(self, patch_embed: nn.Module, t6: torch.Tensor, caption: torch.Tensor, blocks: list[nn.Module]):
        super().__init__()
        self.patch_embed = patch_embed
        self.register_buffer("t6", t6.detach().clone())  # adaln_single output, [1, 6C]
        self.register_buffer("caption", caption.detach().clone())  # caption_projection(T5), kept tokens, [1, L, C]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        hidden = self.patch_embed(x_t)
        t6 = self.t6.expand(n, -1)
        caption = self.caption.expand(n, -1, -1)
        for block in self.blocks:
            hidden = block(hidden, attention_mask=None, encoder_hidden_states=caption, encoder_attention_mask=None,
                           timestep=t6, cross_attention_kwargs=None, class_labels=None)
        return hidden


def size_conditioning(image_size: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """PixArt-α 1024's micro-conditions as PixArtAlphaPipeline builds them, for a square image_size image."""
    return {"resolution": torch.tensor([[float(image_size), float(image_size)]], dtype=dtype),
            "aspect_ratio": torch.tensor([[1.0]], dtype=dtype)}


@register("pixart")
class PixArtAdapter(SingleStackAdapter):
    transformer_class_name = "PixArtTransformer2DModel"
    noising = "variance-preserving"
    text_attention = "cross"

    top_level_weights = TOP_LEVEL

    def head_weight(self, key: str) -> bool:
        return key.endswith(".scale_shift_table")

    def max_grid(self, config: dict[str, Any]) -> int:
        return MAX_GRID  # SinCosPatchEmbed's precomputed tables (Latte's too)

    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        from ..text import check_prompt_embeds, encode_t5_masked

        if config.get("caption_channels") is None:
            raise ExportInputError("this PixArt transformer has no caption_projection (caption_channels is null)")
        d_text = int(config["caption_channels"])
        if options.prompt_embeds is not None:
            embeds = check_prompt_embeds(options.prompt_embeds, d_text, None)
        else:
            embeds = check_prompt_embeds(encode_t5_masked(source, options.prompt or "", options.text_max_length or 120),
                                         d_text, None)
        mask = embeds.get("prompt_attention_mask")
        if mask is not None and tuple(mask.shape) != (1, embeds["prompt_embeds"].shape[1]):
            raise ExportInputError(f"--prompt-embeds: prompt_attention_mask has shape {list(mask.shape)}, expected "
                                   f"[1, {embeds['prompt_embeds'].shape[1]}] (one entry per prompt token)")
        if mask is not None and not bool((mask > 0).any()):
            raise ExportInputError("--prompt-embeds: prompt_attention_mask masks every token")
        return embeds

    @torch.no_grad()
    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        dtype = transformer.caption_projection.linear_1.weight.dtype
        notes: list[str] = []
        added = None
        if transformer.use_additional_conditions:
            size = int(options.image_size or 1024)
            added = size_conditioning(size, dtype)
            notes.append(f"PixArt-α size conditioning baked for a {size}x{size} image (resolution [{size}, {size}], "
                         "aspect ratio 1.0), whatever the input size")
        t = torch.tensor([options.timestep], dtype=dtype)
        t6, _ = transformer.adaln_single(t, added, batch_size=1, hidden_dtype=dtype)

        embeds = conditioning["prompt_embeds"].to(dtype)
        mask = conditioning.get("prompt_attention_mask")
        if mask is not None:
            keep = mask[0] > 0
            embeds = embeds[:, keep]
            notes.append(f"prompt: {int(keep.sum())} of {keep.numel()} T5 tokens kept (attention mask)")
        caption = transformer.caption_projection(embeds)

        blocks = list(transformer.transformer_blocks)
        kept, head_block = blocks[: options.layer], blocks[options.layer]
        c = transformer.inner_dim
        modulation = head_block.scale_shift_table[None] + t6.reshape(1, 6, c)  # [1, 6, C]
        shift, scale = modulation[0, 0], modulation[0, 1]
        notes.append(f"position embedding: sin-cos tables for token grids up to {MAX_GRID} per side")
        backbone = PixArtBackbone(SinCosPatchEmbed(transformer.pos_embed), t6, caption, kept)
        return FeatureParts(backbone=backbone, shift=shift, scale=scale, norm_eps=1e-6, notes=tuple(notes))


# -- registry names ------------------------------------------------------------------------------
# No DiTF numbers exist for PixArt: layer is a guess (half of 28 blocks), the timestep is DIFT's SD choice
# (t = 261 on the same kind of variance-preserving schedule), massive channels are unknown (detect them).

def _size_conditioned(config: dict) -> bool:
    """PixArtTransformer2DModel's use_additional_conditions: as configured, else on exactly for sample size 128."""
    value = config.get("use_additional_conditions")
    return bool(value) if value is not None else config.get("sample_size") == 128


SIZE_CONDITIONED = ConfigFact("use_additional_conditions", bool, "size conditioning on", derive=_size_conditioned)
NOT_SIZE_CONDITIONED = ConfigFact("use_additional_conditions", lambda v: not v, "size conditioning off",
                                  derive=_size_conditioned)

_PIXART_COMMON = dict(
    family="pixart",
    layer=Default(14, "guessed: half of 28 blocks"),
    timestep=Default(261, "guessed: DIFT's SD setting (variance-preserving schedule)"),
    discard=Default((), "unknown: detect with --discard auto / ditf-detect-massive"),
    ensemble=Default(8, "paper"),
    guidance=None,
    hidden_size=1152,
)

register_model(ModelSpec(
    name="pixart-alpha", hf_id="PixArt-alpha/PixArt-XL-2-1024-MS",
    image_size=Default(1024, "model card: 1024 px multi-scale model (size conditioning baked at it)"),
    text_max_length=120, **_PIXART_COMMON,
    signature=(fact_equals("sample_size", 128), SIZE_CONDITIONED),
))
register_model(ModelSpec(
    name="pixart-alpha-512", hf_id="PixArt-alpha/PixArt-XL-2-512x512",
    image_size=Default(512, "model card: 512 px model"),
    text_max_length=120, **_PIXART_COMMON,
    signature=(fact_equals("sample_size", 64),),
))
register_model(ModelSpec(
    name="pixart-sigma", hf_id="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
    image_size=Default(1024, "model card: 1024 px model"),
    text_max_length=300, **_PIXART_COMMON,
    signature=(fact_equals("sample_size", 128), NOT_SIZE_CONDITIONED),  # Σ dropped α's size conditioning
))

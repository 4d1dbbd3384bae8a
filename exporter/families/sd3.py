"""SD3 / SD3.5 (SD3Transformer2DModel): one list of joint (MM-DiT) blocks, numbered directly.

Block K's image-stream input is the feature; its pre-attention shift/scale are the first two chunks of
`norm1.linear(silu(temb))` (AdaLayerNormZero: 6 chunks; SD3.5's dual-attention blocks use
SD35AdaLayerNormZeroX: 9 chunks, still shift_msa, scale_msa first). The transformer takes the timestep
in [0, 1000] unscaled; noising is flow matching with t = timestep / 1000.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import Default, ModelSpec, fact_empty, fact_equals, fact_hidden_size, fact_nonempty, register, register_model
from .base import ExportOptions, FeatureParts, SingleStackAdapter, bake_adaln
from .posembed import CroppedPatchEmbed

TOP_LEVEL = ("pos_embed.", "time_text_embed.", "context_embedder.")


class SD3Backbone(nn.Module):
    """x_t [N, 16, h, w] -> image tokens entering block K [N, h/2 * w/2, C]. Modulation and text are baked."""

    def __init__(self, patch_embed: nn.Module, text_tokens: torch.Tensor, blocks: list[nn.Module]):
        super().__init__()
        self.patch_embed = patch_embed
        self.register_buffer("text_tokens", text_tokens.detach().clone())  # context_embedder(prompt), [1, L, C]
        self.register_buffer("temb_placeholder", torch.zeros(1, 1))  # baked AdaLN ignores temb
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        hidden = self.patch_embed(x_t)
        text = self.text_tokens.expand(x_t.shape[0], -1, -1)
        for block in self.blocks:
            text, hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=self.temb_placeholder)
        return hidden


@register("sd3")
class SD3Adapter(SingleStackAdapter):
    transformer_class_name = "SD3Transformer2DModel"
    noising = "flow-matching"

    top_level_weights = TOP_LEVEL

    # Block K becomes the last one in the truncated config (context_pre_only): only its norm1 is read,
    # which that does not change.
    def head_weight(self, key: str) -> bool:
        return ".norm1.linear." in key

    def max_grid(self, config: dict[str, Any]) -> int:
        # the stored position table is pos_embed_max_size^2 tokens; a larger grid has no centre crop (its
        # gather indices would wrap around)
        return int(config["pos_embed_max_size"])

    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        from ..text import check_prompt_embeds, encode_sd3

        d_text, d_pooled = int(config["joint_attention_dim"]), int(config["pooled_projection_dim"])
        if options.prompt_embeds is not None:
            return check_prompt_embeds(options.prompt_embeds, d_text, d_pooled)
        embeds = encode_sd3(source, options.prompt or "", options.text_max_length or 256)
        return check_prompt_embeds(embeds, d_text, d_pooled)

    @torch.no_grad()
    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        dtype = transformer.context_embedder.weight.dtype
        pooled = conditioning["pooled_prompt_embeds"].to(dtype)
        t = torch.tensor([options.timestep], dtype=dtype)  # SD3 takes the timestep in [0, 1000] as it is
        temb = transformer.time_text_embed(t, pooled)
        text_tokens = transformer.context_embedder(conditioning["prompt_embeds"].to(dtype))

        blocks = list(transformer.transformer_blocks)
        kept, head_block = blocks[: options.layer], blocks[options.layer]
        for block in kept:
            bake_adaln(block.norm1, temb)
            bake_adaln(block.norm1_context, temb)
        modulation = head_block.norm1.linear(head_block.norm1.silu(temb))[0]
        c = transformer.inner_dim
        shift, scale = modulation[:c], modulation[c : 2 * c]
        notes = (f"position embedding: centre crop of the {transformer.pos_embed.pos_embed_max_size}^2 table "
                 "(token grids up to that size)",)
        backbone = SD3Backbone(CroppedPatchEmbed(transformer.pos_embed), text_tokens, kept)
        return FeatureParts(backbone=backbone, shift=shift, scale=scale, norm_eps=1e-6, notes=notes)


# -- registry names ------------------------------------------------------------------------------
# The DiTF paper reports channel 676 as SD3.5's massive activation; it gives no layer/timestep for SD3.x,
# so those are guesses (about half depth, FLUX's t = 260 on the same flow-matching schedule).

_SD3_COMMON = dict(
    family="sd3",
    timestep=Default(260, "guessed: FLUX's paper setting (same flow-matching schedule)"),
    image_size=Default(640, "guessed: FLUX's paper setting"),
    ensemble=Default(8, "paper"),
    guidance=None,
    text_max_length=256,  # StableDiffusion3Pipeline's default T5 length (prompt_embeds: 77 CLIP + 256 T5 tokens)
    gated=True,  # Stability AI's licences are accepted per user on each repository's page
)

register_model(ModelSpec(
    name="sd3", hf_id="stabilityai/stable-diffusion-3-medium-diffusers",
    layer=Default(12, "guessed: half of 24 joint blocks"),
    discard=Default((), "unknown: detect with --discard auto / ditf-detect-massive"),
    hidden_size=1536, **_SD3_COMMON,
    # SD3: no q/k normalisation and no dual-attention (MMDiT-X) blocks, both added in SD3.5
    signature=(fact_empty("dual_attention_layers"), fact_equals("qk_norm", None)),
))
register_model(ModelSpec(
    name="sd3.5-medium", hf_id="stabilityai/stable-diffusion-3.5-medium",
    layer=Default(12, "guessed: half of 24 joint blocks"),
    discard=Default((676,), "guessed: the paper's SD3.5 channel, not verified on Medium; "
                            "check with ditf-detect-massive"),
    hidden_size=1536, **_SD3_COMMON,
    signature=(fact_nonempty("dual_attention_layers"),),  # SD3.5-Medium is MMDiT-X: dual-attention blocks
))
register_model(ModelSpec(
    name="sd3.5-large", hf_id="stabilityai/stable-diffusion-3.5-large",
    layer=Default(19, "guessed: half of 38 joint blocks"),
    discard=Default((676,), "paper (SD3.5)"),
    hidden_size=2432, **_SD3_COMMON,
    signature=(fact_empty("dual_attention_layers"), fact_hidden_size(2432)),  # its width is what sets it apart
))

"""Latte (LatteTransformer3DModel): the open video DiT with the cleanest export path.

Why Latte among diffusers' video DiTs: its frames go through the plain 2-D SD VAE one by one (CogVideoX,
Wan, LTX, HunyuanVideo need causal 3-D VAEs whose chunked encoders loop in Python), and its blocks are
PixArt-α's (adaLN-single, T5 cross-attention) alternating with temporal blocks, so everything from the
image families carries over. Frames in, spacetime features out: image [B, F, 3, H, W] -> features
[B, F, C, H/16, W/16], each frame's map usable by the runtime's matcher (temporal correspondence).

Layer numbering interleaves the two block lists as diffusers runs them: k = 2i is
`transformer_blocks[i]` (spatial: attends within a frame), k = 2i + 1 is `temporal_transformer_blocks[i]`
(attends across frames at one position; its input includes the temporal position embedding when i = 0).
The feature is block k's input in [F, tokens] order, modulated by its scale_shift_table + t6.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid
from torch import nn

from ..registry import Default, ModelSpec, register, register_model
from .base import ExportOptions, FeatureParts, block_index
from .pixart import PixArtAdapter
from .posembed import MAX_GRID, SinCosPatchEmbed

SPATIAL = "transformer_blocks."
TEMPORAL = "temporal_transformer_blocks."
TOP_LEVEL = ("pos_embed.", "adaln_single.", "caption_projection.")


class LatteBackbone(nn.Module):
    """x_t [N, F, 4, h, w] -> tokens entering block K, [N, F, h/2 * w/2, C]; t6, caption baked."""

    def __init__(self, patch_embed: nn.Module, t6: torch.Tensor, caption: torch.Tensor, temp_pos: torch.Tensor,
                 spatial: list[nn.Module], temporal: list[nn.Module], head_is_temporal: bool):
        super().__init__()
        self.patch_embed = patch_embed
        self.register_buffer("t6", t6.detach().clone())  # [1, 6C]
        self.register_buffer("caption", caption.detach().clone())  # [1, L, C]
        self.register_buffer("temp_pos", temp_pos.detach().clone())  # [max_frames, C], float32
        self.spatial = nn.ModuleList(spatial)
        self.temporal = nn.ModuleList(temporal)
        self.head_is_temporal = head_is_temporal

    def _add_temp_pos(self, clip: torch.Tensor) -> torch.Tensor:  # clip [n, F, P, C]
        return clip + self.temp_pos[: clip.shape[1]][None, :, None, :].to(clip.dtype)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        n, f = x_t.shape[0], x_t.shape[1]
        hidden = self.patch_embed(x_t.flatten(0, 1))  # [n*F, P, C], frame-major like diffusers
        p, c = hidden.shape[1], hidden.shape[2]
        for i, spatial in enumerate(self.spatial):
            hidden = spatial(hidden, None, self.caption.expand(n * f, -1, -1), None, self.t6.expand(n * f, -1),
                             None, None)
            if i == len(self.temporal):
                break  # block K is temporal_transformer_blocks[i]: stop at its input
            clip = hidden.reshape(n, f, p, c)
            if i == 0:
                clip = self._add_temp_pos(clip)
            seq = clip.permute(0, 2, 1, 3).reshape(n * p, f, c)
            seq = self.temporal[i](seq, None, None, None, self.t6.expand(n * p, -1), None, None)
            hidden = seq.reshape(n, p, f, c).permute(0, 2, 1, 3).reshape(n * f, p, c)
        clip = hidden.reshape(n, f, p, c)
        if self.head_is_temporal and len(self.temporal) == 0:
            clip = self._add_temp_pos(clip)  # temporal block 0's input carries the temporal position embedding
        return clip


@register("latte")
class LatteAdapter(PixArtAdapter):
    transformer_class_name = "LatteTransformer3DModel"
    noising = "variance-preserving"

    def num_layers(self, config: dict[str, Any]) -> int:
        return 2 * int(config["num_layers"])

    def block_name(self, config: dict[str, Any], layer: int) -> str:
        return f"{TEMPORAL if layer % 2 else SPATIAL}{layer // 2}"

    def truncated_config(self, config: dict[str, Any], layer: int) -> dict[str, Any]:
        return {**config, "num_layers": layer // 2 + 1}

    def max_frames(self, config: dict[str, Any]) -> int | None:
        return int(config["video_length"])

    def needed_weight(self, key: str, config: dict[str, Any], layer: int) -> bool:
        if key.startswith(TOP_LEVEL):
            return True
        i, head_temporal = layer // 2, bool(layer % 2)
        j = block_index(key, TEMPORAL)
        if j is not None:
            return j < i or (j == i and head_temporal and key.endswith(".scale_shift_table"))
        j = block_index(key, SPATIAL)
        if j is not None:
            return j < i or (j == i and (head_temporal or key.endswith(".scale_shift_table")))
        return False

    @torch.no_grad()
    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        dtype = transformer.caption_projection.linear_1.weight.dtype
        t = torch.tensor([options.timestep], dtype=dtype)
        t6, _ = transformer.adaln_single(t, None, batch_size=1, hidden_dtype=dtype)
        embeds = conditioning["prompt_embeds"].to(dtype)
        notes = []
        mask = conditioning.get("prompt_attention_mask")
        if mask is not None:  # LattePipeline keeps the unmasked tokens (mask_feature=True)
            keep = mask[0] > 0
            embeds = embeds[:, keep]
            notes.append(f"prompt: {int(keep.sum())} of {keep.numel()} T5 tokens kept (attention mask)")
        caption = transformer.caption_projection(embeds)
        frames = int(transformer.config.video_length)
        c = int(transformer.config.num_attention_heads) * int(transformer.config.attention_head_dim)
        # diffusers' own table, computed as at LatteTransformer3DModel.__init__ (float64, then .float())
        temp_pos = get_1d_sincos_pos_embed_from_grid(
            c, torch.arange(0, frames).unsqueeze(1), output_type="pt").float()

        i, head_temporal = options.layer // 2, bool(options.layer % 2)
        spatial = list(transformer.transformer_blocks)[: i + (1 if head_temporal else 0)]
        temporal = list(transformer.temporal_transformer_blocks)[:i]
        head = (transformer.temporal_transformer_blocks if head_temporal else transformer.transformer_blocks)[i]
        modulation = head.scale_shift_table[None] + t6.reshape(1, 6, c)
        notes += [f"video: frames 2..{frames} (video_length {frames}); the temporal position embedding is "
                  f"sliced to the clip's frame count (diffusers requires exactly {frames})",
                  f"position embedding: sin-cos tables for token grids up to {MAX_GRID} per side"]
        backbone = LatteBackbone(SinCosPatchEmbed(transformer.pos_embed), t6, caption, temp_pos, spatial, temporal,
                                 head_temporal)
        return FeatureParts(backbone=backbone, shift=modulation[0, 0], scale=modulation[0, 1], norm_eps=1e-6,
                            notes=tuple(notes))


register_model(ModelSpec(
    name="latte", family="latte", hf_id="maxin-cn/Latte-1",
    layer=Default(28, "guessed: spatial block 14 of 28 (unified numbering interleaves spatial/temporal)"),
    timestep=Default(261, "guessed: DIFT's SD setting (variance-preserving schedule)"),
    image_size=Default(512, "model card: 512 px, 16-frame clips"),
    discard=Default((), "unknown: detect from data"),
    ensemble=Default(8, "paper"),
    guidance=None,
    hidden_size=1152,
    text_max_length=120,
    signature=(),  # the one registered Latte
))


def _build_latte_tiny(path: str) -> None:
    from ..tiny import build_latte_tiny

    build_latte_tiny(path)


register_model(ModelSpec(
    name="latte-tiny", family="latte", hf_id=None,
    layer=Default(1, "built-in test model: temporal block 0's input (the frames have attended to each other)"),
    timestep=Default(261, "as latte (DIFT's SD setting)"),
    image_size=Default(256, "built-in test model: small for CPU"),
    discard=Default((6, 33), "planted by construction in latte-tiny"),
    ensemble=Default(2, "built-in test model: small for CPU"),
    guidance=None,
    hidden_size=64,
    text_max_length=32,
    builtin=_build_latte_tiny,
))

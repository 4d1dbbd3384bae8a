"""FLUX.1 (FluxTransformer2DModel): 19 double-stream blocks then 38 single-stream blocks.

The feature is the image-token hidden state entering block K (both block types receive image and
text streams separately in diffusers >= 0.35), modulated with block K's pre-attention shift/scale.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import nn

from ..errors import ExportInputError
from ..registry import Default, ModelSpec, fact_equals, register, register_model
from .base import ExportOptions, FamilyAdapter, FeatureParts, bake_adaln, block_index

DOUBLE = "transformer_blocks."
SINGLE = "single_transformer_blocks."
TOP_LEVEL = ("x_embedder.", "context_embedder.", "time_text_embed.")

# Largest token grid side the RoPE tables cover: 1024 tokens = 16384 px at FLUX's stride 16.
MAX_GRID = 1024
# FluxPipeline packs 2x2 latent cells into one token before x_embedder (`_pack_latents`); the config's
# own patch_size is 1 because the packing happens outside the transformer.
PACK = 2
# What the FLUX.1-dev pipeline passes for a guidance-distilled model.
DEV_GUIDANCE = Default(3.5, "FLUX.1-dev default")


class FluxRope(nn.Module):
    """FLUX's 3-axis RoPE as float32 tables sliced in the graph.

    diffusers computes the angles in float64 at run time (no float64 allowed in our graphs); the
    tables here are computed with diffusers' own function in float64 once, then stored as float32,
    so the values are bit-identical. Text ids are all zero (cos 1, sin 0); image ids are (0, row, col).
    """

    def __init__(self, axes_dim: tuple[int, ...], theta: float, text_len: int):
        super().__init__()
        assert len(axes_dim) == 3, "FLUX RoPE has three axes"
        pos = torch.arange(MAX_GRID).float()
        tables = [
            get_1d_rotary_pos_embed(d, pos, theta=theta, repeat_interleave_real=True, use_real=True, freqs_dtype=torch.float64)
            for d in axes_dim
        ]
        self.register_buffer("axis0_cos", tables[0][0][:1].float().contiguous())
        self.register_buffer("axis0_sin", tables[0][1][:1].float().contiguous())
        self.register_buffer("row_cos", tables[1][0].float().contiguous())
        self.register_buffer("row_sin", tables[1][1].float().contiguous())
        self.register_buffer("col_cos", tables[2][0].float().contiguous())
        self.register_buffer("col_sin", tables[2][1].float().contiguous())
        text_cos = torch.cat([t[0][:1] for t in tables], dim=-1).float().expand(text_len, -1)
        text_sin = torch.cat([t[1][:1] for t in tables], dim=-1).float().expand(text_len, -1)
        self.register_buffer("text_cos", text_cos.contiguous())
        self.register_buffer("text_sin", text_sin.contiguous())

    def _image(self, a0: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        r = rows[:hp]
        c = cols[:wp]
        grid = torch.cat(
            [
                a0.expand(hp, wp, a0.shape[-1]),
                r[:, None, :].expand(hp, wp, r.shape[-1]),
                c[None, :, :].expand(hp, wp, c.shape[-1]),
            ],
            dim=-1,
        )
        return grid.reshape(hp * wp, -1)

    def forward(self, hp: int, wp: int) -> tuple[torch.Tensor, torch.Tensor]:
        cos = torch.cat([self.text_cos, self._image(self.axis0_cos[None], self.row_cos, self.col_cos, hp, wp)], 0)
        sin = torch.cat([self.text_sin, self._image(self.axis0_sin[None], self.row_sin, self.col_sin, hp, wp)], 0)
        return cos, sin


class FluxBackbone(nn.Module):
    """x_t [N, 16, h, w] -> image tokens entering block K [N, h/2 * w/2, C]. Modulation is baked."""

    def __init__(self, x_embedder: nn.Module, text_tokens: torch.Tensor, rope: FluxRope, blocks: list[nn.Module]):
        super().__init__()
        self.x_embedder = x_embedder
        self.register_buffer("text_tokens", text_tokens.detach().clone())  # context_embedder(prompt), [1, L, C]
        self.register_buffer("temb_placeholder", torch.zeros(1, 1))  # baked AdaLN ignores temb
        self.rope = rope
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x_t.shape
        hp, wp = h // PACK, w // PACK
        # 2x2 patchify exactly as FluxPipeline._pack_latents
        tokens = x_t.reshape(n, c, hp, PACK, wp, PACK).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(n, hp * wp, c * PACK * PACK)
        hidden = self.x_embedder(tokens)
        text = self.text_tokens.expand(n, -1, -1)
        rotary = self.rope(hp, wp)
        for block in self.blocks:
            text, hidden = block(
                hidden_states=hidden, encoder_hidden_states=text, temb=self.temb_placeholder, image_rotary_emb=rotary
            )
        return hidden


@register("flux")
class FluxAdapter(FamilyAdapter):
    transformer_class_name = "FluxTransformer2DModel"
    noising = "flow-matching"

    def num_layers(self, config: dict[str, Any]) -> int:
        return int(config["num_layers"]) + int(config["num_single_layers"])

    def block_name(self, config: dict[str, Any], layer: int) -> str:
        n_double = int(config["num_layers"])
        return f"{DOUBLE}{layer}" if layer < n_double else f"{SINGLE}{layer - n_double}"

    def truncated_config(self, config: dict[str, Any], layer: int) -> dict[str, Any]:
        n_double = int(config["num_layers"])
        cfg = dict(config)
        cfg["num_layers"] = min(layer + 1, n_double)
        cfg["num_single_layers"] = max(0, layer + 1 - n_double)
        return cfg

    def needed_weight(self, key: str, config: dict[str, Any], layer: int) -> bool:
        if key.startswith(TOP_LEVEL):
            return True
        n_double = int(config["num_layers"])
        i = block_index(key, DOUBLE)
        if i is not None:
            return i < min(layer, n_double) or (i == layer and ".norm1.linear." in key)
        j = block_index(key, SINGLE)
        if j is not None:
            k = layer - n_double
            return j < k or (j == k and ".norm.linear." in key)
        return False  # norm_out, proj_out: past the feature

    def patch_size(self, config: dict[str, Any]) -> int:
        return PACK

    def max_grid(self, config: dict[str, Any]) -> int:
        return MAX_GRID  # FluxRope's tables

    def default_guidance(self, config: dict[str, Any]) -> Default | None:
        return DEV_GUIDANCE if config.get("guidance_embeds", False) else None

    def check_options(self, config: dict[str, Any], options: ExportOptions) -> ExportOptions:
        if options.guidance is not None and not config.get("guidance_embeds", False):
            raise ExportInputError(
                "--guidance: this FLUX model has no guidance embedding (e.g. FLUX.1-schnell); drop --guidance"
            )
        if options.guidance is None and config.get("guidance_embeds", False):
            raise ExportInputError("this FLUX model is guidance-distilled: pass --guidance (FLUX.1-dev uses 3.5)")
        return options

    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        from ..text import check_prompt_embeds, encode_clip_t5

        d_text, d_pooled = int(config["joint_attention_dim"]), int(config["pooled_projection_dim"])
        if options.prompt_embeds is not None:
            return check_prompt_embeds(options.prompt_embeds, d_text, d_pooled)
        embeds = encode_clip_t5(source, options.prompt or "", options.text_max_length or 512)
        return check_prompt_embeds(embeds, d_text, d_pooled)

    @torch.no_grad()
    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        cfg = transformer.config
        dtype = transformer.x_embedder.weight.dtype
        pooled = conditioning["pooled_prompt_embeds"].to(dtype)
        # diffusers multiplies timestep and guidance by 1000 inside forward(); our timestep is already x1000
        t = torch.tensor([options.timestep], dtype=dtype)
        # guidance-distilled models (FLUX.1-dev) embed the guidance too; check_options made sure
        # options.guidance is given exactly when the config has a guidance embedding
        if options.guidance is not None:
            g = torch.tensor([options.guidance * 1000.0], dtype=dtype)
            temb = transformer.time_text_embed(t, g, pooled)
        else:
            temb = transformer.time_text_embed(t, pooled)
        text_tokens = transformer.context_embedder(conditioning["prompt_embeds"].to(dtype))

        n_double = int(cfg.num_layers)
        blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
        kept, head_block = blocks[: options.layer], blocks[options.layer]
        for block in kept:
            if hasattr(block, "norm1"):
                bake_adaln(block.norm1, temb)
                bake_adaln(block.norm1_context, temb)
            else:
                bake_adaln(block.norm, temb)
        head_norm = head_block.norm1 if options.layer < n_double else head_block.norm
        modulation = head_norm.linear(head_norm.silu(temb))[0]
        c = transformer.inner_dim
        shift, scale = modulation[:c], modulation[c : 2 * c]

        rope = FluxRope(tuple(cfg.axes_dims_rope), theta=10000, text_len=text_tokens.shape[1])
        backbone = FluxBackbone(transformer.x_embedder, text_tokens, rope, kept)
        return FeatureParts(backbone=backbone, shift=shift, scale=scale, norm_eps=1e-6)


# -- registry names ------------------------------------------------------------------------------

register_model(
    ModelSpec(
        name="flux",
        family="flux",
        hf_id="black-forest-labs/FLUX.1-dev",
        layer=Default(28, "paper (SPair-71k setting)"),
        timestep=Default(260, "paper"),
        image_size=Default(640, "paper"),
        discard=Default((154, 1446), "paper"),
        ensemble=Default(8, "paper"),
        guidance=Default(3.5, "FLUX.1-dev pipeline default"),
        hidden_size=3072,
        text_max_length=512,
        signature=(fact_equals("guidance_embeds", True, missing=False),),  # guidance-distilled
        gated=True,
    )
)
register_model(
    ModelSpec(
        name="flux-schnell",
        family="flux",
        hf_id="black-forest-labs/FLUX.1-schnell",
        layer=Default(28, "guessed: FLUX.1-dev's paper setting"),
        timestep=Default(260, "guessed: FLUX.1-dev's paper setting"),
        image_size=Default(640, "paper"),
        discard=Default((154, 1446), "guessed: FLUX.1-dev's channels (same base model)"),
        ensemble=Default(8, "paper"),
        guidance=None,
        hidden_size=3072,
        text_max_length=256,
        signature=(fact_equals("guidance_embeds", False, missing=False),),  # timestep-distilled, no guidance
    )
)


# flux-mini (train_mini.py): a small FLUX trained on synthetic shapes, shipped in exporter/builtin/flux-mini/.
MINI_LAYER, MINI_TIMESTEP = 5, 300


def _build_flux_tiny(path: str) -> None:
    from ..tiny import build_flux_tiny

    build_flux_tiny(path)


register_model(
    ModelSpec(
        name="flux-mini",
        family="flux",
        hf_id=None,
        layer=Default(MINI_LAYER, "chosen on a validation benchmark (creatures, seed 7); see docs/flux-mini.md"),
        timestep=Default(MINI_TIMESTEP, "chosen on a validation benchmark (creatures, seed 7)"),
        image_size=Default(192, "flux-mini's training size"),
        discard=Default((), "none: ditf-detect-massive finds no massive channels in flux-mini (docs/flux-mini.md)"),
        ensemble=Default(4, "flux-mini: small for the CPU"),
        guidance=None,
        hidden_size=128,
        text_max_length=16,
        shipped="builtin/flux-mini",
    )
)
register_model(
    ModelSpec(
        name="flux-tiny",
        family="flux",
        hf_id=None,
        layer=Default(3, "built-in test model: first single block"),
        timestep=Default(260, "paper"),
        image_size=Default(256, "built-in test model: small for CPU"),
        discard=Default((7, 41), "planted by construction in flux-tiny"),
        ensemble=Default(2, "built-in test model: small for CPU"),
        guidance=Default(3.5, "FLUX.1-dev pipeline default"),
        hidden_size=64,
        text_max_length=32,
        builtin=_build_flux_tiny,
    )
)

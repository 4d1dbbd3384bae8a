"""Wan 2.1 text-to-video (WanTransformer3DModel + AutoencoderKLWan + umT5): a video DiT on spacetime tokens.

Layer k is `blocks[k]` (one block list). Every block attends over all tokens of the clip (frames x rows x
columns, 3-D RoPE) and cross-attends to the umT5 prompt. Modulation: the time embedding's `time_proj` gives
t6 = [6, C] for the whole model; block k adds its own `scale_shift_table` and chunks (shift_msa, scale_msa,
gate_msa, c_shift, c_scale, c_gate). With the timestep fixed, t6 is a constant (baked); block K's shift and
scale are (table_K + t6)[0] and [1]. Flow matching: x_t = (1 - t) x0 + t noise, the transformer takes t in
[0, 1000] (the scheduler's flow shift only chooses which t a sampler visits; here --timestep names t itself).

The VAE is causal 3-D (AutoencoderKLWan): frame 0 alone, then groups of 4 frames per latent frame, so a clip
of F = 1 + 4k frames gives 1 + k latent frames; features come out per latent frame and the runtime maps
video frame f to latent frame ceil(f / 4). diffusers encodes chunk by chunk (1 frame, then 4 at a time) with
per-conv caches of the previous frames; every norm in this encoder is per position (RMS over channels) and
its attention is per frame, so that loop equals one causal pass over the whole clip, which is what
`WanClipEncoder` runs (one graph for any clip length, tested against diffusers' own encode).
Latent scaling: (mean - latents_mean) / latents_std per channel (vae/config.json), as WanPipeline uses them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ExportInputError
from ..registry import Default, ModelSpec, fact_equals, register, register_model
from .base import ExportOptions, FeatureParts, SingleStackAdapter

TOP_LEVEL = ("patch_embedding.", "condition_embedder.")
# Wan 2.1's clips: 81 frames (the model cards' 5 s at 16 fps), 21 latent frames
WAN_MAX_FRAMES = 81
TEMPORAL_STRIDE = 4


class _WholeClipTimeDownsample(nn.Module):
    """A `downsample3d` WanResample over the whole clip: the spatial conv per frame, then frame 0 kept and the
    stride-2 temporal conv over windows (0,1,2), (2,3,4), ... (what the chunked cache loop computes)."""

    def __init__(self, resample: nn.Module):
        super().__init__()
        self.inner = resample

    def forward(self, x: torch.Tensor, feat_cache=None, feat_idx=None) -> torch.Tensor:
        x = self.inner(x)  # no cache: the spatial part only
        return torch.cat([x[:, :, :1], self.inner.time_conv(x)], dim=2)


class WanClipEncoder(nn.Module):
    """AutoencoderKLWan's encoder on a whole clip: [B, F, 3, H, W], F = 1 + 4k -> scaled latent mean
    [B, 1 + k, z, H/8, W/8]."""

    takes_clips = True

    def __init__(self, vae: nn.Module):
        super().__init__()
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample

        if getattr(vae.config, "patch_size", None) is not None or getattr(vae.config, "is_residual", False):
            raise ExportInputError("this AutoencoderKLWan is Wan 2.2's (patchified, residual); ditf exports Wan 2.1's")
        encoder = vae.encoder
        for i, layer in enumerate(encoder.down_blocks):
            if isinstance(layer, WanResample) and layer.mode == "downsample3d":
                encoder.down_blocks[i] = _WholeClipTimeDownsample(layer)
        self.encoder = encoder
        self.quant_conv = vae.quant_conv
        z = int(vae.config.z_dim)
        self.latent_channels = z
        self.register_buffer("mean", torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(clip.transpose(1, 2)))  # [B, 2z, 1 + k, h, w]
        mean = moments[:, : self.latent_channels]
        return ((mean - self.mean) * self.inv_std).transpose(1, 2)


def rope_tables(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """WanRotaryPosEmbed's cos/sin tables (diffusers' own function, float64), as float32 [max_seq_len, d] per axis
    (frames, rows, columns): the graph slices them, so positions never exceed max_seq_len."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    h_dim = w_dim = 2 * (head_dim // 6)
    tables = []
    for dim in (head_dim - h_dim - w_dim, h_dim, w_dim):
        cos, sin = get_1d_rotary_pos_embed(dim, max_seq_len, theta, use_real=True, repeat_interleave_real=True,
                                           freqs_dtype=torch.float64)
        tables += [cos.float(), sin.float()]
    return tuple(tables)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's interleaved rotation without its in-place strided writes (exports as plain ops)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)


class ExportWanAttnProcessor:
    """WanAttnProcessor (text-to-video: no image keys) as plain ops: projections, RMS q/k norm, RoPE, SDPA."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(context).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q, k = rotate(q, *rotary_emb), rotate(k, *rotary_emb)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return attn.to_out[0](out.transpose(1, 2).flatten(2, 3))


class WanBackbone(nn.Module):
    """x_t [N, 1 + k, z, h, w] -> tokens entering block K, [N, 1 + k, h/2 * w/2, C]; t6 and the prompt baked."""

    def __init__(self, patch_embedding: nn.Module, t6: torch.Tensor, caption: torch.Tensor,
                 tables: tuple[torch.Tensor, ...], blocks: list[nn.Module]):
        super().__init__()
        self.patch_embedding = patch_embedding
        self.register_buffer("t6", t6.detach().clone())  # [1, 6, C]
        self.register_buffer("caption", caption.detach().clone())  # text_embedder(umT5), [1, L, C]
        for name, table in zip(("cos_f", "sin_f", "cos_h", "sin_h", "cos_w", "sin_w"), tables):
            self.register_buffer(name, table.contiguous())
        self.blocks = nn.ModuleList(blocks)
        for block in self.blocks:
            block.attn1.set_processor(ExportWanAttnProcessor())
            block.attn2.set_processor(ExportWanAttnProcessor())

    def _rope(self, f: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        def grid(tf, th, tw):
            parts = (tf[:f].view(f, 1, 1, -1).expand(f, h, w, -1), th[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                     tw[:w].view(1, 1, w, -1).expand(f, h, w, -1))
            return torch.cat(parts, dim=-1).reshape(1, f * h * w, 1, -1)

        return grid(self.cos_f, self.cos_h, self.cos_w), grid(self.sin_f, self.sin_h, self.sin_w)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        n, f = x_t.shape[0], x_t.shape[1]
        p_h, p_w = self.patch_embedding.kernel_size[1:]
        gh, gw = x_t.shape[-2] // p_h, x_t.shape[-1] // p_w
        rope = self._rope(f, gh, gw)
        hidden = self.patch_embedding(x_t.transpose(1, 2)).flatten(2).transpose(1, 2)  # [N, F*gh*gw, C]
        caption = self.caption.expand(n, -1, -1)
        for block in self.blocks:
            hidden = block(hidden, caption, self.t6, rope)
        return hidden.unflatten(1, (f, gh * gw))


@register("wan")
class WanAdapter(SingleStackAdapter):
    transformer_class_name = "WanTransformer3DModel"
    noising = "flow-matching"
    text_attention = "cross"
    blocks_prefix = "blocks."
    top_level_weights = TOP_LEVEL

    @classmethod
    def handles(cls, config: dict[str, Any]) -> bool:
        # text-to-video only: image-to-video models add CLIP image keys to every cross-attention
        return (super().handles(config) and config.get("image_dim") is None
                and config.get("added_kv_proj_dim") is None)

    def head_weight(self, key: str) -> bool:
        return key.endswith(".scale_shift_table")

    def patch_size(self, config: dict[str, Any]) -> int:
        p = tuple(int(v) for v in config.get("patch_size", (1, 2, 2)))
        if p[0] != 1 or p[1] != p[2]:
            raise ExportInputError(f"Wan patch_size {list(p)}: ditf exports (1, p, p) patches (Wan 2.1's (1, 2, 2))")
        return p[1]

    def max_grid(self, config: dict[str, Any]) -> int:
        return int(config.get("rope_max_seq_len", 1024))  # the RoPE tables' positions per axis

    def max_frames(self, config: dict[str, Any]) -> int:
        # the RoPE table also bounds the latent frames; the model cards' clips are 81 frames
        return min(WAN_MAX_FRAMES, 1 + TEMPORAL_STRIDE * (self.max_grid(config) - 1))

    # -- the 3-D VAE ---------------------------------------------------------------------------------
    def vae_stride(self, vae_config: dict[str, Any]) -> int:
        return 2 ** sum(1 for _ in vae_config.get("dim_mult", (1, 2, 4, 4))[:-1])

    def latent_channels(self, vae_config: dict[str, Any]) -> int:
        return int(vae_config.get("z_dim", 16))

    def frame_stride(self, vae_config: dict[str, Any]) -> int:
        return 2 ** sum(bool(t) for t in vae_config.get("temperal_downsample", (False, True, True)))

    def latent_encoder(self, source) -> nn.Module:
        from diffusers import AutoencoderKLWan

        folder = source.path / "vae"
        if not folder.is_dir():
            raise ExportInputError(f"{source.path} has no vae/ folder; the feature graph starts from pixels and needs it")
        vae = AutoencoderKLWan.from_pretrained(str(folder), use_safetensors=True, torch_dtype=torch.float32)
        return WanClipEncoder(vae.eval().requires_grad_(False))

    def workload(self, config, vae_config, conditioning):
        from ditf_runtime.manifest import Workload

        embeds = conditioning.get("prompt_embeds")
        dim = int(vae_config.get("base_dim", 96))
        return Workload(
            heads=int(config["num_attention_heads"]), head_dim=int(config["attention_head_dim"]),
            text_tokens=0 if embeds is None else int(embeds.shape[1]), text_attention="cross",
            ffn_dim=int(config["ffn_dim"]),
            vae_channels=tuple(dim * int(m) for m in vae_config.get("dim_mult", (1, 2, 4, 4))),
            vae_attention=True, spacetime_attention=True,
        )

    # -- conditioning --------------------------------------------------------------------------------
    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        from ..text import check_prompt_embeds, encode_wan_umt5

        d_text = int(config["text_dim"])
        if options.prompt_embeds is not None:
            return check_prompt_embeds(options.prompt_embeds, d_text, None)
        return check_prompt_embeds(encode_wan_umt5(source, options.prompt or "", options.text_max_length or 512),
                                   d_text, None)

    @torch.no_grad()
    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        embedder = transformer.condition_embedder
        dtype = embedder.time_proj.weight.dtype
        t = torch.tensor([float(options.timestep)], dtype=torch.float32)
        _, t6, caption, _ = embedder(t, conditioning["prompt_embeds"].to(dtype))
        c = int(transformer.config.num_attention_heads) * int(transformer.config.attention_head_dim)
        t6 = t6.unflatten(1, (6, c)).float()  # [1, 6, C]
        blocks = list(transformer.blocks)
        head = blocks[options.layer]
        modulation = head.scale_shift_table.float() + t6  # the block's own arithmetic, in float32
        max_seq = int(transformer.config.rope_max_seq_len)
        tables = rope_tables(int(transformer.config.attention_head_dim), max_seq)
        notes = (
            f"video: clips of 1 + 4k frames, at most {min(WAN_MAX_FRAMES, 1 + TEMPORAL_STRIDE * (max_seq - 1))}; "
            "the causal 3-D VAE gives 1 + k latent frames (frame 0 alone, then 4 frames each); video frame f "
            "reads latent frame ceil(f / 4)",
            f"position embedding: 3-D RoPE tables (float32 of diffusers' float64) up to {max_seq} positions per axis",
            "timestep: t itself (the transformer's input, in [0, 1000]); the scheduler's flow shift is not applied",
        )
        backbone = WanBackbone(transformer.patch_embedding, t6, caption, tables, blocks[: options.layer])
        return FeatureParts(backbone=backbone, shift=modulation[0, 0], scale=modulation[0, 1],
                            norm_eps=float(transformer.config.eps), notes=notes)


# -- registry names ------------------------------------------------------------------------------------
# No DiTF numbers exist for Wan: the layer is a guess (the middle of the stack, where DIFT-style video
# features are usually read), the timestep a guess in the same range as FLUX's t = 260 for correspondence.

_WAN_COMMON = dict(
    family="wan",
    timestep=Default(261, "guessed: as the other families' correspondence timesteps"),
    image_size=Default(832, "model card: 480p clips (832 x 480)"),
    discard=Default((), "unknown: detect with --discard auto / ditf-detect-massive"),
    ensemble=Default(1, "guessed: a clip already carries many frames; raise --ensemble for steadier maps"),
    guidance=None,
    text_max_length=512,
)

register_model(ModelSpec(
    name="wan2.1-1.3b", hf_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    layer=Default(15, "guessed: the middle of 30 blocks"), hidden_size=1536,
    signature=(fact_equals("num_layers", 30),), **_WAN_COMMON,
))
register_model(ModelSpec(
    name="wan2.1-14b", hf_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
    layer=Default(20, "guessed: the middle of 40 blocks"), hidden_size=5120,
    signature=(fact_equals("num_layers", 40),), **_WAN_COMMON,
))


def _build_wan_tiny(path: str) -> None:
    from ..tiny import build_wan_tiny

    build_wan_tiny(path)


register_model(ModelSpec(
    name="wan-tiny", family="wan", hf_id=None,
    layer=Default(2, "built-in test model: the input of block 2 of 3"),
    timestep=Default(261, "as wan2.1-1.3b"),
    image_size=Default(128, "built-in test model: small for CPU"),
    discard=Default((5, 40), "planted by construction in wan-tiny"),
    ensemble=Default(1, "as wan2.1-1.3b"),
    guidance=None,
    hidden_size=48,
    text_max_length=32,
    builtin=_build_wan_tiny,
))

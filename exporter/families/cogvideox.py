"""CogVideoX 1.0 text-to-video (CogVideoXTransformer3DModel + AutoencoderKLCogVideoX + T5): a video DiT whose blocks
attend jointly over the prompt's tokens and the clip's spacetime tokens.

Layer k is `transformer_blocks[k]`. Every block carries two streams (text, video) through one attention; its
`norm1` / `norm2` (CogVideoXLayerNormZero) modulate both with `linear(silu(temb))`. With the timestep fixed those
are constants (baked); block K's video shift and scale, folded with its LayerNorm's own affine weights, are the
feature head's. Noise: DDPM-style, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise with abar from the pipeline's
own scheduler (CogVideoXDDIMScheduler: SNR-shifted, zero-terminal-SNR betas); the model predicts v, which does not
change x_t. Position: CogVideoX-2b adds 3-D sin-cos embeddings (a function of each token's own frame, row and
column: per-axis tables, sliced); CogVideoX-5b rotates q and k with a 3-D RoPE whose spatial positions the
pipeline spreads over a crop of the model's base grid that depends on the grid's aspect ratio
(`get_resize_crop_region_for_grid`): the graph gathers that crop's start and step for its own grid from a table
made at export with diffusers' own functions, so one graph serves every size up to the table's.

The VAE is causal 3-D with 4x temporal compression: a clip of F = 1 + 4k frames gives 1 + k latent frames, and
features come out per latent frame (the runtime maps video frame f to latent frame ceil(f / 4)). diffusers'
`AutoencoderKLCogVideoX.encode` runs the encoder on chunks of 8 frames (the first chunk takes the remainder too:
49 frames = 9 + 5 x 8) with per-conv caches of the previous chunk's last frames. Its convolutions and temporal
pooling therefore equal one causal pass over the clip, but its GroupNorms take their statistics over each chunk
only. `CogVideoXClipEncoder` runs the whole clip once and computes every GroupNorm's statistics per chunk (which
chunk each frame, and after each temporal pooling each latent frame, belongs to, as a one-hot matrix), so it
equals diffusers' chunked encode for every clip length up to the limit (tested against `encode` itself).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ExportInputError
from ..registry import Default, ModelSpec, fact_equals, register, register_model
from .base import ExportOptions, FeatureParts, SingleStackAdapter, bake_adaln
from .wan import rotate

TOP_LEVEL = ("patch_embed.", "time_embedding.")
# CogVideoX 1.0's clips: 49 frames (6 s at 8 fps), 13 latent frames; the config's sample_frames says so
COGVIDEOX_MAX_FRAMES = 49
TEMPORAL_STRIDE = 4
# Token grids up to 128 per side (2048 px at stride 16): the size of the sin-cos and RoPE-crop tables. The released
# models were trained at 30 x 45 tokens (480 x 720); larger grids extrapolate (2b) or are spread over the same
# base crop more densely (5b), as the pipeline would do.
MAX_GRID = 128


# -- the VAE encoder on a whole clip ---------------------------------------------------------------------------
def _causal_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CogVideoXCausalConv3d on a whole clip without a cache: frame 0 repeated (kernel - 1) times in front (what
    its first chunk does), then the plain Conv3d (not CogVideoXSafeConv3d's size-dependent split, the same sum)."""
    if conv.pad_mode == "replicate":
        raise ExportInputError("this AutoencoderKLCogVideoX pads its causal convs by replication; ditf exports "
                               "CogVideoX 1.0's ('first')")
    k = conv.time_kernel_size
    if k > 1:
        x = torch.cat([x[:, :, :1]] * (k - 1) + [x], dim=2)
    return nn.Conv3d.forward(conv.conv, x)


def _chunk_group_norm(norm: nn.GroupNorm, x: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
    """nn.GroupNorm with statistics per chunk of frames: x [B, C, T, ...], chunks [T, N] one-hot (frame t is in
    chunk n). Every frame has the same number of elements, so a chunk's mean is the mean of its frames' means."""
    b, c = x.shape[0], x.shape[1]
    g = norm.num_groups
    xg = x.unflatten(1, (g, c // g))  # [B, G, C/G, T, H, W]
    dims = (2, 4, 5)
    frames_per_chunk = chunks.sum(0).clamp(min=1.0)  # unused chunks: 0 frames, kept finite

    def per_frame(stat: torch.Tensor) -> torch.Tensor:  # [B, G, T] frame stats -> their chunk's, per frame
        return ((stat @ chunks) / frames_per_chunk) @ chunks.transpose(0, 1)

    mean = per_frame(xg.mean(dim=dims))
    centred = xg - mean[:, :, None, :, None, None]
    var = per_frame((centred * centred).mean(dim=dims))
    y = (centred * torch.rsqrt(var + norm.eps)[:, :, None, :, None, None]).flatten(1, 2)
    if norm.affine:
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = y * norm.weight.view(shape) + norm.bias.view(shape)
    return y


class CogVideoXClipEncoder(nn.Module):
    """AutoencoderKLCogVideoX's encoder on a whole clip with diffusers' per-chunk GroupNorm statistics:
    [B, F, 3, H, W], F = 1 + 4k <= max_frames -> scaled latent mean [B, 1 + k, c, H/8, W/8]."""

    takes_clips = True

    def __init__(self, vae: nn.Module, max_frames: int):
        super().__init__()
        from diffusers.models.downsampling import CogVideoXDownsample3D

        if getattr(vae.config, "invert_scale_latents", False):
            raise ExportInputError("this AutoencoderKLCogVideoX inverts its latent scale (CogVideoX 1.5); ditf exports "
                                   "CogVideoX 1.0's VAE")
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.chunk_frames = int(vae.num_sample_frames_batch_size)  # 8 in diffusers 0.42
        self.max_chunks = max(max_frames // self.chunk_frames, 1)
        for block in self.encoder.down_blocks:
            for down in block.downsamplers or ():
                if not isinstance(down, CogVideoXDownsample3D):
                    raise ExportInputError(f"unexpected downsampler {type(down).__name__} in AutoencoderKLCogVideoX")

    def _chunks(self, frames: int) -> torch.Tensor:
        """[F, max_chunks] one-hot: diffusers' encode takes chunks [0, 8 + r), [8 + r, 16 + r), ... with r = F mod 8
        (F < 8: one chunk), so frame t is in chunk max(t - r, 0) // 8."""
        t = torch.arange(frames)
        r = (t[-1:] + 1) % self.chunk_frames
        ids = (t - r).clamp(min=0) // self.chunk_frames
        return (ids[:, None] == torch.arange(self.max_chunks)[None, :]).float()

    def _resnet(self, resnet: nn.Module, x: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """CogVideoXResnetBlock3D.forward (no temb, no spatial norm), whole clip, per-chunk GroupNorm."""
        h = _causal_conv(resnet.conv1, resnet.nonlinearity(_chunk_group_norm(resnet.norm1, x, chunks)))
        h = resnet.dropout(resnet.nonlinearity(_chunk_group_norm(resnet.norm2, h, chunks)))
        h = _causal_conv(resnet.conv2, h)
        if resnet.in_channels != resnet.out_channels:
            shortcut = resnet.conv_shortcut
            x = _causal_conv(shortcut, x) if resnet.use_conv_shortcut else nn.Conv3d.forward(shortcut, x)
        return h + x

    @staticmethod
    def _downsample(down: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """CogVideoXDownsample3D on the whole clip: every chunk but the first has an even length and the first an odd
        one (the clip has 1 + 4k frames), so frame 0 is kept and the frames after it are averaged in pairs, the
        same pairs as chunk by chunk; then the stride-2 spatial conv per frame."""
        if down.compress_time:
            rest = x[:, :, 1:]
            x = torch.cat([x[:, :, :1], rest.unflatten(2, (-1, 2)).mean(dim=3)], dim=2)
        x = F.pad(x, (0, 1, 0, 1))
        b, f = x.shape[0], x.shape[2]
        y = down.conv(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (b, f)).transpose(1, 2)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        x = clip.transpose(1, 2)  # [B, 3, F, H, W]
        chunks = self._chunks(x.shape[2])
        enc = self.encoder
        h = _causal_conv(enc.conv_in, x)
        for block in enc.down_blocks:
            for resnet in block.resnets:
                h = self._resnet(resnet, h, chunks)
            for down in block.downsamplers or ():
                h = self._downsample(down, h)
                if down.compress_time:  # latent frame j >= 1 pools frames 2j - 1, 2j: both in frame 2j's chunk
                    chunks = torch.cat([chunks[:1], chunks[2::2]], dim=0)
        for resnet in enc.mid_block.resnets:
            h = self._resnet(resnet, h, chunks)
        h = _causal_conv(enc.conv_out, enc.conv_act(_chunk_group_norm(enc.norm_out, h, chunks)))
        if self.quant_conv is not None:
            h = nn.Conv3d.forward(self.quant_conv, h)
        mean = h[:, : self.latent_channels]  # DiagonalGaussianDistribution's mean
        return (mean * self.scaling_factor).transpose(1, 2)


# -- position tables -------------------------------------------------------------------------------------------
def sincos_tables(dim: int, max_frames: int, max_grid: int, spatial_scale: float, temporal_scale: float):
    """get_3d_sincos_pos_embed's per-axis parts (diffusers' own 1-D function): temporal [max_frames, dim/4] and
    spatial [max_grid, 3 dim/8] (the same table for rows and columns). Token (f, i, j) gets cat(T[f], S[j], S[i])."""
    from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid

    t = torch.arange(max_frames, dtype=torch.float32) / temporal_scale
    s = torch.arange(max_grid, dtype=torch.float32) / spatial_scale
    return (get_1d_sincos_pos_embed_from_grid(dim // 4, t, output_type="pt").float(),
            get_1d_sincos_pos_embed_from_grid(3 * dim // 8, s, output_type="pt").float())


def rope_crop_table(base_h: int, base_w: int, max_grid: int) -> torch.Tensor:
    """[max_grid, max_grid, 4]: for a token grid (gh, gw), the RoPE row and column positions the CogVideoX pipeline
    uses, as (start_h, step_h, start_w, step_w): get_3d_rotary_pos_embed's
    linspace(start, stop * (g - 1) / g, g) over the crop get_resize_crop_region_for_grid gives."""
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    table = torch.zeros(max_grid, max_grid, 4, dtype=torch.float64)
    for gh in range(1, max_grid + 1):
        for gw in range(1, max_grid + 1):
            (top, left), (bottom, right) = get_resize_crop_region_for_grid((gh, gw), base_w, base_h)
            row = []
            for start, stop, g in ((top, bottom, gh), (left, right, gw)):
                end = stop * (g - 1) / g
                row += [start, (end - start) / (g - 1) if g > 1 else 0.0]
            table[gh - 1, gw - 1] = torch.tensor(row, dtype=torch.float64)
    return table.float()


def rope_inverse_frequencies(dim: int, theta: float = 10000.0) -> torch.Tensor:
    """get_1d_rotary_pos_embed's frequencies (float32, as it computes them)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32)[: dim // 2] / dim))


def _cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions[:, None] * inv_freq[None, :]
    c, s = freqs.cos(), freqs.sin()  # repeat_interleave(2) as plain ops
    return torch.stack([c, c], dim=-1).flatten(-2), torch.stack([s, s], dim=-1).flatten(-2)


class ExportCogVideoXAttnProcessor:
    """CogVideoXAttnProcessor2_0 as plain ops (RoPE on the video tokens by concatenation, not in-place writes)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        text = encoder_hidden_states.size(1)
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        q, k, v = (proj(x).unflatten(2, (attn.heads, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if image_rotary_emb is not None:
            q = torch.cat([q[:, :, :text], rotate(q[:, :, text:], *image_rotary_emb)], dim=2)
            k = torch.cat([k[:, :, :text], rotate(k[:, :, text:], *image_rotary_emb)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2, 3)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, text:], out[:, :text]


class CogVideoXBackbone(nn.Module):
    """x_t [N, 1 + k, c, h, w] -> video tokens entering block K, [N, 1 + k, h/2 * w/2, C]; the prompt's tokens
    (text_proj of the T5 states) and every block's modulation baked."""

    def __init__(self, proj: nn.Module, text: torch.Tensor, temb: torch.Tensor, blocks: list[nn.Module],
                 sincos: tuple[torch.Tensor, torch.Tensor] | None, rope: dict[str, torch.Tensor] | None):
        super().__init__()
        self.proj = proj
        self.register_buffer("text", text.detach().clone())  # [1, L, C]
        self.register_buffer("temb", temb.detach().clone())  # unused by the baked norms; the blocks take it
        self.use_rope = rope is not None
        if sincos is not None:
            self.register_buffer("pos_t", sincos[0].contiguous())
            self.register_buffer("pos_s", sincos[1].contiguous())
        if rope is not None:
            for name, value in rope.items():
                self.register_buffer(name, value.contiguous())
        self.blocks = nn.ModuleList(blocks)
        for block in self.blocks:
            block.attn1.set_processor(ExportCogVideoXAttnProcessor())

    def _sincos(self, f: int, h: int, w: int) -> torch.Tensor:
        d_t, d_s = self.pos_t.shape[-1], self.pos_s.shape[-1]
        parts = (self.pos_t[:f].view(f, 1, 1, d_t).expand(f, h, w, d_t),
                 self.pos_s[:w].view(1, 1, w, d_s).expand(f, h, w, d_s),  # columns first, as diffusers' meshgrid
                 self.pos_s[:h].view(1, h, 1, d_s).expand(f, h, w, d_s))
        return torch.cat(parts, dim=-1).reshape(1, f * h * w, -1)

    def _rope(self, f: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        span = self.crops[h - 1, w - 1]  # (start_h, step_h, start_w, step_w) for this grid
        rows = span[0] + torch.arange(h, dtype=torch.float32) * span[1]
        cols = span[2] + torch.arange(w, dtype=torch.float32) * span[3]
        (cos_h, sin_h), (cos_w, sin_w) = _cos_sin(rows, self.inv_freq_h), _cos_sin(cols, self.inv_freq_w)

        def grid(tt, th, tw):
            parts = (tt[:f].view(f, 1, 1, -1).expand(f, h, w, -1), th.view(1, h, 1, -1).expand(f, h, w, -1),
                     tw.view(1, 1, w, -1).expand(f, h, w, -1))
            return torch.cat(parts, dim=-1).reshape(f * h * w, -1)

        return grid(self.cos_t, cos_h, cos_w), grid(self.sin_t, sin_h, sin_w)

    def forward(self, x_t: torch.Tensor) -> torch.Tensor:
        n, f = x_t.shape[0], x_t.shape[1]
        tokens = self.proj(x_t.flatten(0, 1))  # [N*F, C, gh, gw]
        gh, gw = tokens.shape[-2], tokens.shape[-1]
        hidden = tokens.flatten(2).transpose(1, 2).unflatten(0, (n, f)).flatten(1, 2)  # [N, F*gh*gw, C]
        rope = None
        if self.use_rope:
            rope = self._rope(f, gh, gw)
        else:
            hidden = hidden + self._sincos(f, gh, gw)
        text = self.text.expand(n, -1, -1)
        temb = self.temb.expand(n, -1)
        for block in self.blocks:
            hidden, text = block(hidden, text, temb, image_rotary_emb=rope)
        return hidden.unflatten(1, (f, gh * gw))


@register("cogvideox")
class CogVideoXAdapter(SingleStackAdapter):
    transformer_class_name = "CogVideoXTransformer3DModel"
    noising = "variance-preserving"
    text_attention = "joint"
    blocks_prefix = "transformer_blocks."
    top_level_weights = TOP_LEVEL

    @classmethod
    def handles(cls, config: dict[str, Any]) -> bool:
        # CogVideoX 1.0 text-to-video only: 1.5 patchifies time (patch_size_t), image-to-video models add an ofs
        # embedding or learned position embeddings and take the image latent as extra channels
        return (super().handles(config) and config.get("patch_size_t") is None and not config.get("ofs_embed_dim")
                and not config.get("use_learned_positional_embeddings", False))

    def head_weight(self, key: str) -> bool:
        return ".norm1." in key  # block K's modulation linear and its LayerNorm's affine weights

    def max_grid(self, config: dict[str, Any]) -> int:
        return MAX_GRID

    def max_frames(self, config: dict[str, Any]) -> int:
        frames = int(config.get("sample_frames", COGVIDEOX_MAX_FRAMES))
        return 1 + TEMPORAL_STRIDE * max(1, (frames - 1) // TEMPORAL_STRIDE)

    def frame_stride(self, vae_config: dict[str, Any]) -> int:
        return int(vae_config.get("temporal_compression_ratio", TEMPORAL_STRIDE))

    def latent_encoder(self, source) -> nn.Module:
        import json

        from diffusers import AutoencoderKLCogVideoX

        folder = source.path / "vae"
        if not folder.is_dir():
            raise ExportInputError(f"{source.path} has no vae/ folder; the feature graph starts from pixels and needs it")
        vae = AutoencoderKLCogVideoX.from_pretrained(str(folder), use_safetensors=True, torch_dtype=torch.float32)
        config = json.loads((source.path / "transformer" / "config.json").read_text())
        return CogVideoXClipEncoder(vae.eval().requires_grad_(False), self.max_frames(config))

    def workload(self, config, vae_config, conditioning):
        from ditf_runtime.manifest import Workload

        embeds = conditioning.get("prompt_embeds")
        return Workload(
            heads=int(config["num_attention_heads"]), head_dim=int(config["attention_head_dim"]),
            text_tokens=0 if embeds is None else int(embeds.shape[1]), text_attention="joint",
            ffn_dim=4 * self.hidden_size(config),
            vae_channels=tuple(int(c) for c in vae_config["block_out_channels"]),
            vae_attention=False, spacetime_attention=True,
        )

    # -- conditioning --------------------------------------------------------------------------------
    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        from ..text import check_prompt_embeds, encode_cogvideox_t5

        d_text, length = int(config["text_embed_dim"]), int(config.get("max_text_seq_length", 226))
        if options.prompt_embeds is not None:
            embeds = check_prompt_embeds(options.prompt_embeds, d_text, None)
        else:
            embeds = check_prompt_embeds(encode_cogvideox_t5(source, options.prompt or "", length), d_text, None)
        got = int(embeds["prompt_embeds"].shape[1])
        if not config.get("use_rotary_positional_embeddings", False) and got != length:
            # the sin-cos model's position table has exactly max_text_seq_length (zero) text rows: diffusers
            # refuses any other prompt length, and so does ditf
            raise ExportInputError(f"--prompt-embeds: prompt_embeds has {got} tokens; this CogVideoX model takes "
                                   f"exactly {length} (max_text_seq_length; the pipeline pads to it)")
        return embeds

    @torch.no_grad()
    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        cfg = transformer.config
        dtype = transformer.time_embedding.linear_1.weight.dtype
        t = torch.tensor([float(options.timestep)], dtype=torch.float32)
        temb = transformer.time_embedding(transformer.time_proj(t).to(dtype))  # [1, time_embed_dim]
        blocks = list(transformer.transformer_blocks)
        for block in blocks[: options.layer]:
            bake_adaln(block.norm1, temb)
            bake_adaln(block.norm2, temb)
        head = blocks[options.layer].norm1
        shift, scale = head.linear(head.silu(temb)).float().chunk(6, dim=1)[:2]
        shift, scale = shift[0], scale[0]
        if head.norm.elementwise_affine:  # LN(x) w + b, then * (1 + scale) + shift: one LN(x) * a + c
            w, b = head.norm.weight.float(), head.norm.bias.float()
            shift, scale = b * (1 + scale) + shift, w * (1 + scale) - 1
        text = transformer.patch_embed.text_proj(conditioning["prompt_embeds"].to(dtype))
        dim = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
        max_latent = 1 + (self.max_frames(dict(cfg)) - 1) // TEMPORAL_STRIDE
        sincos = rope = None
        p = int(cfg.patch_size)
        if cfg.use_rotary_positional_embeddings:
            head_dim = int(cfg.attention_head_dim)
            dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
            from diffusers.models.embeddings import get_1d_rotary_pos_embed

            cos_t, sin_t = get_1d_rotary_pos_embed(dim_t, torch.arange(max_latent, dtype=torch.float32), use_real=True)
            rope = dict(cos_t=cos_t.float(), sin_t=sin_t.float(), inv_freq_h=rope_inverse_frequencies(dim_hw),
                        inv_freq_w=rope_inverse_frequencies(dim_hw),
                        crops=rope_crop_table(int(cfg.sample_height) // p, int(cfg.sample_width) // p, MAX_GRID))
            position = (f"position embedding: 3-D RoPE; rows and columns spread over the crop of the base grid "
                        f"{int(cfg.sample_height) // p} x {int(cfg.sample_width) // p} the pipeline chooses for each "
                        f"grid (table up to {MAX_GRID} tokens per side)")
        else:
            sincos = sincos_tables(dim, max_latent, MAX_GRID, float(cfg.spatial_interpolation_scale),
                                   float(cfg.temporal_interpolation_scale))
            position = (f"position embedding: 3-D sin-cos (spatial scale {float(cfg.spatial_interpolation_scale)}), "
                        f"tables up to {MAX_GRID} tokens per side and {max_latent} latent frames")
        notes = (
            f"video: clips of 1 + 4k frames, at most {self.max_frames(dict(cfg))}; the causal 3-D VAE gives 1 + k "
            "latent frames (its GroupNorm statistics per chunk of 8 frames, as diffusers' encode); video frame f "
            "reads latent frame ceil(f / 4)",
            position,
            "timestep: the DDPM timestep of the pipeline's scheduler (abar from scheduler_config.json, SNR shift "
            "included); the model predicts v, x_t is the usual sqrt(abar) x0 + sqrt(1 - abar) noise",
        )
        backbone = CogVideoXBackbone(transformer.patch_embed.proj, text, temb, blocks[: options.layer], sincos, rope)
        return FeatureParts(backbone=backbone, shift=shift, scale=scale, norm_eps=float(head.norm.eps), notes=notes)


# -- registry names ------------------------------------------------------------------------------------
# No DiTF numbers exist for CogVideoX: the layer is a guess (the middle of the stack), the timestep one in the
# range the image families use for correspondence.

_COG_COMMON = dict(
    family="cogvideox",
    timestep=Default(261, "guessed: as the other families' correspondence timesteps"),
    image_size=Default(720, "model card: 720 x 480 clips"),
    discard=Default((), "unknown: detect with --discard auto / ditf-detect-massive"),
    ensemble=Default(1, "guessed: a clip already carries many frames; raise --ensemble for steadier maps"),
    guidance=None,
    text_max_length=226,
)

register_model(ModelSpec(
    name="cogvideox-2b", hf_id="THUDM/CogVideoX-2b",
    layer=Default(15, "guessed: the middle of 30 blocks"), hidden_size=1920,
    signature=(fact_equals("num_layers", 30),), **_COG_COMMON,
))
register_model(ModelSpec(
    name="cogvideox-5b", hf_id="THUDM/CogVideoX-5b",
    layer=Default(21, "guessed: the middle of 42 blocks"), hidden_size=3072,
    signature=(fact_equals("num_layers", 42),), **_COG_COMMON,
))


def _build_cogvideox_tiny(path: str) -> None:
    from ..tiny import build_cogvideox_tiny

    build_cogvideox_tiny(path)


register_model(ModelSpec(
    name="cogvideox-tiny", family="cogvideox", hf_id=None,
    layer=Default(2, "built-in test model: the input of block 2 of 3"),
    timestep=Default(261, "as cogvideox-2b"),
    image_size=Default(128, "built-in test model: small for CPU"),
    discard=Default((6, 45), "planted by construction in cogvideox-tiny"),
    ensemble=Default(1, "as cogvideox-2b"),
    guidance=None,
    hidden_size=64,
    text_max_length=12,
    builtin=_build_cogvideox_tiny,
))

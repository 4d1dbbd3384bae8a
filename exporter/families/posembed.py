"""Patch embeddings with sin-cos position tables that export for any (dynamic, non-square) token grid.

Two traps in diffusers' `PatchEmbed` (docs/DESIGN.md, "Export traps"):
- SD3 (`pos_embed_max_size`): the centre crop of the stored table exports wrongly when the token grid
  has an odd height or width (onnxruntime fails on a broadcast at run time). Here the crop is an
  index_select of the flattened table with indices computed in the graph from the dynamic grid size.
- PixArt / DiT (no max size): whenever the grid differs from `sample_size`, diffusers rebuilds the
  table in float64 with positions `i / (g / base_size) / interpolation_scale`, which depend on the grid
  side g. Here the table is precomputed once, with diffusers' own function, for every g up to
  `max_grid` and stored as float32 (bit-identical to diffusers' `.float()` of its float64 table); the
  graph gathers the rows of its g.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid
from torch import nn

# Largest token-grid side the PixArt/DiT tables cover: 128 tokens = 2048 px at stride 16.
MAX_GRID = 128


def _project(patch_embed: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    tokens = patch_embed.proj(latent).flatten(2).transpose(1, 2)  # [N, C, gh, gw] -> [N, gh*gw, C]
    if getattr(patch_embed, "norm", None) is not None:
        tokens = patch_embed.norm(tokens)
    return tokens


class CroppedPatchEmbed(nn.Module):
    """SD3's PatchEmbed: conv patchify, plus the centre crop of the stored [1, P*P, C] table by gather."""

    def __init__(self, patch_embed: nn.Module):
        super().__init__()
        self.proj = patch_embed.proj
        self.norm = getattr(patch_embed, "norm", None)
        self.patch_size = int(patch_embed.patch_size)
        self.max_size = int(patch_embed.pos_embed_max_size)
        self.register_buffer("table", patch_embed.pos_embed.detach()[0].clone())  # [P*P, C]

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        gh, gw = latent.shape[-2] // self.patch_size, latent.shape[-1] // self.patch_size
        top, left = (self.max_size - gh) // 2, (self.max_size - gw) // 2
        rows = torch.arange(gh, device=latent.device) + top
        cols = torch.arange(gw, device=latent.device) + left
        index = (rows[:, None] * self.max_size + cols[None, :]).reshape(-1)
        pos = torch.index_select(self.table, 0, index)
        return (_project(self, latent) + pos[None]).to(latent.dtype)


class SinCosPatchEmbed(nn.Module):
    """PixArt's / DiT's PatchEmbed: conv patchify plus the grid-dependent sin-cos table, gathered.

    diffusers' layout for token (i, j) of a gh x gw grid: the first C/2 channels encode the column j
    (scaled by gw), the last C/2 the row i (scaled by gh), both with the same 1-D function.
    """

    def __init__(self, patch_embed: nn.Module, max_grid: int = MAX_GRID):
        super().__init__()
        self.proj = patch_embed.proj
        self.norm = getattr(patch_embed, "norm", None)
        self.patch_size = int(patch_embed.patch_size)
        self.max_grid = max_grid
        dim = int(self.proj.out_channels)
        base, scale = patch_embed.base_size, patch_embed.interpolation_scale
        rows = []
        for g in range(1, max_grid + 1):
            # exactly diffusers' get_2d_sincos_pos_embed: float32 positions, float64 sin/cos, then .float()
            pos = torch.arange(g, dtype=torch.float32) / (g / base) / scale
            rows.append(get_1d_sincos_pos_embed_from_grid(dim // 2, pos, output_type="pt").float())
        self.register_buffer("table", torch.cat(rows).contiguous())  # [G(G+1)/2, C/2]; rows of side g at g(g-1)/2

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        gh, gw = latent.shape[-2] // self.patch_size, latent.shape[-1] // self.patch_size
        row_index = torch.arange(gh, device=latent.device) + (gh * (gh - 1)) // 2
        col_index = torch.arange(gw, device=latent.device) + (gw * (gw - 1)) // 2
        rows = torch.index_select(self.table, 0, row_index)  # [gh, C/2]
        cols = torch.index_select(self.table, 0, col_index)  # [gw, C/2]
        half = rows.shape[-1]
        pos = torch.cat([cols[None, :, :].expand(gh, gw, half), rows[:, None, :].expand(gh, gw, half)], dim=-1)
        return (_project(self, latent) + pos.reshape(gh * gw, 2 * half)[None]).to(latent.dtype)

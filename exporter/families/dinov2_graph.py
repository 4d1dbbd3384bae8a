"""The DINOv2 feature graph (export source and parity reference), built from transformers' own modules.

Position embeddings: transformers interpolates its square table (P x P positions, 37 x 37 for the 518-px
checkpoints) to the token grid at run time, bicubic (antialiased in the registers model), a different
computation for every grid. Both kinds are linear and separable: for a grid side g the interpolation along
one axis is a fixed [g, P] matrix. `PositionTable` holds those matrices for every side 1..max_grid, read
off transformers' own `interpolate_pos_encoding` (so its exact arithmetic, whatever the version), and the
graph gathers the two it needs by index (like the sin-cos tables of families/posembed.py) and applies them
with two MatMuls: any H, W up to max_grid tokens through one dynamic graph, no Resize op whose cubic
border rules differ between backends.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..feature_graph import DiscardingHead


class PositionTable(nn.Module):
    """transformers' `interpolate_pos_encoding` for token grids up to `max_grid` per side.

    Row r of `row_weights` at offset g(g-1)/2 is output row r of a g-row grid: its weights over the P stored
    rows (likewise `col_weights` for columns). pos[y, x] = sum_ij Wy[y, i] Wx[x, j] table[i, j].
    """

    def __init__(self, embeddings: nn.Module, max_grid: int):
        super().__init__()
        stored = embeddings.position_embeddings.detach().float()  # [1, 1 + P*P, C]
        positions = stored.shape[1] - 1
        side = int(round(positions**0.5))
        if side * side != positions:
            raise ValueError(f"position table of {positions} entries is not square")
        self.side, self.max_grid, self.channels = side, int(max_grid), int(stored.shape[-1])
        self.register_buffer("class_position", stored[:, :1].clone())  # [1, 1, C]
        # [(j, c), i] = table[i, j, c]: the constant is the MatMul's *first* operand, so INT8 (which quantizes
        # MatMuls with a constant second operand, linear layers) leaves the interpolation in FP32
        table = stored[0, 1:].reshape(side, side, self.channels)
        self.register_buffer("grid", table.permute(1, 2, 0).reshape(side * self.channels, side).contiguous())
        rows, cols = _interpolation_weights(embeddings, side, self.max_grid)
        self.register_buffer("row_weights", rows)  # [G(G+1)/2, P]
        self.register_buffer("col_weights", cols)

    def _weights(self, table: torch.Tensor, cells: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        index = torch.arange(cells, device=like.device) + (cells * (cells - 1)) // 2
        return torch.index_select(table, 0, index)  # [cells, P]

    def forward(self, grid_h, grid_w, like: torch.Tensor) -> torch.Tensor:
        """[1, 1 + grid_h * grid_w, C]: the class position, then the grid's positions in row-major order."""
        wy = self._weights(self.row_weights, grid_h, like)  # [gh, P]
        wx = self._weights(self.col_weights, grid_w, like)  # [gw, P]
        along_rows = (self.grid @ wy.transpose(0, 1)).reshape(self.side, self.channels, grid_h)  # [P(j), C, gh]
        both = along_rows.permute(2, 1, 0) @ wx.transpose(0, 1)  # [gh, C, gw]
        positions = both.permute(0, 2, 1).reshape(1, grid_h * grid_w, self.channels)
        return torch.cat([self.class_position, positions], dim=1)

    @torch.no_grad()
    def verify_against(self, embeddings: nn.Module, tolerance: float = 1e-5) -> float:
        """Every grid side 1..max_grid (as rows and as columns) against `embeddings.interpolate_pos_encoding`
        with the real table; returns the largest relative error, raises past `tolerance`."""
        worst = 0.0
        for g in range(1, self.max_grid + 1):
            other = self.max_grid + 1 - g  # each side once as rows and once as columns
            for gh, gw in ((g, other), (other, g)) if g != other else ((g, g),):
                theirs = embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + gh * gw, self.channels),
                                                             gh * _patch(embeddings), gw * _patch(embeddings))
                ours = self(gh, gw, theirs)
                scale = float(theirs.abs().max())
                worst = max(worst, float((ours - theirs.float()).abs().max()) / max(scale, 1e-30))
        if worst > tolerance:
            raise RuntimeError(f"position-embedding tables differ from transformers' interpolation by "
                               f"{worst:.2e} (relative) > {tolerance:g}")
        return worst


def _patch(embeddings: nn.Module) -> int:
    size = embeddings.patch_embeddings.patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@torch.no_grad()
def _interpolation_weights(embeddings: nn.Module, side: int, max_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D interpolation matrices of every grid side, read off the model's own interpolate_pos_encoding.

    A probe of the same embeddings class with `side` channels carries a one-hot position table: position
    (i, j) holds e_i (rows) or e_j (columns). Interpolated to (g, side) (or (side, g)), the other axis keeps
    its size, which is the identity, so the output at (y, .) is row y of the g-row weight matrix.
    """
    config = copy.deepcopy(embeddings.config)
    config.hidden_size = side
    probe = type(embeddings)(config).eval()
    patch = _patch(embeddings)
    eye = torch.eye(side)
    tables = []
    for one_hot in (eye[:, None, :].expand(side, side, side), eye[None, :, :].expand(side, side, side)):
        stored = torch.cat([torch.zeros(1, 1, side), one_hot.reshape(1, side * side, side)], dim=1)
        probe.position_embeddings = nn.Parameter(stored.clone(), requires_grad=False)
        rows = []
        for g in range(1, max_grid + 1):
            gh, gw = (g, side) if len(tables) == 0 else (side, g)
            out = probe.interpolate_pos_encoding(torch.zeros(1, 1 + gh * gw, side), gh * patch, gw * patch)
            grid = out[0, 1:].reshape(gh, gw, side).float()
            rows.append(grid[:, 0] if len(tables) == 0 else grid[0])  # [g, side]
        tables.append(torch.cat(rows).contiguous())
    return tables[0], tables[1]


class TokenHead(DiscardingHead):
    """Zero the discarded channels, then (for the default feature) the model's own final LayerNorm."""

    def __init__(self, channels: int, norm: nn.Module | None, discard: tuple[int, ...]):
        super().__init__(channels, discard)
        self.norm = norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens * self.keep
        return x if self.norm is None else self.norm(x)


class Dinov2FeatureGraph(nn.Module):
    """image [B, 3, H, W] in [-1, 1] -> features [B, C, H/14, W/14] (H, W multiples of 14, at most
    max_grid * 14): patch tokens of hidden_states[K], after the final LayerNorm when `final_norm`."""

    def __init__(self, model: nn.Module, mean, std, *, final_norm: bool, discard: tuple[int, ...], max_grid: int):
        super().__init__()
        embeddings = model.embeddings
        self.patch_embed = embeddings.patch_embeddings.projection
        self.patch = _patch(embeddings)
        self.cls_token = embeddings.cls_token
        self.register_tokens = getattr(embeddings, "register_tokens", None)  # [1, R, C] in the registers model
        self.positions = PositionTable(embeddings, max_grid)
        self.layers = model.encoder.layer  # already truncated to layers 0 .. K-1
        channels = int(self.cls_token.shape[-1])
        self.head = TokenHead(channels, model.layernorm if final_norm else None, discard)
        mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        # [-1, 1] -> [0, 1] -> (x - mean) / std, as one affine map per channel
        self.register_buffer("pixel_scale", (0.5 / std).reshape(1, 3, 1, 1))
        self.register_buffer("pixel_shift", ((0.5 - mean) / std).reshape(1, 3, 1, 1))

    def raw_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens of hidden_states[K], before discard and final norm: [B, N, C]."""
        pixels = image * self.pixel_scale + self.pixel_shift
        grid_h, grid_w = image.shape[-2] // self.patch, image.shape[-1] // self.patch
        patches = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # [B, N, C]
        batch = patches.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), patches], dim=1)
        tokens = tokens + self.positions(grid_h, grid_w, tokens)
        extra = 1
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch, -1, -1)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
            extra += registers.shape[1]
        for layer in self.layers:
            tokens = layer(tokens, None)
        return tokens[:, extra:]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        grid_h, grid_w = image.shape[-2] // self.patch, image.shape[-1] // self.patch
        feats = self.head(self.raw_tokens(image))  # [B, N, C]
        return feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[-1], grid_h, grid_w)

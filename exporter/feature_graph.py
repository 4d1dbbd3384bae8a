"""The generic DiTF feature graph (docs/DESIGN.md, "The feature"): pixels -> VAE mean latent -> noise mix -> truncated
backbone (from the family adapter) -> ensemble mean -> channel discard -> LayerNorm -> block K's
AdaLN modulation -> [B, C, H/16, W/16]; with the raw head (`--head raw`, the paper's ablation baseline) the
ensemble mean of h_K after discard only. This module is also the PyTorch reference for parity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .families.base import FeatureParts


class LatentEncoder(nn.Module):
    """VAE encoder to the *mean* of the latent distribution, then the family's scaling.

    The authors sample the latent; the mean is our deterministic choice (recorded in the manifest).
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv if getattr(vae, "quant_conv", None) is not None else nn.Identity()
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.shift_factor or 0.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        moments = self.quant_conv(self.encoder(image))
        mean = moments[:, : self.latent_channels]
        return (mean - self.shift_factor) * self.scaling_factor


class DiscardingHead(nn.Module):
    """A feature head that first zeroes the discarded (massive) channels: `tokens * keep`.

    A multiply by a constant mask, not an index_put: static, and exact (x * 0 == 0, x * 1 == x).
    """

    def __init__(self, channels: int, discard: tuple[int, ...]):
        super().__init__()
        self.register_buffer("keep", torch.ones(channels))
        self.set_discard(discard)

    def set_discard(self, discard: tuple[int, ...]) -> None:
        """Choose the zeroed channels (e.g. after detecting them with this very graph, `--discard auto`)."""
        keep = torch.ones_like(self.keep)
        keep[list(discard)] = 0.0
        self.keep.copy_(keep)


class RawHead(DiscardingHead):
    """`--head raw`: h_K itself (the ensemble mean), no LayerNorm and no modulation; listed channels still zeroed.

    Its massive channels (hundreds) stay in the output unless discarded: the paper's "original" row."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.keep


class FeatureHead(DiscardingHead):
    """Discard massive channels, LayerNorm (no affine), then `(1 + scale_K) * x + shift_K`."""

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor, discard: tuple[int, ...], eps: float):
        super().__init__(shift.shape[0], discard)
        self.register_buffer("shift", shift.detach().float().clone())
        self.register_buffer("scale_plus_one", (1.0 + scale.detach().float()).clone())
        self.eps = eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens * self.keep
        x = F.layer_norm(x, (x.shape[-1],), eps=self.eps)
        return x * self.scale_plus_one + self.shift


class FeatureGraph(nn.Module):
    """image [B, 3, H, W] in [-1, 1], noise [B, E, c, H/s, W/s] -> features [B, C, H/(s*p), W/(s*p)]
    (s the VAE's stride, p the patch size; shapes as ditf_calib.graph_io.diffusion_io declares them).

    Video graphs (`video`) add a frame axis after the batch axis everywhere: image [B, F, 3, H, W], noise
    [B, E, F, c, H/s, W/s] -> features [B, F, C, H/(s*p), W/(s*p)]; frames go through the image VAE one by
    one, the backbone sees the clip.
    """

    # What this graph decides that the manifest should say (Feature.notes).
    NOTES = ("latent: VAE posterior mean (the authors sample; deterministic by choice)",
             "ensemble: the latent is encoded once and shared by the E noise draws")

    def __init__(self, encoder: LatentEncoder, parts: FeatureParts, noise_a: float, noise_b: float,
                 discard: tuple[int, ...], patch_size: int, video: bool = False, head: str = "adaln"):
        super().__init__()
        self.encoder = encoder
        self.backbone = parts.backbone
        if head not in ("adaln", "raw"):
            raise ValueError(f"feature head {head!r}: 'adaln' or 'raw'")
        self.head = (FeatureHead(parts.shift, parts.scale, discard, parts.norm_eps) if head == "adaln"
                     else RawHead(int(parts.shift.shape[0]), discard))
        self.patch_size = int(patch_size)
        self.video = bool(video)
        # x_t = a * x0 + b * noise: flow matching (1 - t, t) or variance-preserving (sqrt(ab), sqrt(1 - ab))
        self.noise_a = float(noise_a)
        self.noise_b = float(noise_b)

    def raw_tokens(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The ensemble mean of the raw h_K, before discard and LayerNorm: [B, N, C] (massive-channel detection)."""
        b, e = noise.shape[0], noise.shape[1]
        if not self.video:
            latent = self.encoder(image)  # encoded once, shared by the E ensemble members
        elif getattr(self.encoder, "takes_clips", False):  # a 3-D VAE: the clip at once, [B, latent frames, c, h, w]
            latent = self.encoder(image)
        else:  # video: every frame through the image VAE, [B, F, c, h, w]
            latent = self.encoder(image.flatten(0, 1)).unflatten(0, (b, image.shape[1]))
        x_t = self.noise_a * latent[:, None] + self.noise_b * noise
        tokens = self.backbone(x_t.flatten(0, 1))  # [B*E, N, C]
        return tokens.unflatten(0, (b, e)).mean(dim=1)

    def forward(self, image: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h, w = noise.shape[-2], noise.shape[-1]
        feats = self.head(self.raw_tokens(image, noise))  # [B, (F,) N, C]
        hp, wp = h // self.patch_size, w // self.patch_size
        return feats.transpose(-1, -2).reshape(*feats.shape[:-2], feats.shape[-1], hp, wp)

"""What a model family must tell the generic pipeline, and small tools adapters share.

An adapter is small: how to truncate the transformer, which weights layer K needs, how to build the
constant conditioning, and a backbone module that maps noisy latents to the image tokens entering
block K, plus block K's own AdaLN shift and scale. Everything else (VAE, noising, ensemble mean,
channel discard, LayerNorm, modulation, export, parity, manifest) is generic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


class ExportInputError(ValueError):
    """A user choice (layer, guidance, prompt embeds, discard, ...) that cannot work; message says the fix."""


@dataclass
class ExportOptions:
    layer: int
    timestep: float  # in [0, 1000]
    discard: tuple[int, ...]
    guidance: float | None = None
    prompt: str | None = ""
    prompt_embeds: dict[str, torch.Tensor] | None = None  # from --prompt-embeds FILE.safetensors
    class_label: int | None = None
    text_max_length: int | None = None


@dataclass
class FeatureParts:
    """What an adapter hands to the generic feature graph."""

    backbone: nn.Module  # x_t [B*E, c, h, w] -> image tokens entering block K [B*E, N, C], row-major grid
    shift: torch.Tensor  # [C], block K's pre-attention AdaLN shift
    scale: torch.Tensor  # [C], block K's pre-attention AdaLN scale
    patch_size: int
    norm_eps: float = 1e-6
    notes: list[str] = field(default_factory=list)


class FamilyAdapter:
    family: ClassVar[str]
    transformer_class_name: ClassVar[str]
    noising: ClassVar[str] = "flow-matching"  # or "variance-preserving"
    uses_text: ClassVar[bool] = True

    # -- numbering and truncation --------------------------------------------------------------
    def num_layers(self, config: dict[str, Any]) -> int:
        raise NotImplementedError

    def block_name(self, config: dict[str, Any], layer: int) -> str:
        raise NotImplementedError

    def hidden_size(self, config: dict[str, Any]) -> int:
        return int(config["num_attention_heads"]) * int(config["attention_head_dim"])

    def truncated_config(self, config: dict[str, Any], layer: int) -> dict[str, Any]:
        raise NotImplementedError

    def needed_weight(self, key: str, config: dict[str, Any], layer: int) -> bool:
        raise NotImplementedError

    # -- conditioning ---------------------------------------------------------------------------
    def check_options(self, config: dict[str, Any], options: ExportOptions) -> None:
        if options.guidance is not None:
            raise ExportInputError(f"--guidance: {self.family} models have no guidance embedding; drop --guidance")

    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        return {}

    def noise_coefficients(self, source, options: ExportOptions) -> tuple[float, float]:
        """(a, b) with x_t = a * x0 + b * noise."""
        if self.noising == "flow-matching":
            t = options.timestep / 1000.0
            return 1.0 - t, t
        raise NotImplementedError(f"{self.family}: noise_coefficients for {self.noising}")

    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        raise NotImplementedError

    def check_layer(self, config: dict[str, Any], layer: int) -> None:
        n = self.num_layers(config)
        if not 0 <= layer < n:
            raise ExportInputError(f"--layer {layer} is out of range: this {self.family} model has layers 0..{n - 1}")


class ConstantModulation(nn.Module):
    """Stands in for an AdaLN `linear`: returns the precomputed `linear(silu(temb))`, whatever it is given."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value.detach().clone())

    def forward(self, _ignored: torch.Tensor) -> torch.Tensor:
        return self.value


@torch.no_grad()
def bake_adaln(norm: nn.Module, temb: torch.Tensor) -> torch.Tensor:
    """Replace `norm.linear(norm.silu(temb))` by its constant value; diffusers' block code stays unchanged.

    Returns the constant, [1, n * C].
    """
    value = norm.linear(norm.silu(temb))
    norm.linear = ConstantModulation(value)
    norm.silu = nn.Identity()
    return value


def layer_split(layer: int, first_stack: int) -> tuple[str, int]:
    """Unified numbering over two block lists: k < first_stack is in the first, else the second."""
    return ("first", layer) if layer < first_stack else ("second", layer - first_stack)


def block_index(key: str, prefix: str) -> int | None:
    """`transformer_blocks.12.attn.to_q.weight` with prefix `transformer_blocks.` -> 12."""
    if not key.startswith(prefix):
        return None
    head = key[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None

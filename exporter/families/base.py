"""What a model family must tell the generic pipeline, and small tools adapters share.

An adapter is small: how to truncate the transformer, which weights layer K needs, how to build the
constant conditioning, and a backbone module that maps noisy latents to the image tokens entering
block K, plus block K's own AdaLN shift and scale. Everything else (VAE, noising, ensemble mean,
channel discard, LayerNorm, modulation, export, parity, manifest) is generic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ditf_calib.graph_io import GraphIO, diffusion_io
from ditf_runtime.manifest import Workload

from ..errors import ExportInputError
from ..registry import Default


@dataclass(frozen=True)
class ExportOptions:
    """What the graph bakes, resolved and validated (export.plan); derived versions via dataclasses.replace."""

    layer: int
    timestep: float | None  # in [0, 1000]; None for graphs without a noise input (nothing to noise)
    discard: tuple[int, ...]
    guidance: float | None = None
    prompt: str | None = ""
    prompt_embeds: dict[str, torch.Tensor] | None = None  # from --prompt-embeds FILE.safetensors
    class_label: int | None = None
    text_max_length: int | None = None
    image_size: int | None = None  # the runtime's default long side (PixArt-α bakes its size conditioning at it)
    # apply the backbone's own final norm after layer K (families with default_final_norm: DINOv2's
    # last_hidden_state); an explicit --layer K reads the hidden state without it
    final_norm: bool = False
    # the feature head (request.HEADS): "adaln" or "raw" (ditf_export.feature_graph); "none" for families whose
    # own graph has no AdaLN head (adaln_head False: DINOv2)
    head: str = "adaln"


@dataclass(frozen=True)
class FeatureParts:
    """What an adapter hands to the generic feature graph."""

    # x_t [B*E, c, h, w] -> image tokens entering block K [B*E, N, C], row-major grid
    # (video: x_t [N, F, c, h, w] -> [N, F, tokens, C], F dynamic up to the adapter's max_frames)
    backbone: nn.Module
    shift: torch.Tensor  # [C], block K's pre-attention AdaLN shift
    scale: torch.Tensor  # [C], block K's pre-attention AdaLN scale
    norm_eps: float = 1e-6
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class OwnGraph:
    """A feature graph built by its family (`FamilyAdapter.build_own_graph`) instead of the generic DiTF one.

    `graph` takes the GraphIO's inputs in order and returns the features; `graph.raw_tokens(...)` gives the
    tokens before channel discard ([B, N, C], for --discard auto) and `graph.head.set_discard(channels)` sets
    the zeroed channels, as the generic FeatureGraph does.
    """

    graph: nn.Module
    files: tuple[Path, ...]  # the weight files read, sorted
    tensors_read: int
    tensors_in_checkpoint: int
    bytes_read: int
    notes: tuple[str, ...] = ()


def vae_stride(vae_config: dict[str, Any]) -> int:
    """Pixels per latent cell: an AutoencoderKL encoder halves the size in every down block but the last."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


class FamilyAdapter:
    family: ClassVar[str]
    transformer_class_name: ClassVar[str]
    noising: ClassVar[str] = "flow-matching"  # or "variance-preserving"; "none" for graphs without noise
    # Where a model folder of this family keeps the config that identifies it (handles()), and what to
    # download for it (the message when a model is missing from the local HF cache).
    config_file: ClassVar[str] = "transformer/config.json"
    download_include: ClassVar[tuple[str, ...]] = (
        "model_index.json", "transformer/*", "vae/*", "scheduler/*", "text_encoder*/*", "tokenizer*/*")
    needs_vae: ClassVar[bool] = True  # graph_io reads vae/config.json
    default_image_size: ClassVar[int] = 640  # the runtime's long side when the registry gives none
    default_final_norm: ClassVar[bool] = False  # see ExportOptions.final_norm
    # The generic graph ends in the AdaLN feature head (or, with --head raw, in h_K itself); a family whose own
    # graph has no AdaLN modulation (build_own_graph: DINOv2) says False, and --head is refused for it.
    adaln_head: ClassVar[bool] = True
    # How image tokens meet the prompt: "joint" (one attention over image + text tokens: FLUX, SD3) or "cross".
    text_attention: ClassVar[str] = "joint"

    @classmethod
    def handles(cls, config: dict[str, Any]) -> bool:
        """Is `config` (this family's config_file of a folder) a model this adapter exports?"""
        return config.get("_class_name") == cls.transformer_class_name

    @classmethod
    def describe(cls) -> str:
        """What model folder this adapter takes, for messages."""
        return f"a diffusers pipeline whose {cls.config_file} names {cls.transformer_class_name}"

    def build_own_graph(self, source, options: ExportOptions, dtype: torch.dtype) -> OwnGraph | None:
        """Families whose graph is not the generic DiTF one (VAE -> noise -> backbone -> head) build it here;
        None: the generic graph (ditf_export.build)."""
        return None

    def default_layer(self, config: dict[str, Any]) -> int | None:
        """The layer when neither --layer nor the registry gives one; None: --layer is required."""
        return None

    def feature_name(self, config: dict[str, Any], options: ExportOptions) -> str:
        """What the manifest's `feature.block` says the graph reads."""
        return self.block_name(config, options.layer)

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

    # -- shapes ---------------------------------------------------------------------------------
    def patch_size(self, config: dict[str, Any]) -> int:
        """Latent cells per token side."""
        return int(config["patch_size"])

    def max_frames(self, config: dict[str, Any]) -> int | None:
        """Video families: the most frames a clip may have (the graph gets a frames axis); None for images."""
        return None

    def max_grid(self, config: dict[str, Any]) -> int | None:
        """The most tokens per image side the graph's position tables cover (RoPE or sin-cos tables, SD3's
        stored table): a larger grid would reuse or wrap positions silently, so exporter and runtime refuse
        it. None: no limit."""
        return None

    def vae_stride(self, vae_config: dict[str, Any]) -> int:
        """Pixels per latent cell side."""
        return vae_stride(vae_config)

    def latent_channels(self, vae_config: dict[str, Any]) -> int:
        return int(vae_config["latent_channels"])

    def frame_stride(self, vae_config: dict[str, Any]) -> int:
        """Video frames per latent frame after the first (a causal 3-D VAE's temporal compression); 1: frames go
        through the VAE one by one."""
        return 1

    def latent_encoder(self, source) -> nn.Module | None:
        """The graph's VAE part when it is not an AutoencoderKL (None: feature_graph.LatentEncoder, an image VAE, also
        run frame by frame for video). A 3-D VAE's encoder sets `takes_clips` and maps [B, F, 3, H, W] clips to
        [B, latent frames, c, h, w]."""
        return None

    def graph_io(self, config: dict[str, Any], vae_config: dict[str, Any]) -> GraphIO:
        """The graph's inputs and outputs (ditf_calib.graph_io), from the transformer's and the VAE's configs:
        image + noise -> features at stride vae_stride * patch_size."""
        return diffusion_io(latent_channels=self.latent_channels(vae_config),
                            feature_channels=self.hidden_size(config), vae_stride=self.vae_stride(vae_config),
                            patch_size=self.patch_size(config), max_frames=self.max_frames(config),
                            max_grid=self.max_grid(config), frame_stride=self.frame_stride(vae_config))

    def workload(self, config: dict[str, Any], vae_config: dict[str, Any] | None,
                 conditioning: dict[str, torch.Tensor]) -> Workload:
        """What the runtime's memory estimate needs (ditf_runtime.memory): attention shapes, MLP and VAE widths.
        Families that build their own graph (build_own_graph) get vae_config None and no conditioning."""
        embeds, mask = conditioning.get("prompt_embeds"), conditioning.get("prompt_attention_mask")
        tokens = 0 if embeds is None else int(embeds.shape[1] if mask is None else int((mask > 0).sum()))
        return Workload(
            heads=int(config["num_attention_heads"]), head_dim=int(config["attention_head_dim"]),
            text_tokens=tokens, text_attention=self.text_attention if tokens else "none",
            ffn_dim=4 * self.hidden_size(config),  # every family's blocks: MLP ratio 4
            vae_channels=tuple(int(c) for c in vae_config["block_out_channels"]),
            vae_attention=bool(vae_config.get("mid_block_add_attention", True)),
        )

    # -- conditioning ---------------------------------------------------------------------------
    def default_guidance(self, config: dict[str, Any]) -> Default | None:
        """Guidance for a model whose registry entry (if any) gives none; None: no guidance."""
        return None

    def check_options(self, config: dict[str, Any], options: ExportOptions) -> ExportOptions:
        """Refuse options this family cannot honour; returns them, with what is baked by default filled in
        (e.g. DiT's class label)."""
        if options.guidance is not None:
            raise ExportInputError(f"--guidance: {self.family} models have no guidance embedding; drop --guidance")
        if options.class_label is not None:
            raise ExportInputError(f"--class-label: {self.family} models are not class-conditional; drop --class-label")
        return options

    def conditioning(self, source, config: dict[str, Any], options: ExportOptions) -> dict[str, torch.Tensor]:
        return {}

    def noise_coefficients(self, source, options: ExportOptions) -> tuple[float, float]:
        """(a, b) with x_t = a * x0 + b * noise. Also validates the timestep against the schedule."""
        if self.noising == "flow-matching":
            t = options.timestep / 1000.0
            return 1.0 - t, t
        if self.noising == "variance-preserving":
            return vp_noise_coefficients(source.path, options.timestep)
        raise NotImplementedError(f"{self.family}: noise_coefficients for {self.noising}")

    def feature_parts(
        self, transformer: nn.Module, conditioning: dict[str, torch.Tensor], options: ExportOptions
    ) -> FeatureParts:
        raise NotImplementedError

    def check_layer(self, config: dict[str, Any], layer: int) -> None:
        n = self.num_layers(config)
        if not 0 <= layer < n:
            raise ExportInputError(f"--layer {layer} is out of range: this {self.family} model has layers 0..{n - 1}")


class SingleStackAdapter(FamilyAdapter):
    """Families with one block list (SD3, PixArt, DiT): layer K is `transformer_blocks[K]`.

    Subclasses name the top-level weights the kept graph needs and how to recognise block K's AdaLN
    weights (the only part of block K that is read).
    """

    blocks_prefix: ClassVar[str] = "transformer_blocks."
    top_level_weights: ClassVar[tuple[str, ...]] = ()

    def head_weight(self, key: str) -> bool:
        """Is this key (inside block K) part of block K's modulation?"""
        raise NotImplementedError

    def num_layers(self, config: dict[str, Any]) -> int:
        return int(config["num_layers"])

    def block_name(self, config: dict[str, Any], layer: int) -> str:
        return f"{self.blocks_prefix}{layer}"

    def truncated_config(self, config: dict[str, Any], layer: int) -> dict[str, Any]:
        return {**config, "num_layers": layer + 1}

    def needed_weight(self, key: str, config: dict[str, Any], layer: int) -> bool:
        if key.startswith(self.top_level_weights):
            return True
        i = block_index(key, self.blocks_prefix)
        if i is not None:
            return i < layer or (i == layer and self.head_weight(key))
        return False  # final norm and projection: past the feature


class Constant(nn.Module):
    """Stands in for a submodule whose output is fixed once the conditioning is baked: an AdaLN `linear`
    (its `linear(silu(temb))`) or AdaLayerNormZero's own `emb` (DiT). Returns `value`, whatever it is given."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value.detach().clone())

    def forward(self, *_args, **_kwargs) -> torch.Tensor:
        return self.value


@torch.no_grad()
def bake_adaln(norm: nn.Module, temb: torch.Tensor) -> torch.Tensor:
    """Replace `norm.linear(norm.silu(temb))` by its constant value; diffusers' block code stays unchanged.

    Returns the constant, [1, n * C].
    """
    value = norm.linear(norm.silu(temb))
    norm.linear = Constant(value)
    norm.silu = nn.Identity()
    return value


@torch.no_grad()
def bake_adaln_with_embedding(norm: nn.Module, *emb_args, **emb_kwargs) -> torch.Tensor:
    """bake_adaln for an AdaLayerNormZero that computes its embedding itself (DiT: `emb(timestep, class_labels)`).

    The embedding is computed once, the modulation baked, and `emb` replaced by a Constant (its output is
    then unused). Returns [1, n * C].
    """
    temb = norm.emb(*emb_args, **emb_kwargs)
    value = bake_adaln(norm, temb)
    norm.emb = Constant(temb)
    return value


def vp_noise_coefficients(pipeline_dir, timestep: float) -> tuple[float, float]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) as the pipeline's own scheduler's `add_noise` computes them.

    abar comes from scheduler/scheduler_config.json (betas: beta_start, beta_end, beta_schedule,
    num_train_timesteps), built by the scheduler class the config names, never from FLUX's numbers.
    """
    import json
    from pathlib import Path

    import diffusers

    folder = Path(pipeline_dir) / "scheduler"
    cfg_path = folder / "scheduler_config.json"
    if not cfg_path.is_file():
        raise ExportInputError(
            f"{pipeline_dir} has no scheduler/scheduler_config.json: this variance-preserving model's noise "
            "schedule (its betas) comes from there; copy the pipeline's scheduler/ folder next to transformer/"
        )
    config = json.loads(cfg_path.read_text())
    cls = getattr(diffusers, config.get("_class_name", ""), None)
    if cls is None or not hasattr(cls, "from_config"):
        cls = diffusers.DDPMScheduler
    scheduler = cls.from_config(config)
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ExportInputError(f"{cfg_path}: {cls.__name__} has no alphas_cumprod; not a variance-preserving schedule")
    n = int(abar.shape[0])
    if float(timestep) != int(timestep) or not 0 <= int(timestep) < n:
        raise ExportInputError(
            f"--timestep {timestep}: this variance-preserving model's schedule has integer timesteps 0..{n - 1}"
        )
    a = abar[int(timestep)]
    # the same float32 operations as DDPMScheduler.add_noise
    return float(a**0.5), float((1 - a) ** 0.5)


def block_index(key: str, prefix: str) -> int | None:
    """`transformer_blocks.12.attn.to_q.weight` with prefix `transformer_blocks.` -> 12."""
    if not key.startswith(prefix):
        return None
    head = key[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None

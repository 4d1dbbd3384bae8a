"""DINOv2 (transformers' Dinov2Model and Dinov2WithRegistersModel): the second feature of DiTF + DINOv2 fusion.

Not a diffusion model: no VAE, no noise, no timestep. The family declares its own graph inputs (the image
only, `ditf_calib.graph_io.image_io`) and builds its own graph (dinov2_graph.Dinov2FeatureGraph):

    image [B, 3, H, W] in [-1, 1] -> the model's mean/std -> patch embedding (stride 14) -> CLS (+ registers)
    + position embeddings interpolated to the token grid -> layers 0 .. K-1 -> (final LayerNorm)
    -> patch tokens [B, C, H/14, W/14]

The feature (after "A Tale of Two Features"): the patch tokens of the last layer after the model's final
LayerNorm (`last_hidden_state` without the CLS and register tokens). `--layer K` reads `hidden_states[K]`
(the embeddings for K = 0, the output of encoder layer K - 1 otherwise) without the final norm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ditf_calib.graph_io import GraphIO, image_io
from ditf_runtime.manifest import Workload

from ..errors import ExportInputError
from ..registry import Default, ModelSpec, fact_equals, fact_hidden_size, register, register_model
from .base import ExportOptions, FamilyAdapter, OwnGraph

MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# Largest token-grid side whose position-embedding interpolation is tabulated and checked: 1792 px at 14.
MAX_GRID = 128
# The DINOv2 model cards' (ImageNet) normalisation, when the folder has no preprocessor_config.json.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")


@register("dinov2")
class Dinov2Adapter(FamilyAdapter):
    transformer_class_name = "Dinov2Model"  # or Dinov2WithRegistersModel: handles() reads model_type
    noising = "none"
    config_file = "config.json"
    download_include = ("config.json", "model.safetensors", "model.safetensors.index.json",
                        "model-*.safetensors", "preprocessor_config.json")
    needs_vae = False
    default_image_size = 840  # Tale of Two Features
    default_final_norm = True
    adaln_head = False  # its features are the layer's tokens (after the final LayerNorm by default): no AdaLN

    @classmethod
    def handles(cls, config: dict[str, Any]) -> bool:
        return config.get("model_type") in MODEL_TYPES

    @classmethod
    def describe(cls) -> str:
        return f"a transformers model whose {cls.config_file} has model_type {' or '.join(MODEL_TYPES)}"

    # -- numbering ----------------------------------------------------------------------------------
    def num_layers(self, config: dict[str, Any]) -> int:
        return int(config["num_hidden_layers"]) + 1  # hidden_states[0] (embeddings) .. [L]

    def default_layer(self, config: dict[str, Any]) -> int:
        return int(config["num_hidden_layers"])

    def block_name(self, config: dict[str, Any], layer: int) -> str:
        return "embeddings" if layer == 0 else f"encoder.layer.{layer - 1}"

    def feature_name(self, config: dict[str, Any], options: ExportOptions) -> str:
        where = f"hidden_states[{options.layer}] ({self.block_name(config, options.layer)} output)"
        return f"layernorm of {where}: last_hidden_state" if options.final_norm else where

    def hidden_size(self, config: dict[str, Any]) -> int:
        return int(config["hidden_size"])

    def patch_size(self, config: dict[str, Any]) -> int:
        return int(config["patch_size"])

    def max_grid(self, config: dict[str, Any]) -> int:
        return MAX_GRID  # the interpolated position tables are built and checked up to this grid

    def graph_io(self, config: dict[str, Any], vae_config: dict[str, Any] | None) -> GraphIO:
        stride = self.patch_size(config)
        return image_io(self.hidden_size(config), stride, max_size=self.max_grid(config) * stride)

    def workload(self, config: dict[str, Any], vae_config: dict[str, Any] | None,
                 conditioning: dict[str, torch.Tensor]) -> Workload:
        """No VAE, no prompt; the class (and register) tokens attend with the patch tokens. SwiGLU (giant)
        projects to twice its hidden width (transformers' Dinov2SwiGLUFFN)."""
        hidden, heads = self.hidden_size(config), int(config["num_attention_heads"])
        ffn = int(hidden * float(config.get("mlp_ratio", 4)))
        if config.get("use_swiglu_ffn"):
            ffn = 2 * ((int(ffn * 2 / 3) + 7) // 8 * 8)
        return Workload(heads=heads, head_dim=hidden // heads, text_tokens=0, text_attention="none", ffn_dim=ffn,
                        vae_channels=(), vae_attention=False,
                        extra_tokens=1 + int(config.get("num_register_tokens", 0) or 0))

    # -- options ------------------------------------------------------------------------------------
    def check_options(self, config: dict[str, Any], options: ExportOptions) -> ExportOptions:
        for given, flag in ((options.guidance is not None, "--guidance"), (options.class_label is not None,
                            "--class-label"), (options.prompt_embeds is not None, "--prompt-embeds"),
                            (bool(options.prompt), "--prompt")):
            if given:
                raise ExportInputError(f"{flag}: DINOv2 is not a diffusion model and takes no conditioning; "
                                       f"drop {flag}")
        if options.final_norm and options.layer != self.default_layer(config):
            raise ValueError("final_norm applies to the last layer only")  # plan() never asks for it
        return ExportOptions(layer=options.layer, timestep=None, discard=options.discard, prompt=None,
                             image_size=options.image_size, final_norm=options.final_norm)

    def noise_coefficients(self, source, options: ExportOptions) -> tuple[float, float]:
        raise ExportInputError("DINOv2 graphs take no noise")

    # -- the graph ----------------------------------------------------------------------------------
    def build_own_graph(self, source, options: ExportOptions, dtype: torch.dtype) -> OwnGraph:
        from .dinov2_graph import Dinov2FeatureGraph

        model, files = load_truncated_dinov2(source.path, options.layer, dtype)
        mean, std, norm_source = image_normalisation(source.path)
        graph = Dinov2FeatureGraph(model, mean, std, final_norm=options.final_norm, discard=options.discard,
                                   max_grid=MAX_GRID).eval()
        error = graph.positions.verify_against(model.embeddings)
        state = model.state_dict()
        notes = (
            f"image normalisation mean {list(mean)}, std {list(std)} ({norm_source}), baked in the graph",
            "tokens: patch tokens only (CLS and register tokens dropped)",
            f"position embeddings: transformers' interpolate_pos_encoding tabulated for token grids up to "
            f"{MAX_GRID} per side and checked side by side against it (max relative error {error:.1e}); "
            "larger images are refused",
        )
        return OwnGraph(graph=graph, files=files, tensors_read=len(state),
                        tensors_in_checkpoint=_checkpoint_tensors(files),
                        bytes_read=int(sum(t.numel() * t.element_size() for t in state.values())), notes=notes)


def weight_files(folder: Path) -> tuple[Path, ...]:
    """The safetensors files of a transformers model folder (one file or the shards of its index)."""
    index = folder / SAFETENSORS[1]
    if index.is_file():
        return tuple(sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()}))
    if (folder / SAFETENSORS[0]).is_file():
        return (folder / SAFETENSORS[0],)
    raise ExportInputError(f"{folder} holds no {SAFETENSORS[0]} (or its index): ditf loads safetensors only, "
                           "never pickles (pytorch_model.bin)")


def _checkpoint_tensors(files: tuple[Path, ...]) -> int:
    from safetensors import safe_open

    count = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            count += len(list(f.keys()))
    return count


def load_truncated_dinov2(folder: Path, layer: int, dtype: torch.dtype) -> tuple[nn.Module, tuple[Path, ...]]:
    """The model with only encoder layers 0 .. layer-1 (transformers reads only their tensors)."""
    from transformers import AutoConfig, AutoModel

    files = weight_files(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    config.num_hidden_layers = int(layer)
    model = AutoModel.from_pretrained(str(folder), config=config, dtype=dtype, use_safetensors=True,
                                      local_files_only=True)
    return model.eval().requires_grad_(False), files


def image_normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where from): preprocessor_config.json's image_mean/image_std, else the model card's ImageNet ones."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        mean, std = config.get("image_mean"), config.get("image_std")
        if mean is not None and std is not None:
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise ExportInputError(f"{path}: image_mean/image_std must be 3 values each, std > 0")
            return tuple(map(float, mean)), tuple(map(float, std)), "preprocessor_config.json"
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet, the DINOv2 model card's (no preprocessor_config.json)"


# -- registry names ------------------------------------------------------------------------------

_COMMON = dict(
    family="dinov2",
    layer=Default(None, "Tale of Two Features: the last layer, after the final LayerNorm"),
    timestep=Default(None, "not a diffusion model: no noise"),
    image_size=Default(840, "Tale of Two Features (60 patches on the long side)"),
    discard=Default((), "none: the recipe discards nothing (ditf-detect-massive reports the ratios)"),
    ensemble=Default(1, "not a diffusion model: one pass"),
    guidance=None,
)
_SIZES = {"small": 384, "base": 768, "large": 1024, "giant": 1536}
# A local folder is told apart by its model_type and width (the four sizes differ only in width).
for _size, _hidden in _SIZES.items():
    register_model(ModelSpec(name=f"dinov2-{_size}", hf_id=f"facebook/dinov2-{_size}", hidden_size=_hidden,
                             signature=(fact_equals("model_type", "dinov2"), fact_hidden_size(_hidden)),
                             **_COMMON))
    register_model(ModelSpec(name=f"dinov2-{_size}-reg", hf_id=f"facebook/dinov2-with-registers-{_size}",
                             hidden_size=_hidden, signature=(fact_equals("model_type", "dinov2_with_registers"),
                                                             fact_hidden_size(_hidden)), **_COMMON))


def _build_tiny(registers: bool):
    def build(path: str) -> None:
        from ..tiny import build_dinov2_tiny

        build_dinov2_tiny(path, registers=registers)

    return build


for _name, _registers in (("dinov2-tiny", False), ("dinov2-tiny-reg", True)):
    register_model(ModelSpec(
        name=_name, hf_id=None, hidden_size=None, builtin=_build_tiny(_registers),
        **{**_COMMON, "image_size": Default(224, "built-in test model: small for CPU")},
    ))

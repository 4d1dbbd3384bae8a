"""The medium FLUX-architecture model of the CPU benchmarks, and the authors' recipe in PyTorch.

`build_medium` saves bench/medium.py's random-weight pipeline folder of the real diffusers classes
(FLUX-size VAE) and random prompt embeddings; `AuthorsRecipe` computes one image's features the authors'
way and remembers the fewest seconds its VAE and its transformer + head took over the calls.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


def build_medium(tmp: Path, hidden: int = 768, blocks: int = 4, text_tokens: int = 512) -> tuple[Path, Path, int]:
    """(pipeline folder, prompt-embeddings file, layer) of bench/medium.py's model without planted massive
    channels, built in `tmp`; the layer is the last single block's input, so blocks 0..2*blocks-2 run."""
    from medium import build_medium as build_medium_folder

    folder = build_medium_folder(tmp / "medium", hidden, blocks, massive=(), text_tokens=text_tokens)
    return folder, folder / "prompt_embeds.safetensors", 2 * blocks - 1


class _Stop(Exception):
    pass


class AuthorsRecipe:
    """Loaded once; each call is one image's features the authors' way (their eval code, fp32 eager)."""

    def __init__(self, folder: Path, layer: int, embeds_file: Path, timestep=260.0, guidance=3.5, discard=()):
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from safetensors.torch import load_file

        self.transformer = FluxTransformer2DModel.from_pretrained(folder / "transformer").eval()
        self.vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        self.embeds = load_file(str(embeds_file))
        self.t, self.guidance, self.discard = timestep / 1000, guidance, discard
        n_double = self.transformer.config.num_layers
        blocks = list(self.transformer.transformer_blocks) + list(self.transformer.single_transformer_blocks)
        block = blocks[layer]
        self.norm = block.norm1 if layer < n_double else block.norm
        self.got = {}
        self.best: dict[str, float] = {}  # part -> fewest seconds over the calls so far

        def keep_input_and_stop(m, a, kw):
            self.got["h"] = kw["hidden_states"]
            raise _Stop  # the authors keep only blocks 0..K: nothing after block K's input runs

        block.register_forward_pre_hook(keep_input_and_stop, with_kwargs=True)

    @torch.no_grad()
    def encode(self, image: torch.Tensor, e: int, sample: bool) -> torch.Tensor:
        images = image.repeat(e, 1, 1, 1)  # the authors repeat the image E times...
        dist = self.vae.encode(images).latent_dist  # ...and so run the VAE E times
        z = dist.sample() if sample else dist.mean
        return (z - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    @torch.no_grad()
    def features(self, z: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
        from diffusers import FluxPipeline

        tr, embeds = self.transformer, self.embeds
        e, c, h, w = z.shape
        x_t = self.t * noise[0] + (1 - self.t) * z
        packed = FluxPipeline._pack_latents(x_t, e, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(e, h // 2, w // 2, "cpu", torch.float32)
        try:
            tr(hidden_states=packed, encoder_hidden_states=embeds["prompt_embeds"].expand(e, -1, -1),
               pooled_projections=embeds["pooled_prompt_embeds"].expand(e, -1), timestep=torch.full((e,), self.t),
               img_ids=img_ids, txt_ids=torch.zeros(embeds["prompt_embeds"].shape[1], 3),
               guidance=torch.full((e,), self.guidance))
        except _Stop:
            pass
        temb = tr.time_text_embed(torch.full((1,), self.t * 1000), torch.full((1,), self.guidance * 1000),
                                  embeds["pooled_prompt_embeds"])
        mod = self.norm.linear(self.norm.silu(temb))
        hk = self.got["h"].mean(0, keepdim=True)
        hk[..., list(self.discard)] = 0
        d = hk.shape[-1]
        feat = torch.nn.functional.layer_norm(hk, (d,), eps=1e-6) * (1 + mod[0, d:2 * d]) + mod[0, :d]
        return feat.transpose(1, 2).reshape(1, d, h // 2, w // 2).numpy()

    def __call__(self, image: torch.Tensor, noise: torch.Tensor, sample: bool = True) -> np.ndarray:
        t0 = time.perf_counter()
        z = self.encode(image, noise.shape[1], sample)
        t1 = time.perf_counter()
        out = self.features(z, noise)
        for part, seconds in (("vae", t1 - t0), ("transformer", time.perf_counter() - t1)):
            self.best[part] = min(seconds, self.best.get(part, float("inf")))
        return out

    def count_flops(self, image: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
        """Convolution and matmul FLOPs of one call per part, by torch's own FlopCounterMode. It counts no
        attention here: its fp32 CPU scaled_dot_product_attention kernel has no FLOP formula (the caller adds
        the attention counted from the ONNX); the head (mean, LayerNorm, modulation) has no matmul."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as vae_count:
            z = self.encode(image, noise.shape[1], sample=False)
        with FlopCounterMode(display=False) as rest_count:
            self.features(z, noise)
        return {"vae": float(vae_count.get_total_flops()), "transformer": float(rest_count.get_total_flops()),
                "head": 0.0}

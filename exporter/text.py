"""Prompt conditioning, computed once at export time and baked into the graph as constants."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ExportInputError


def load_prompt_embeds(path: str | Path) -> dict[str, torch.Tensor]:
    """Read `--prompt-embeds FILE.safetensors` (safetensors only: never pickles)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ExportInputError(f"--prompt-embeds: {path} does not exist")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for a bad header
        raise ExportInputError(f"--prompt-embeds: {path} is not a readable safetensors file ({exc})") from exc
    return tensors


def check_prompt_embeds(tensors: dict[str, torch.Tensor], text_dim: int, pooled_dim: int | None) -> dict[str, torch.Tensor]:
    """prompt_embeds [1, L, text_dim] and (where the family has one) pooled_prompt_embeds [1, pooled_dim]."""
    if "prompt_embeds" not in tensors:
        raise ExportInputError(f"--prompt-embeds: no `prompt_embeds` tensor (found: {', '.join(tensors) or 'none'})")
    pe = tensors["prompt_embeds"]
    if pe.ndim != 3 or pe.shape[0] != 1 or pe.shape[2] != text_dim:
        raise ExportInputError(
            f"--prompt-embeds: prompt_embeds has shape {list(pe.shape)}, expected [1, L, {text_dim}] for this model"
        )
    out = {"prompt_embeds": pe.float()}
    if pooled_dim is not None:
        if "pooled_prompt_embeds" not in tensors:
            raise ExportInputError("--prompt-embeds: no `pooled_prompt_embeds` tensor; this model needs [1, "
                                   f"{pooled_dim}]")
        pp = tensors["pooled_prompt_embeds"]
        if pp.ndim != 2 or pp.shape[0] != 1 or pp.shape[1] != pooled_dim:
            raise ExportInputError(
                f"--prompt-embeds: pooled_prompt_embeds has shape {list(pp.shape)}, expected [1, {pooled_dim}]"
            )
        out["pooled_prompt_embeds"] = pp.float()
    for name in ("prompt_attention_mask",):
        if name in tensors:
            out[name] = tensors[name]
    return out


def _require(folder: Path, sub: str) -> Path:
    p = folder / sub
    if not p.is_dir():
        raise ExportInputError(
            f"{folder} has no {sub}/ folder, which encoding the prompt needs; add it, or pass "
            "--prompt-embeds FILE.safetensors (then no text encoders are loaded)"
        )
    return p


@torch.no_grad()
def encode_clip_t5(source, prompt: str, max_length: int) -> dict[str, torch.Tensor]:
    """FLUX's conditioning as FluxPipeline.encode_prompt computes it: CLIP pooled + T5 hidden states."""
    from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

    folder = Path(source.path)
    for sub in ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2"):
        _require(folder, sub)
    clip_tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    clip = CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True).float().eval()
    ids = clip_tok([prompt], padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids
    pooled = clip(ids, output_hidden_states=False).pooler_output
    del clip
    t5_tok = AutoTokenizer.from_pretrained(folder / "tokenizer_2")
    t5 = T5EncoderModel.from_pretrained(folder / "text_encoder_2", use_safetensors=True).float().eval()
    ids = t5_tok([prompt], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
    embeds = t5(ids, output_hidden_states=False)[0]
    return {"prompt_embeds": embeds.float(), "pooled_prompt_embeds": pooled.float()}


@torch.no_grad()
def encode_sd3(source, prompt: str, max_length: int) -> dict[str, torch.Tensor]:
    """SD3/SD3.5's conditioning through StableDiffusion3Pipeline.encode_prompt itself: CLIP-L + CLIP-G
    (penultimate hidden states, pooled text embeds) and T5, without classifier-free guidance."""
    from diffusers import StableDiffusion3Pipeline
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

    folder = Path(source.path)
    for sub in ("tokenizer", "text_encoder", "tokenizer_2", "text_encoder_2", "tokenizer_3", "text_encoder_3"):
        _require(folder, sub)
    pipe = StableDiffusion3Pipeline(
        transformer=None, scheduler=None, vae=None,
        text_encoder=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder", use_safetensors=True).float(),
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2",
                                                                   use_safetensors=True).float(),
        tokenizer_2=AutoTokenizer.from_pretrained(folder / "tokenizer_2"),
        text_encoder_3=T5EncoderModel.from_pretrained(folder / "text_encoder_3", use_safetensors=True).float(),
        tokenizer_3=AutoTokenizer.from_pretrained(folder / "tokenizer_3"),
    )
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, prompt_2=None, prompt_3=None, device=torch.device("cpu"),
                                              do_classifier_free_guidance=False, max_sequence_length=max_length)
    return {"prompt_embeds": embeds.float(), "pooled_prompt_embeds": pooled.float()}


@torch.no_grad()
def encode_t5_masked(source, prompt: str, max_length: int) -> dict[str, torch.Tensor]:
    """PixArt-α/Σ's conditioning through PixArtAlphaPipeline.encode_prompt itself: T5 hidden states and the
    attention mask (no caption cleaning, no classifier-free guidance)."""
    from diffusers import PixArtAlphaPipeline
    from transformers import AutoTokenizer, T5EncoderModel

    folder = Path(source.path)
    for sub in ("tokenizer", "text_encoder"):
        _require(folder, sub)
    pipe = PixArtAlphaPipeline(
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder", use_safetensors=True).float(),
        vae=None, transformer=None, scheduler=None,
    )
    embeds, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device=torch.device("cpu"),
                                            clean_caption=False, max_sequence_length=max_length)
    return {"prompt_embeds": embeds.float(), "prompt_attention_mask": mask}


def _prompt_only_pipeline(pipeline_class, encoder_class, source):
    """A video pipeline with only its tokenizer and text encoder (fp32), so its own encode_prompt runs."""
    from transformers import AutoTokenizer

    folder = Path(source.path)
    for sub in ("tokenizer", "text_encoder"):
        _require(folder, sub)
    return pipeline_class(
        tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=encoder_class.from_pretrained(folder / "text_encoder", use_safetensors=True).float(),
        vae=None, transformer=None, scheduler=None,
    )


@torch.no_grad()
def encode_wan_umt5(source, prompt: str, max_length: int) -> dict[str, torch.Tensor]:
    """Wan's conditioning through WanPipeline.encode_prompt itself: umT5 hidden states of the prompt's tokens, zero
    rows up to max_length (the pipeline pads with zeros, not masks: the transformer cross-attends to all of them)."""
    from diffusers import WanPipeline
    from transformers import UMT5EncoderModel

    pipe = _prompt_only_pipeline(WanPipeline, UMT5EncoderModel, source)
    embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=max_length,
                                   device=torch.device("cpu"))
    return {"prompt_embeds": embeds.float()}


@torch.no_grad()
def encode_cogvideox_t5(source, prompt: str, max_length: int) -> dict[str, torch.Tensor]:
    """CogVideoX's conditioning through CogVideoXPipeline.encode_prompt itself: T5 hidden states of the prompt padded
    to max_length (226) tokens, pads encoded too (the pipeline passes no attention mask)."""
    from diffusers import CogVideoXPipeline
    from transformers import T5EncoderModel

    pipe = _prompt_only_pipeline(CogVideoXPipeline, T5EncoderModel, source)
    embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=max_length,
                                   device=torch.device("cpu"))
    return {"prompt_embeds": embeds.float()}

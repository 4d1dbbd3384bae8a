"""CPU end to end: the authors' recipe in PyTorch vs the exported ditf graph on onnxruntime.

Same medium FLUX-architecture transformer (random weights, real diffusers classes), a VAE the size of
FLUX's, 512 text tokens, one image at 512x512, E = 8, 2 threads (the project's CPU goal: >= 8x the authors'
recipe at fp32, more with int8).

- authors' recipe (PyTorch eager, fp32): the image repeated E times, the VAE run E times (posterior
  sample), diffusers' own FluxTransformer2DModel.forward with the conditioning path and modulation
  linears live, stopped at block K by a hook (they keep only blocks 0..K), then ensemble mean,
  discard, LayerNorm and modulation.
- ditf (onnxruntime CPU, fp32): the exported graph; VAE once, conditioning baked.

Prints a table and the speed-up, measured side by side in one run. Also reports the relative error
between the two outputs (with the posterior mean used on both sides so they are comparable).

    python bench/bench_end_to_end.py [--size 512] [--ensemble 8] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FLUX_VAE_SIZE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


class _Stop(Exception):
    pass


class AuthorsRecipe:
    """Loaded once; each call is one image's features the authors' way."""

    def __init__(self, folder: Path, layer: int, embeds: dict, timestep=260.0, guidance=3.5, discard=()):
        from diffusers import AutoencoderKL, FluxTransformer2DModel

        self.transformer = FluxTransformer2DModel.from_pretrained(folder / "transformer").eval()
        self.vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        self.embeds, self.t, self.guidance, self.discard = embeds, timestep / 1000, guidance, discard
        n_double = self.transformer.config.num_layers
        blocks = list(self.transformer.transformer_blocks) + list(self.transformer.single_transformer_blocks)
        block = blocks[layer]
        self.norm = block.norm1 if layer < n_double else block.norm
        self.got = {}

        def keep_input_and_stop(m, a, kw):
            self.got["h"] = kw["hidden_states"]
            raise _Stop  # the authors keep only blocks 0..K: nothing after block K's input runs

        block.register_forward_pre_hook(keep_input_and_stop, with_kwargs=True)

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, noise: torch.Tensor, sample: bool = True) -> np.ndarray:
        from diffusers import FluxPipeline

        tr, vae, embeds = self.transformer, self.vae, self.embeds
        e = noise.shape[1]
        images = image.repeat(e, 1, 1, 1)  # the authors repeat the image E times...
        dist = vae.encode(images).latent_dist  # ...and so run the VAE E times
        z = dist.sample() if sample else dist.mean
        z = (z - vae.config.shift_factor) * vae.config.scaling_factor
        _, c, h, w = z.shape
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ensemble", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--blocks", type=int, default=4, help="double blocks; as many single blocks")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--int8", action="store_true", help="also export and time the calibrated INT8 Q/DQ graph")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from safetensors.torch import save_file

    from ditf_runtime.backends.onnxrt import create_session

    from ditf_export.export import ExportRequest, export
    from ditf_export.tiny import save_pipeline_folder, tiny_flux_transformer, tiny_vae

    layer = 2 * args.blocks - 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        overrides = dict(num_layers=args.blocks, num_single_layers=args.blocks, attention_head_dim=64,
                         num_attention_heads=args.hidden // 64, axes_dims_rope=(8, 28, 28),
                         joint_attention_dim=256, pooled_projection_dim=128)
        folder = save_pipeline_folder(
            tmp / "medium", {"transformer": tiny_flux_transformer(0, massive=(), **overrides),
                             "vae": tiny_vae(1, **FLUX_VAE_SIZE)}, False, "FluxPipeline")
        g = torch.Generator().manual_seed(0)
        embeds = {"prompt_embeds": torch.randn(1, args.text_tokens, 256, generator=g),
                  "pooled_prompt_embeds": torch.randn(1, 128, generator=g)}
        save_file(embeds, str(tmp / "embeds.safetensors"))
        out = tmp / "export"
        t0 = time.perf_counter()
        export(ExportRequest(model=str(folder), out=out, layer=layer, discard="none",
                             prompt_embeds=tmp / "embeds.safetensors", parity_sizes=((64, 96),)))
        export_s = time.perf_counter() - t0

        if args.int8:
            export(ExportRequest(model=str(folder), out=tmp / "export-int8", layer=layer, discard="none",
                                 prompt_embeds=tmp / "embeds.safetensors", parity_sizes=((64, 96),),
                                 precision="int8", calib_images=Path(__file__).parent.parent / "examples" / "images"))
        s = args.size
        image = torch.rand(1, 3, s, s, generator=g) * 2 - 1
        noise = torch.randn(1, args.ensemble, 16, s // 8, s // 8, generator=g)
        sess = create_session(out / "model.onnx", threads=args.threads)
        feed = {"image": image.numpy(), "noise": noise.numpy()}

        def timed(fn):
            fn()  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                result = fn()
                best = min(best, time.perf_counter() - t)
            return best, result

        ort_s, ours = timed(lambda: sess.run(["features"], feed)[0])
        int8_s = ours_int8 = None
        if args.int8:
            sess8 = create_session(tmp / "export-int8" / "model.onnx", threads=args.threads)
            int8_s, ours_int8 = timed(lambda: sess8.run(["features"], feed)[0])
        recipe = AuthorsRecipe(folder, layer, embeds)
        torch_s, _ = timed(lambda: recipe(image, noise, sample=True))
        reference = recipe(image, noise, sample=False)
        rel = float(np.abs(ours - reference).max() / np.abs(reference).max())

    print(f"\nmedium FLUX-architecture model: hidden {args.hidden}, {args.blocks}+{args.blocks} blocks, layer {layer}, "
          f"{args.text_tokens} text tokens, FLUX-size VAE; image {args.size}x{args.size}, E={args.ensemble}, "
          f"{args.threads} threads; best of {args.repeats} after a warm-up (export took {export_s:.1f} s)")
    print(f"{'pipeline':<46}{'s/image':>10}{'speed-up':>10}")
    print(f"{'authors recipe, PyTorch eager fp32 (VAE x E)':<46}{torch_s:>10.2f}{1.0:>10.2f}")
    print(f"{'ditf graph, onnxruntime CPU fp32':<46}{ort_s:>10.2f}{torch_s / ort_s:>10.2f}")
    if int8_s is not None:
        print(f"{'ditf graph, onnxruntime CPU int8 (Q/DQ)':<46}{int8_s:>10.2f}{torch_s / int8_s:>10.2f}")
    print(f"relative error ditf fp32 vs authors' recipe (posterior mean on both sides): {rel:.2e}")
    if ours_int8 is not None:
        from ditf_runtime.parity import compare

        print(f"int8 vs authors' recipe: {compare(ours_int8, reference, 'int8')}")


if __name__ == "__main__":
    main()

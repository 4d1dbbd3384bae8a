"""`ditf-export`: the export command itself (click). Bad input exits non-zero with a message, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .families.base import ExportInputError


class _Guidance(click.ParamType):
    name = "float"

    def convert(self, value, param, ctx):
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True,
              help="Registry name (flux, flux-schnell, flux-tiny), a local diffusers pipeline folder, "
                   "or an HF id already in the local cache.")
@click.option("--layer", type=int, default=None,
              help="Feature layer K in the unified numbering (FLUX: 0..18 double, 19..56 single). "
                   "Default: the registry's.")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Export folder to create.")
@click.option("--timestep", type=float, default=None, help="Diffusion timestep in [0, 1000] (default 260).")
@click.option("--guidance", type=_Guidance(), default=None,
              help="Guidance for guidance-distilled models (FLUX.1-dev: 3.5). An error on models without it.")
@click.option("--prompt", default="", show_default=True, help="Prompt baked into the graph.")
@click.option("--prompt-embeds", type=click.Path(path_type=Path), default=None,
              help="safetensors with prompt_embeds [1, L, D] and pooled_prompt_embeds [1, P]; "
                   "then no text encoders are needed.")
@click.option("--max-sequence-length", "text_max_length", type=int, default=None,
              help="Text tokens of the baked prompt (FLUX.1-dev: 512). Default: the registry's.")
@click.option("--discard", default=None,
              help="Massive channels to zero: a comma list, 'none', or 'auto'. Default: the model's.")
@click.option("--ensemble", type=int, default=None, help="Default ensemble size E for the runtime (default 8).")
@click.option("--image-size", type=int, default=None, help="Default long side for the runtime (default 640).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default="fp32",
              show_default=True)
@click.option("--calib-images", type=click.Path(path_type=Path), default=None,
              help="Image folder for INT8 calibration.")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
def main(model, layer, out, timestep, guidance, prompt, prompt_embeds, text_max_length, discard, ensemble, image_size,
         precision, calib_images, force):
    """Export a DiTF feature graph: ONNX + manifest.json + parity report, written atomically."""
    from .export import ExportRequest, ParityError, export

    request = ExportRequest(
        model=model, out=out, layer=layer, timestep=timestep, guidance=guidance,
        guidance_given=guidance is not None, prompt=prompt, prompt_embeds=prompt_embeds,
        text_max_length=text_max_length, discard=discard,
        ensemble=ensemble, image_size=image_size, precision=precision, calib_images=calib_images,
        force=force, progress=lambda msg: click.echo(msg, err=True),
    )
    try:
        manifest = export(request)
    except (ExportInputError, ParityError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written to --out", err=True)
        sys.exit(130)
    p = manifest.parity["results"][0]
    click.echo(f"{out}: {manifest.family} layer {manifest.feature.layer} ({manifest.feature.block}), "
               f"{manifest.geometry.feature_channels} channels, parity min cosine {p['min_cosine']:.7f}")


def detect_massive_main():
    raise SystemExit("ditf-detect-massive: not available in this build yet")

"""`ditf-export`: the export command itself (click). Bad input exits non-zero with a message, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ditf_runtime.errors import OutputError
from ditf_runtime.precision import PRECISIONS, Precision

from .errors import ExportInputError, ParityError
from .request import HEADS, NOT_GIVEN


class _Guidance(click.ParamType):
    """A number, or "none": explicitly no guidance (not given at all: the model's default)."""

    name = "float|none"

    def convert(self, value, param, ctx):
        if value is None or value is NOT_GIVEN or isinstance(value, float):
            return value
        if str(value).strip().lower() == "none":
            return None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number (or 'none')", param, ctx)


class _Precision(click.Choice):
    """--precision, parsed once into a Precision."""

    def __init__(self):
        super().__init__(list(PRECISIONS))

    def convert(self, value, param, ctx):
        return Precision(super().convert(value, param, ctx))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True,
              help="Registry name (flux, flux-schnell, flux-tiny, sd3, sd3.5-medium, sd3.5-large, pixart-alpha, "
                   "pixart-sigma, dit-xl-2-256, latte, dinov2-base, dinov2-base-reg, dinov2-tiny, ...), a local "
                   "diffusers pipeline folder or transformers DINOv2 folder, or an HF id already in the local cache.")
@click.option("--layer", type=int, default=None,
              help="Feature layer K in the unified numbering (FLUX: 0..18 double, 19..56 single; DINOv2: "
                   "hidden_states[K], no final norm). Default: the registry's (DINOv2: the last layer after the "
                   "final LayerNorm).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Export folder to create.")
@click.option("--timestep", type=float, default=None, help="Diffusion timestep in [0, 1000] (default 260).")
@click.option("--guidance", type=_Guidance(), default=NOT_GIVEN, show_default=False,
              help="Guidance for guidance-distilled models (FLUX.1-dev: 3.5; default: the model's). An error on "
                   "models without it; 'none': no guidance.")
@click.option("--prompt", default="", show_default=True, help="Prompt baked into the graph.")
@click.option("--prompt-embeds", type=click.Path(path_type=Path), default=None,
              help="safetensors with prompt_embeds [1, L, D] and pooled_prompt_embeds [1, P]; "
                   "then no text encoders are needed.")
@click.option("--max-sequence-length", "text_max_length", type=int, default=None,
              help="Text tokens of the baked prompt (FLUX.1-dev: 512). Default: the registry's.")
@click.option("--discard", default=None,
              help="Massive channels to zero: a comma list, 'none', or 'auto' (detect them over --calib-images). "
                   "Default: the model's.")
@click.option("--head", type=click.Choice(HEADS), default=None,
              help="The feature head. adaln (default): discard, LayerNorm (no affine), block K's AdaLN modulation "
                   "(DiTF's feature). raw: block K's input h_K itself, ensemble-averaged, no LayerNorm and no "
                   "modulation (the paper's ablation baseline); --discard still zeroes its channels (--discard none "
                   "for the untouched h_K). Diffusion transformers only.")
@click.option("--massive-threshold", type=float, default=100.0, show_default=True,
              help="--discard auto: a channel is massive when its median |h_K| is this many times the median "
                   "channel's (the paper: > 100x).")
@click.option("--class-label", type=int, default=None,
              help="Class-conditional models (DiT): the class baked into the graph. Default: the null class.")
@click.option("--ensemble", type=int, default=None, help="Default ensemble size E for the runtime (default 8).")
@click.option("--image-size", type=int, default=None,
              help="Default long side for the runtime (default 640; DINOv2 840).")
@click.option("--precision", type=_Precision(), default="fp32", show_default=True,
              help="Precision written into the ONNX (TensorRT builds it strongly typed): fp16/bf16 GEMMs and "
                   "attention with an FP32 residual stream, norms and head; int8 / fp8 (E4M3, GPUs of compute "
                   "capability >= 8.9) explicit Q/DQ, calibrated on --calib-images.")
@click.option("--calib-images", type=click.Path(path_type=Path), default=None,
              help="Folder of real images: INT8/FP8 calibration (required with --precision int8/fp8; part of it is "
                   "held out to judge it unless --eval-images is given), the fp16/bf16 range check and a parity row on "
                   "real images, and --discard auto.")
@click.option("--eval-images", type=click.Path(path_type=Path), default=None,
              help="int8/fp8: folder of real photos (at least 2, none of them calibration images) that judge it at "
                   "the default image size. Default: held out from --calib-images (near-duplicates kept together).")
@click.option("--calib-method", type=click.Choice(["max", "percentile", "mse", "entropy"]), default="max",
              show_default=True, help="int8/fp8: how each activation's range is chosen from its histogram (fp8: "
                                      "max or percentile).")
@click.option("--calib-percentile", type=float, default=99.99, show_default=True,
              help="int8/fp8 with --calib-method percentile: the percentile of |x| kept unclipped.")
@click.option("--calib-sizes", type=str, default=None,
              help="int8/fp8: comma list of long sides to calibrate at (each image at each). Default: the export's "
                   "--image-size, where it runs.")
@click.option("--int8-convs", is_flag=True,
              help="--precision int8: quantize the image encoder's convolutions too (int8 in and out, weights per "
                   "channel); faster on CPUs and GPUs, less exact: check the parity report.")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
def main(model, layer, out, timestep, guidance, prompt, prompt_embeds, text_max_length, discard, head, massive_threshold,
         class_label, ensemble, image_size, precision, calib_images, eval_images, calib_method, calib_percentile,
         calib_sizes, int8_convs, force):
    """Export a DiTF feature graph: ONNX + manifest.json + parity report, written atomically."""
    from .request import ExportRequest

    try:
        request = ExportRequest(
            model=model, out=out, layer=layer, timestep=timestep, guidance=guidance, prompt=prompt,
            prompt_embeds=prompt_embeds,
            text_max_length=text_max_length, discard=discard, head=head, massive_threshold=massive_threshold,
            class_label=class_label, ensemble=ensemble, image_size=image_size, precision=precision,
            calib_images=calib_images, eval_images=eval_images, calib_method=calib_method,
            calib_percentile=calib_percentile, calib_sizes=_sizes(calib_sizes), int8_convs=int8_convs, force=force,
            progress=lambda msg: click.echo(msg, err=True),
        )
        request.check()  # before torch is imported: a wrong option fails in well under a second
    except (ExportInputError, OutputError) as exc:
        raise click.ClickException(str(exc)) from None
    from .export import export  # torch, diffusers: seconds

    try:
        manifest = export(request)
    except (ExportInputError, ParityError, OutputError) as exc:  # OutputError: disk full, read-only (files.py)
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: nothing was written to --out", err=True)
        sys.exit(130)
    rows = [r for r in manifest.parity["results"] if r.get("gates", True)]
    worst = min(rows, key=lambda r: r["min_cosine"])
    judged = f" on {worst['inputs']}" if worst.get("inputs") else ""
    head = ", raw head" if manifest.feature.head == "raw" else ""
    click.echo(f"{out}: {manifest.family} layer {manifest.feature.layer} ({manifest.feature.block}{head}), "
               f"{manifest.precision}, {manifest.geometry.feature_channels} channels, parity min cosine "
               f"{worst['min_cosine']:.7f}{judged}")


def _sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a comma list of long sides, e.g. 512,640",
                                 param_hint="--calib-sizes") from None
    if not sizes:
        raise click.BadParameter("give at least one long side, e.g. 640", param_hint="--calib-sizes")
    return sizes


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="Registry name, local diffusers pipeline folder, or cached HF id.")
@click.option("--layer", type=int, default=None, help="Feature layer K (default: the registry's).")
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Folder of real photos (e.g. examples/images), preprocessed as the runtime does.")
@click.option("--threshold", type=float, default=100.0, show_default=True,
              help="Massive: median |h_K| over tokens above this many times the median channel's (paper: > 100x).")
@click.option("--timestep", type=float, default=None, help="Diffusion timestep (default: the registry's).")
@click.option("--guidance", type=_Guidance(), default=NOT_GIVEN, show_default=False,
              help="Guidance, for guidance-distilled models (default: the model's; 'none': no guidance).")
@click.option("--prompt", default="", show_default=True, help="Prompt baked as in the export.")
@click.option("--prompt-embeds", type=click.Path(path_type=Path), default=None, help="As for ditf-export.")
@click.option("--max-sequence-length", "text_max_length", type=int, default=None, help="As for ditf-export.")
@click.option("--class-label", type=int, default=None, help="Class-conditional models (DiT); default: null class.")
@click.option("--image-size", type=int, default=None, help="Long side the images are resized to (default: registry's).")
@click.option("--ensemble", type=int, default=None, help="Noise draws averaged per image (default: registry's).")
@click.option("--max-images", type=int, default=None, help="Use at most this many images (sorted by name).")
@click.option("--top", type=int, default=10, show_default=True, help="Rows of the ratio table.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the result (channels, threshold, top ratios) as JSON here.")
def detect_massive_main(model, layer, images, threshold, timestep, guidance, prompt, prompt_embeds, text_max_length,
                        class_label, image_size, ensemble, max_images, top, json_out):
    """Find the massive-activation channels of block K's input from data; prints the ratio table and the
    channels to pass as `ditf-export --discard`."""
    import json
    import tempfile

    from ditf_calib.data import CalibrationError, check_folder

    if not threshold > 1:
        raise click.ClickException(f"--threshold {threshold}: must be > 1 (the paper uses 100)")
    from .request import check_model_text

    try:
        check_folder(images, option="--images")  # before torch is imported and the model loaded
        check_model_text(model)
    except (CalibrationError, ExportInputError) as exc:
        raise click.ClickException(str(exc)) from None

    from ditf_calib.massive import detect_for_graph

    from .build import build_graph
    from .logs import quiet_libraries
    from .plan import plan
    from .request import ExportRequest

    quiet_libraries()
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    try:
        with tempfile.TemporaryDirectory() as tmp:  # plan() wants an --out that does not exist; nothing is written
            the_plan = plan(ExportRequest(
                model=model, out=Path(tmp) / "unused", layer=layer, timestep=timestep, guidance=guidance,
                prompt=prompt, prompt_embeds=prompt_embeds, text_max_length=text_max_length, discard="none",
                class_label=class_label, ensemble=ensemble, image_size=image_size))
        source, options = the_plan.source, the_plan.options
        noise = "no noise" if options.timestep is None else (f"timestep {options.timestep:g}, "
                                                             f"ensemble {the_plan.ensemble}")
        say(f"model {source.name} ({source.family}), layer {options.layer} = {the_plan.block}, {noise}, "
            f"long side {the_plan.image_size}")
        built = build_graph(the_plan)
        found = detect_for_graph(built.graph, the_plan.io, images, long_side=the_plan.image_size,
                                 ensemble=the_plan.ensemble, threshold=threshold, max_images=max_images,
                                 option="--images")
    except (ExportInputError, CalibrationError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(found.table(top))
    if json_out is not None:
        json_out.write_text(json.dumps({"model": source.name, "family": source.family, "layer": options.layer,
                                        "timestep": options.timestep, **found.to_dict()}, indent=2) + "\n")
    click.echo(f"ditf-export --discard {','.join(map(str, found.channels)) or 'none'}")


if __name__ == "__main__":  # `python -m ditf_export.cli` runs ditf-export, as the script does
    main(prog_name="ditf-export")

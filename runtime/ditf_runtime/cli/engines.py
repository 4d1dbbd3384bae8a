"""`ditf build-engine`: a TensorRT or TensorRT-RTX engine (backends/trt/; TensorRT is imported lazily)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import InputError
from ..manifest import Manifest
from .options import friendly_errors


@click.command("build-engine")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--tensorrt",
    "flavor",
    type=click.Choice(["auto", "enterprise", "rtx"]),
    default="auto",
    show_default=True,
    help="enterprise: TensorRT, on the GPU that will serve. rtx: TensorRT for RTX, portable, builds without a GPU. "
    "auto: enterprise with a GPU and tensorrt installed, else rtx.",
)
@click.option("--min", "min_shapes", multiple=True, help="Smallest BATCHxHEIGHTxWIDTH (video: BATCHxFRAMESxHxW).")
@click.option("--opt", "opt_shapes", multiple=True, help="Tuned-for size (one --min/--opt/--max per profile).")
@click.option("--max", "max_shapes", multiple=True, help="Largest size. Omit all three: the manifest's profile.")
@click.option(
    "--ensemble", type=click.IntRange(min=1), default=None, help="E fixed in --min/--opt/--max (default: manifest's)."
)
@click.option(
    "--compute-capability",
    "compute_capabilities",
    multiple=True,
    help="rtx: a target GPU compute capability, e.g. 8.6 (repeatable). Default: the builder's (8.0, 8.6, 8.9, "
    "12.0+); fp8 exports: 8.9 and 12.0.",
)
@click.option("--allow-tf32", is_flag=True, help="Let FP32 GEMMs/convolutions use TF32 (off by default, for parity).")
@click.option("--workspace", type=click.FloatRange(min=0, min_open=True), default=None, help="Workspace limit, GiB.")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="enterprise: timing cache file (default: beside the engine); read if present, then updated.",
)
@click.option("--force", is_flag=True, help="Replace an existing engine folder.")
@friendly_errors
def build_engine(export_dir, flavor, min_shapes, opt_shapes, max_shapes, ensemble, compute_capabilities, allow_tf32,
                 workspace, timing_cache, force) -> None:  # fmt: skip
    """Build a strongly typed TensorRT engine into EXPORT_DIR/engines/ and print its folder.

    Precision comes from the ONNX (typed tensors, Q/DQ); no FP16/INT8 builder flags are set. An fp8 export
    runs on compute capability 8.9 and later only: TensorRT-RTX builds it for 8.9 and 12.0 by default and
    refuses older targets. Repeat --min/--opt/--max for several optimisation profiles; omit them to use the
    manifest's profile.
    """
    from ..backends import trt

    if not len(min_shapes) == len(opt_shapes) == len(max_shapes):
        raise InputError("give as many --opt and --max as --min (one of each per profile)")
    if ensemble is not None and not min_shapes:
        raise InputError("--ensemble fixes E in --min/--opt/--max profiles; the manifest's profile has its own E range")
    manifest = Manifest.load(export_dir)
    e = ensemble or manifest.feature.ensemble
    # profiles are checked against the export before TensorRT is looked for
    profiles = [trt.cli_profile(manifest, a, b, c, e) for a, b, c in zip(min_shapes, opt_shapes, max_shapes)]
    try:
        folder = trt.build_engine(
            export_dir, manifest, profiles or None, tensorrt=flavor, compute_capabilities=compute_capabilities,
            allow_tf32=allow_tf32, workspace_gib=workspace, timing_cache=timing_cache, force=force,
            log=lambda line: click.echo(line, err=True),
        )  # fmt: skip
    except KeyboardInterrupt:
        click.echo("interrupted: the build was cancelled and nothing was written to engines/", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # TensorRT's threads may call back into Python for a moment after a cancelled build;
        # interpreter shutdown under them aborts the process, so leave at once.
        os._exit(130)
    click.echo(str(folder))

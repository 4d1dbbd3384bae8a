"""`ditf build-engine`: a TensorRT engine for this GPU (backends/trt.py; TensorRT is imported lazily)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..manifest import Manifest
from .options import friendly_errors


@click.command("build-engine")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--min", "min_shapes", multiple=True, required=True, help="Smallest BATCHxHEIGHTxWIDTH (per profile).")
@click.option("--opt", "opt_shapes", multiple=True, required=True, help="Tuned-for BATCHxHEIGHTxWIDTH (per profile).")
@click.option("--max", "max_shapes", multiple=True, required=True, help="Largest BATCHxHEIGHTxWIDTH (per profile).")
@click.option(
    "--ensemble", type=click.IntRange(min=1), default=None, help="E baked into the profiles (default: manifest's)."
)
@click.option("--workspace", type=click.FloatRange(min=0, min_open=True), default=None, help="Workspace limit, GiB.")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Timing cache file (default: beside the engine); read if present, then updated.",
)
@friendly_errors
def build_engine(export_dir, min_shapes, opt_shapes, max_shapes, ensemble, workspace, timing_cache) -> None:
    """Build a strongly typed TensorRT engine for this GPU into EXPORT_DIR/engines/.

    Precision comes from the ONNX (typed tensors, Q/DQ); no FP16/INT8 builder flags are set.
    Repeat --min/--opt/--max for several optimisation profiles.
    """
    from ..backends import trt

    if not len(min_shapes) == len(opt_shapes) == len(max_shapes):
        raise InputError("give as many --opt and --max as --min (one of each per profile)")
    shapes = [
        trt.ShapeRange(trt.parse_bhw(a), trt.parse_bhw(b), trt.parse_bhw(c))
        for a, b, c in zip(min_shapes, opt_shapes, max_shapes)
    ]
    manifest = Manifest.load(export_dir)
    for shape_range in shapes:  # check the profiles before asking for TensorRT
        trt.profile_shapes(manifest, shape_range, ensemble or manifest.feature.ensemble)
    if not trt.tensorrt_available():
        raise click.ClickException(trt.NOT_INSTALLED)
    folder = trt.build_engine(
        export_dir,
        manifest,
        shapes,
        ensemble=ensemble,
        workspace_gib=workspace,
        timing_cache=timing_cache,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(str(folder))

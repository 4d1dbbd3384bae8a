"""`ditf extract`: a thin wrapper over jobs.py (in this process) and ray_extract.py (--ray)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import click
from tqdm import tqdm

from ..jobs import FAILED, ExtractSettings, FolderPlan, extract_jobs, plan_folder
from ..loading import LoadOptions
from ..ray_extract import RayOptions, run_jobs
from .options import ModelChoice, friendly_errors, model_options


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options()
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (created).",
)
@click.option("--format", "fmt", type=click.Choice(["safetensors", "npy"]), default="safetensors", show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Same-size images run together."
)
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@click.option("--overwrite", is_flag=True, help="Recompute outputs that already exist.")
@click.option("--ray", "use_ray", is_flag=True, help="Fan out over Ray Data actors (local Ray, or --ray-address).")
@click.option("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Ray actors (each loads the model once).",
)
@friendly_errors
def extract(
    inputs, model: ModelChoice, out_dir, fmt, batch_size, no_exif, overwrite, use_ray, ray_address, workers
) -> None:
    """Extract features of INPUTS (images and/or folders of images) into OUT.

    Resumable: existing outputs are skipped (writes are atomic, so an existing file is complete).
    With two --model exports each file holds both models' maps and the weights (safetensors; reading
    it with ditf_runtime.storage.load_features gives the fused map, re-weighted if asked).
    Unreadable images are reported at the end and make the exit code 1. With --ray, Ray actors
    extract and write the same files (ditf_runtime.ray_extract).
    """
    settings = ExtractSettings(
        size=model.size,
        ensemble=model.ensemble,
        seed=model.seed,
        fmt=fmt,
        exif_transpose=not no_exif,
        overwrite=overwrite,
        weights=model.weights,
    )
    plan = plan_folder(inputs, model.export_dirs, out_dir, settings)
    click.echo(f"{len(plan.jobs)} image(s), {plan.done} already done, {len(plan.pending)} to extract", err=True)
    if not plan.pending:
        return
    load = replace(model.load, batch_size=batch_size)
    if use_ray:
        _extract_with_ray(plan, model.export_dirs, settings, load, RayOptions(workers=workers, address=ray_address))
        return
    with (
        load.load(*model.export_dirs, weights=model.weights) as extractor,
        tqdm(total=len(plan.pending), unit="img", desc="extract", file=sys.stderr) as bar,
    ):
        _, failures = extract_jobs(extractor, plan.pending, settings, plan.metadata, lambda *_: bar.update(1))
    if failures:
        for message in failures:
            click.echo(f"skipped: {message}", err=True)
        raise click.ClickException(f"{len(failures)} of {len(plan.pending)} image(s) could not be read")


def _extract_with_ray(
    plan: FolderPlan, export_dir: tuple[Path, ...], settings: ExtractSettings, load: LoadOptions, ray: RayOptions
) -> None:
    with tqdm(total=len(plan.pending), unit="img", desc="extract (ray)", file=sys.stderr) as bar:

        def progress(output: str, status: str, message: str) -> None:
            if status == FAILED:
                bar.write(f"skipped: {message}", file=sys.stderr)
            bar.update(1)

        _, failures = run_jobs(plan.pending, export_dir, settings, load, plan.metadata, ray, progress)
    if failures:
        raise click.ClickException(f"{len(failures)} of {len(plan.pending)} image(s) could not be read")

"""`ditf extract`: a thin wrapper over jobs.py (in this process) and ray_extract.py (--ray)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import click

from ..errors import OutputError
from ..files import FULL_ERRNOS
from ..jobs import DONE, FAILED, ExtractSettings, FolderPlan, check_room, extract_jobs, plan_folder, start_folder
from ..loading import LoadOptions
from ..memory import check_long_side, engines_of, fused_attention_of, manifests_of
from ..progress import progress_bar
from ..ray_extract import RayOptions, run_jobs
from .options import IMAGES, ModelChoice, friendly_errors, model_options


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
    model.check_kind("extract", IMAGES)
    settings = ExtractSettings(
        size=model.size,
        ensemble=model.ensemble,
        seed=model.seed,
        fmt=fmt,
        exif_transpose=not no_exif,
        overwrite=overwrite,
        weights=model.weights,
    )
    # Nothing is written into OUT before the model, the device and the memory budget are checked.
    plan = plan_folder(inputs, model.export_dirs, out_dir, settings, start=False)
    click.echo(f"{len(plan.jobs)} image(s), {plan.done} already done, {len(plan.pending)} to extract", err=True)
    if not plan.pending:
        click.echo(f"nothing to do: all {len(plan.jobs)} file(s) are in {out_dir}", err=True)
        return
    load = replace(model.load, batch_size=batch_size)
    counts = _Counts()
    try:
        if use_ray:
            _extract_with_ray(plan, model, settings, load, RayOptions(workers=workers, address=ray_address), counts)
        else:
            _extract_here(plan, model, settings, load, counts)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: {counts.written} of {len(plan.pending)} file(s) written to {out_dir} (each one complete); "
            "rerun the same command to resume",
            err=True,
        )
        sys.exit(130)
    except OutputError as exc:  # disk full, read-only, no permission: the one file that failed is not left behind
        if not hasattr(exc, "cause"):  # refused up front (check_room): nothing was written
            raise click.ClickException(str(exc)) from None
        fix = "free some space" if exc.errno in FULL_ERRNOS else "fix that"
        raise click.ClickException(
            f"cannot write {exc.target}: {exc.cause}; {counts.written} of {len(plan.pending)} file(s) were written "
            f"before that, each complete: {fix}, then rerun the same command to resume") from None
    click.echo(f"wrote {counts.written} file(s) to {out_dir}", err=True)
    if counts.failures:
        for message in counts.failures:
            click.echo(f"skipped: {message}", err=True)
        raise click.ClickException(f"{len(counts.failures)} of {len(plan.pending)} image(s) could not be read")


@dataclass
class _Counts:
    written: int = 0
    failures: list[str] = field(default_factory=list)

    def progress(self, bar, output: str, status: str, message: str) -> None:
        self.written += status == DONE
        if status == FAILED:
            self.failures.append(message)
        bar.update(1)


def _extract_here(plan: FolderPlan, model: ModelChoice, settings: ExtractSettings, load: LoadOptions,
                  counts: _Counts) -> None:
    with load.load(*model.export_dirs, weights=model.weights) as extractor:
        # The largest input this run can see (a square image at --size) must fit, before OUT is touched.
        check_long_side(manifests_of(extractor), settings.size, batch=load.batch_size, ensemble=settings.ensemble,
                        fused_attention=fused_attention_of(extractor), max_memory=load.max_memory,
                        device=extractor.device, engines=engines_of(extractor))
        check_room(plan, model.export_dirs, settings)  # the files' size is known: refuse a disk too full now
        start_folder(plan)
        with progress_bar(total=len(plan.pending), unit="img", desc="extract") as bar:
            extract_jobs(extractor, plan.pending, settings, plan.metadata, partial(counts.progress, bar))


def _extract_with_ray(plan: FolderPlan, model: ModelChoice, settings: ExtractSettings, load: LoadOptions,
                      ray: RayOptions, counts: _Counts) -> None:
    # the actors load them; check what they would refuse, and which graph each would run
    manifests, graphs = zip(*(load.check(d) for d in model.export_dirs))
    local = ray.address is None and not os.environ.get("RAY_ADDRESS")  # then every actor shares this machine
    check_long_side(manifests, settings.size, batch=load.batch_size, ensemble=settings.ensemble,
                    fused_attention=[getattr(g, "fused_attention", False) for g in graphs],
                    max_memory=load.max_memory, device="cuda" if load.uses_gpu else "cpu", loaded=False,
                    copies=min(ray.workers, len(plan.pending)) if local else 1)
    check_room(plan, model.export_dirs, settings)
    start_folder(plan)
    with progress_bar(total=len(plan.pending), unit="img", desc="extract (ray)") as bar:
        run_jobs(plan.pending, model.export_dirs, settings, load, plan.metadata, ray, partial(counts.progress, bar))

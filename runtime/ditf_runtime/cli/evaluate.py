"""`ditf eval-spair` and `ditf eval-ap10k`: PCK on SPair-71k's and AP-10K's layouts (evaluate.py, one loop)."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..datasets.ap10k import SUBSETS, read_ap10k_pairs
from ..evaluate import evaluate, evaluate_ap10k, read_pairs
from ..memory import check_long_side, engines_of, fused_attention_of, manifests_of
from ..manifest import write_text_atomic
from .options import IMAGES, ModelChoice, friendly_errors, model_options


def pck_options(command: Callable) -> Callable:
    """The options every PCK command shares, after its own."""
    options = [
        click.option("--category", "categories", multiple=True, help="Only these categories (repeatable)."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N pairs per category."),
        click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True),
        click.option(
            "--min-pck",
            type=click.FloatRange(0, 1),
            default=None,
            help="Exit 1 unless 'All per image' PCK reaches this fraction.",
        ),
        click.option(
            "--json",
            "json_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Also write the results as JSON.",
        ),
        click.option(
            "--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
            help="Keep each pair's score here as it finishes: a rerun resumes (and another --alpha needs no new "
            "features).",
        ),  # fmt: skip
        click.option("--overwrite", is_flag=True, help="Score every pair again, also in an --out made otherwise."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.command("eval-spair")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@model_options()
@click.option("--split", default="test", show_default=True, help="PairAnnotation/<split>.")
@pck_options
@friendly_errors
def eval_spair(dataset, model: ModelChoice, split, categories, limit, alpha, min_pck, json_path, out_dir,
               overwrite) -> None:
    """PCK@alpha on DATASET in SPair-71k's layout (no EXIF rotation, as annotated).

    DATASET is the folder SPair-71k.tar.gz unpacks to: PairAnnotation/<split>/*.json and
    JPEGImages/<category>/*.jpg.
    """
    model.check_kind("eval-spair", IMAGES)
    read_pairs(dataset, split, categories or None, limit)  # the layout, before the model is loaded
    run = functools.partial(evaluate, dataset=dataset, split=split)
    _run_pck(run, model, categories, limit, alpha, min_pck, json_path, out_dir, overwrite)


@click.command("eval-ap10k")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@model_options()
@click.option(
    "--subset", type=click.Choice(list(SUBSETS)), default="intra-species", show_default=True,
    help="Pairs of one species, of two species of one family, or of two families.",
)  # fmt: skip
@click.option("--split", default="test", show_default=True, help="test or val (PairAnnotation/<split>[_<subset>]).")
@pck_options
@friendly_errors
def eval_ap10k(dataset, model: ModelChoice, subset, split, categories, limit, alpha, min_pck, json_path, out_dir,
               overwrite) -> None:
    """PCK@alpha on DATASET, AP-10K's benchmark as GeoAware-SC prepares it (no EXIF rotation, as annotated).

    DATASET is the ap-10k folder its prepare_ap10k.ipynb writes: PairAnnotation/<split>[_cross_species
    | _cross_family]/*.json, ImageAnnotation/<family>/<species>/*.json, JPEGImages/<family>/<species>/*.jpg.
    A keypoint counts when visible in both images; categories are species, families (cross-species)
    or "all" (cross-family).
    """
    model.check_kind("eval-ap10k", IMAGES)
    read_ap10k_pairs(dataset, subset, split, categories or None, limit)  # layout and files, before the model loads
    run = functools.partial(evaluate_ap10k, dataset=dataset, subset=subset, split=split)
    _run_pck(run, model, categories, limit, alpha, min_pck, json_path, out_dir, overwrite)


def _run_pck(run: Callable[..., Any], model: ModelChoice, categories, limit, alpha, min_pck, json_path, out_dir,
             overwrite) -> None:
    with model.open() as extractor:
        # The largest input the run can see (a square image at --size) must fit before the first pair.
        check_long_side(manifests_of(extractor), model.size, ensemble=model.ensemble,
                        fused_attention=fused_attention_of(extractor), max_memory=model.load.max_memory,
                        device=extractor.device, engines=engines_of(extractor))
        try:
            result = run(
                extractor,
                categories=categories or None,
                limit=limit,
                alpha=alpha,
                min_pck=min_pck,
                progress=True,
                max_pixels=model.load.max_pixels,
                out_dir=out_dir,
                overwrite=overwrite,
                size=model.size,
                ensemble=model.ensemble,
                seed=model.seed,
            )
        except KeyboardInterrupt:
            kept = (f"the pairs scored so far are kept in {out_dir}: rerun the same command to resume"
                    if out_dir is not None else "without --out nothing is kept: pass --out DIR to make a run resumable")
            click.echo(f"\ninterrupted: {kept}", err=True)
            sys.exit(130)
    if result.resumed_pairs:
        click.echo(f"{result.resumed_pairs} pairs' scores resumed from {out_dir}", err=True)
    click.echo(result.table())
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if not result:
        raise click.ClickException(
            f"All per image PCK {100 * result.all_per_image:.2f}% is below --min-pck {100 * min_pck:.2f}%"
        )

"""`ditf eval-spair`: PCK on an SPair-71k-layout dataset (evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..evaluate import evaluate, read_pairs
from ..memory import check_long_side, engines_of, fused_attention_of, manifests_of
from ..manifest import write_text_atomic
from .options import ModelChoice, friendly_errors, model_options


@click.command("eval-spair")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@model_options()
@click.option("--split", default="test", show_default=True, help="PairAnnotation/<split>.")
@click.option("--category", "categories", multiple=True, help="Only these categories (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N pairs per category.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@click.option(
    "--min-pck",
    type=click.FloatRange(0, 1),
    default=None,
    help="Exit 1 unless 'All per image' PCK reaches this fraction.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON.",
)
@friendly_errors
def eval_spair(dataset, model: ModelChoice, split, categories, limit, alpha, min_pck, json_path) -> None:
    """PCK@alpha on DATASET in SPair-71k's layout (no EXIF rotation, as annotated).

    DATASET is the folder SPair-71k.tar.gz unpacks to: PairAnnotation/<split>/*.json and
    JPEGImages/<category>/*.jpg.
    """
    read_pairs(dataset, split, categories or None, limit)  # the layout, before the model is loaded
    with model.open() as extractor:
        # The largest input the run can see (a square image at --size) must fit before the first pair.
        check_long_side(manifests_of(extractor), model.size, ensemble=model.ensemble,
                        fused_attention=fused_attention_of(extractor), max_memory=model.load.max_memory,
                        device=extractor.device, engines=engines_of(extractor))
        result = evaluate(
            extractor,
            dataset,
            split,
            categories=categories or None,
            limit=limit,
            alpha=alpha,
            min_pck=min_pck,
            progress=True,
            max_pixels=model.load.max_pixels,
            size=model.size,
            ensemble=model.ensemble,
            seed=model.seed,
        )
    click.echo(result.table())
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if not result:
        raise click.ClickException(
            f"All per image PCK {100 * result.all_per_image:.2f}% is below --min-pck {100 * min_pck:.2f}%"
        )

"""`ditf make-benchmark`: write a synthetic correspondence benchmark that `ditf eval-spair` runs unchanged."""

from __future__ import annotations

from pathlib import Path

import click

from ..synthetic.benchmark import DEFAULT_PAIRS, DEFAULT_SEED, DEFAULT_SIZE, KINDS
from .options import friendly_errors


@click.command("make-benchmark")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--pairs", type=int, default=DEFAULT_PAIRS, show_default=True, help="image pairs (categories in turn)")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="the drawing stream; 0 is flux-mini's training stream and is refused")
@click.option("--size", type=int, default=DEFAULT_SIZE, show_default=True, help="image side in pixels")
@click.option("--force", is_flag=True, help="replace OUT if it exists")
@friendly_errors
def make_benchmark(kind: str, out: Path, pairs: int, seed: int, size: int, force: bool) -> None:
    """Write a benchmark of KIND (creatures: procedural animals and cars with named keypoints) to OUT, in
    SPair-71k's layout: `ditf eval-spair OUT --model EXPORT` evaluates it."""
    from ..errors import InputError
    from ..synthetic.benchmark import write_benchmark

    if out.exists() and not force:
        raise InputError(f"{out} exists: pass --force to replace it, or choose another folder")
    write_benchmark(out, kind, pairs=pairs, seed=seed, size=size)
    click.echo(f"wrote {pairs} pairs ({kind}, seed {seed}, {size} px) to {out}; "
               f"evaluate with: ditf eval-spair {out} --model EXPORT")

"""`ditf optimize-cpu`: the CPU variant of an export (cpu_rewrite.py; needs the `optimize` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from .options import friendly_errors


@click.command("optimize-cpu")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads for the check.")
@friendly_errors
def optimize_cpu(export_dir: Path, threads: int | None) -> None:
    """Write EXPORT_DIR/model.cpu.onnx (+ model.cpu.json): model.onnx with memory-efficient fused attention
    for onnxruntime's CPU provider, checked against the export's PyTorch reference at its own gates.

    model.onnx is left as it is (TensorRT and CUDA run it); `ditf extract` and `load()` use the variant
    on the CPU by default (--cpu-variant off to not).
    """
    from ..cpu_rewrite import make_cpu_variant

    record = make_cpu_variant(export_dir, threads=threads, say=lambda line: click.echo(line, err=True))
    click.echo(str(export_dir / next(iter(record.files))))

"""`ditf eval-davis`: DAVIS-2017 label propagation scored with J&F (ditf_runtime.davis)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import memory
from ..davis import evaluate_davis
from ..davis.features import protocol_size
from ..manifest import write_text_atomic
from .options import ModelChoice, friendly_errors, model_options


@click.command("eval-davis")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@model_options()
@click.option("--split", default="val", show_default=True, help="ImageSets/2017/<split>.txt.")
@click.option("--videos", default=None, help="Only these videos, comma-separated (they must be in the split).")
@click.option(
    "--resolution", default="480p", show_default=True, help="Read JPEGImages/<resolution>, Annotations/<resolution>."
)
@click.option(
    "--n-last-frames", type=click.IntRange(min=0), default=7, show_default=True,
    help="Previous frames in the context, besides the first.",
)  # fmt: skip
@click.option(
    "--radius", type=click.IntRange(min=0), default=12, show_default=True,
    help="Square window around each token, in feature cells (0: no window).",
)  # fmt: skip
@click.option("--topk", type=click.IntRange(min=1), default=5, show_default=True, help="Affinities kept per token.")
@click.option(
    "--temperature", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True,
    help="Affinity = exp(cosine / temperature).",
)  # fmt: skip
@click.option(
    "--clip-frames", type=click.IntRange(min=1), default=None,
    help="Video exports: frames per clip (default: the export's maximum).",
)  # fmt: skip
@click.option(
    "--out", "-o", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Write the masks here (indexed PNGs; a rerun resumes). Default: a temporary folder, not kept.",
)  # fmt: skip
@click.option(
    "--overlay", "overlay_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Also write each frame with its masks blended in and a legend (PNG).",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Also write the scores (measures, per video, per object and frame) as JSON.",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Redo every video, also in a folder made with other settings.")
@friendly_errors
def eval_davis(
    dataset, model: ModelChoice, split, videos, resolution, n_last_frames, radius, topk, temperature, clip_frames,
    out_dir, overlay_dir, json_path, overwrite,
) -> None:  # fmt: skip
    """J&F of label propagation on DATASET in DAVIS-2017's layout (the DINO / DiTF protocol).

    Here --size is the frames' short side S (the authors use 480; default: the export's long
    side; required with two --model); the long side becomes floor(long * S / short / 32) * 32.
    Two --model exports propagate their fused features (DiTF + DINOv2).
    """
    if isinstance(model.size, tuple):
        raise click.UsageError("--size is the frames' short side here: give it once, also with two --model")
    if model.fused and model.size is None:  # the two manifests' long sides differ: the user picks one short side
        raise click.UsageError("--size PX is required when fusing two models: the frames' short side both models "
                               "use (the authors use 480), e.g. --size 480")
    model.check_kind("eval-davis", None)
    with model.open() as extractor:
        _check_memory(extractor, model)
        try:
            result = evaluate_davis(
                extractor, dataset, split, videos=videos.split(",") if videos else None, out_dir=out_dir,
                overlay_dir=overlay_dir, size=model.size, n_last_frames=n_last_frames, radius=radius, topk=topk,
                temperature=temperature, resolution=resolution, clip_frames=clip_frames, overwrite=overwrite,
                progress=True, ensemble=model.ensemble, seed=model.seed,
            )  # fmt: skip
        except KeyboardInterrupt:
            kept = (f"finished videos are kept in {out_dir}: rerun the same command to resume" if out_dir is not None
                    else "without --out nothing is kept: pass --out DIR to make a run resumable")
            click.echo(f"\ninterrupted: {kept}", err=True)
            sys.exit(130)
    click.echo(result.table())
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if out_dir is not None:
        click.echo(f"masks in {out_dir}", err=True)


def _check_memory(extractor, model: ModelChoice) -> None:
    """Before the first video: a DAVIS-2017 480p frame (854x480) at the protocol's size must fit the budget,
    both models' calls together when two are fused (video exports: each clip is checked by the extractor)."""
    if extractor.is_video:
        return
    manifests = memory.manifests_of(extractor)
    height, width = protocol_size(480, 854, model.size or manifests[0].preprocess.long_side)
    runs = memory.runs_at(manifests, max(height, width), image_size=(height, width), batch=extractor.batch_size,
                          ensemble=model.ensemble, fused_attention=memory.fused_attention_of(extractor))
    memory.check_runs(runs, max_memory=model.load.max_memory, device=extractor.device,
                      engines=memory.engines_of(extractor))

"""`ditf match`, `ditf track` (video exports) and `ditf show`: one image pair, one clip, one picture."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from PIL import Image

from ..annotate import caption_for, file_caption
from ..draw import draw_matches, draw_pca, draw_tracks
from ..errors import InputError
from ..memory import manifests_of
from ..matching import cell_centers, distinct_points, mutual_nn_matches, track_points, transfer_keypoints
from ..preprocess import frame_files
from ..storage import feature_file_metadata, load_features
from .options import CLIPS, IMAGES, ModelChoice, emit_text, friendly_errors, model_options


def parse_points(text: str | None, points_file: Path | None) -> np.ndarray | None:
    """--points 'x,y x,y ...' or a JSON [[x, y], ...] file as float64 [N, 2]; None when neither is given."""
    if text is None and points_file is None:
        return None
    if text is not None and points_file is not None:
        raise InputError("give --points or --points-file, not both")
    try:
        if points_file is not None:
            values = json.loads(points_file.read_text())
        else:
            values = [[float(v) for v in item.split(",")] for item in text.replace(";", " ").split()]
        points = np.asarray(values, dtype=np.float64)
    except (ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"points must be 'x,y x,y ...' or a JSON [[x, y], ...] file ({exc})") from None
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"points must be pairs (x, y), got shape {points.shape}")
    return points


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@model_options()
@click.option("--points", default=None, help="Source pixels 'x,y x,y ...'; default: mutual nearest neighbours.")
@click.option(
    "--points-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON [[x, y], ...] source pixels.",
)
@click.option(
    "--max-matches",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Mutual nearest neighbours kept (best first) when no points are given.",
)
@click.option(
    "--out",
    "-o",
    "picture",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a correspondence picture (PNG).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Write the matches as JSON here ('-': stdout). Default: stdout, or a one-line summary with --out.",
)
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@friendly_errors
def match(source, target, model: ModelChoice, points, points_file, max_matches, picture, json_path, no_exif) -> None:
    """Match SOURCE to TARGET: transfer --points, or list mutual nearest neighbours."""
    src_points = parse_points(points, points_file)
    model.check_kind("match", IMAGES)
    with model.open(exif_transpose=not no_exif) as extractor:
        src, trg = extractor.extract([source, target], model.size, model.ensemble, model.seed)
        manifests = manifests_of(extractor)
    mutual = src_points is None
    shared = ""  # why there are fewer matches than asked for, when the source is smaller than its feature grid
    if mutual:
        cells_a, _, _ = mutual_nn_matches(src, trg)
        centres = cell_centers(cells_a, src.grid_size, src.image_size)
        src_points = distinct_points(centres)[:max_matches]
        if len(src_points) < min(max_matches, len(centres)):
            height, width = src.image_size
            shared = (f"; {len(centres)} mutual nearest-neighbour cells fall on only {len(distinct_points(centres))} "
                      f"distinct pixel(s) of the {width}x{height} px source")
    trg_points, scores = transfer_keypoints(src, trg, src_points, return_scores=True)
    report = {
        "source": str(source),
        "target": str(target),
        **({"mutual_nearest_neighbours": shared.lstrip("; ")} if shared else {}),
        "matches": [
            {"source": [int(a), int(b)], "target": [int(c), int(d)], "cosine": round(float(s), 6)}
            for (a, b), (c, d), s in zip(np.asarray(src_points), trg_points, scores)
        ],
    }
    if picture is not None:
        caption = caption_for(manifests, size=model.size, ensemble=model.ensemble, weights=model.weights,
                              what=f"{_matches(len(scores), mutual)} {source.name} -> {target.name}, coloured by "
                                   "cosine similarity" + (" (mutual nearest neighbours)" if mutual else "") + shared)
        draw_matches(source, target, src_points, trg_points, scores=scores, caption=caption, path=picture,
                     exif_transpose=not no_exif, max_pixels=model.load.max_pixels)
    _report(json.dumps(report, indent=2) + "\n", json_path, picture,
            f"{_matches(len(scores), mutual)}, cosine {_range(scores)}{shared}")


def _matches(count: int, distinct: bool) -> str:
    return f"{count} {'distinct ' if distinct else ''}match{'' if count == 1 else 'es'}"


@click.command()
@click.argument("frames_dir", type=click.Path(file_okay=False, path_type=Path))
@model_options()
@click.option("--points", required=True, help="Frame-0 pixels 'x,y x,y ...' to follow.")
@click.option(
    "--out", "-o", "picture", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Draw the tracks over the last frame (PNG).",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
    help="Write the tracks as JSON here ('-': stdout). Default: stdout, or a one-line summary with --out.",
)  # fmt: skip
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@friendly_errors
def track(frames_dir, model: ModelChoice, points, picture, json_path, no_exif) -> None:
    """Track --points of the first frame through FRAMES_DIR (frame images sorted by name; a video export)."""
    start = parse_points(points, None)
    model.check_kind("track", CLIPS)
    frames = frame_files(frames_dir)
    with model.open(exif_transpose=not no_exif) as extractor:
        maps = extractor.extract_video(frames, model.size, model.ensemble, model.seed)
        manifests = manifests_of(extractor)
    tracks, scores = track_points(maps, start, return_scores=True)
    report = {
        "frames": [str(f) for f in frames],
        "tracks": [
            {"points": tracks[:, n].tolist(), "cosine": [round(float(c), 6) for c in scores[:, n]]}
            for n in range(tracks.shape[1])
        ],
    }
    if picture is not None:
        caption = caption_for(manifests, size=model.size, ensemble=model.ensemble, weights=model.weights,
                              what=f"{tracks.shape[1]} point(s) of {frames[0].name} tracked through {len(frames)} "
                                   f"frames, drawn over {frames[-1].name} (ring: start, dot: end)")
        draw_tracks(frames[-1], tracks, caption=caption, path=picture, exif_transpose=not no_exif,
                    max_pixels=model.load.max_pixels)
    _report(json.dumps(report, indent=2) + "\n", json_path, picture,
            f"{tracks.shape[1]} point(s) through {len(frames)} frames, last-frame cosine {_range(scores[-1])}")


def _range(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return "n/a"
    return f"{values.min():.3f}..{values.max():.3f} (mean {values.mean():.3f})"


def _report(text: str, json_path: Path | None, picture: Path | None, summary: str) -> None:
    """JSON to --json (a file, or '-' for stdout); with only a picture, one summary line instead."""
    if json_path is not None:
        emit_text(text, None if str(json_path) == "-" else json_path)
    elif picture is None:
        emit_text(text, None)
    if picture is not None:
        click.echo(f"{summary}; wrote {picture}" + (f" and {json_path}" if json_path not in (None, Path("-")) else ""))
    elif json_path is not None and str(json_path) != "-":
        click.echo(f"{summary}; wrote {json_path}", err=True)


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", "-o", "picture", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write."
)
@model_options(required=False, model_help="Export folder; needed when SOURCE is an image rather than a feature file.")
@click.option("--pca-only", is_flag=True, help="Only the PCA picture, without the photo beside it.")
@click.option("--side-by-side", is_flag=True, hidden=True)  # the default now; kept so old scripts still run
@friendly_errors
def show(source, picture, model: ModelChoice, pca_only, side_by_side) -> None:
    """PCA-to-RGB picture of SOURCE's features beside the photo (an image with --model, or a feature file).

    The top three principal components of the feature vectors become red, green and blue: parts the
    model sees as alike share a colour.
    """
    what = "PCA of the features (top 3 principal components as RGB; same colour, similar features)"
    if source.suffix in (".safetensors", ".npy"):
        features = load_features(source)
        image, caption = None, file_caption(feature_file_metadata(source), what)
    else:
        if model.export_dir is None:
            raise InputError(f"{source} is an image: give --model EXPORT_DIR (or pass a feature file)")
        model.check_kind("show", IMAGES)
        with model.open() as extractor:
            (features,) = extractor.extract([source], model.size, model.ensemble, model.seed)
            caption = caption_for(manifests_of(extractor), size=model.size, ensemble=model.ensemble,
                                  weights=model.weights,
                                  what=f"{source.name}: {what}")
        image = None if pca_only else source
    draw_pca(features, image=image, caption=caption, path=picture, max_pixels=model.load.max_pixels)
    click.echo(f"wrote {picture}", err=True)

"""`ditf match`, `ditf track` (video exports) and `ditf show`: one image pair, one clip, one picture."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from PIL import Image

from ..draw import BACKGROUND, GAP, draw_matches, draw_tracks, pca_image, save_png
from ..errors import InputError
from ..matching import cell_centers, mutual_nn_matches, track_points, transfer_keypoints
from ..preprocess import frame_files, open_image
from ..storage import load_features
from .options import ModelChoice, emit_text, friendly_errors, model_options


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
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the matches as JSON here instead of stdout.",
)
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@friendly_errors
def match(source, target, model: ModelChoice, points, points_file, max_matches, picture, json_path, no_exif) -> None:
    """Match SOURCE to TARGET: transfer --points, or list mutual nearest neighbours."""
    src_points = parse_points(points, points_file)
    with model.open(exif_transpose=not no_exif) as extractor:
        src, trg = extractor.extract([source, target], model.size, model.ensemble, model.seed)
    if src_points is None:
        cells_a, cells_b, _ = mutual_nn_matches(src, trg)
        cells_a, cells_b = cells_a[:max_matches], cells_b[:max_matches]
        src_points = cell_centers(cells_a, src.grid_size, src.image_size)
    trg_points, scores = transfer_keypoints(src, trg, src_points, return_scores=True)
    report = {
        "source": str(source),
        "target": str(target),
        "matches": [
            {"source": [int(a), int(b)], "target": [int(c), int(d)], "cosine": round(float(s), 6)}
            for (a, b), (c, d), s in zip(np.asarray(src_points), trg_points, scores)
        ],
    }
    emit_text(json.dumps(report, indent=2) + "\n", json_path)
    if picture is not None:
        draw_matches(source, target, src_points, trg_points, path=picture, exif_transpose=not no_exif)
        click.echo(f"wrote {picture}", err=True)


@click.command()
@click.argument("frames_dir", type=click.Path(file_okay=False, path_type=Path))
@model_options()
@click.option("--points", required=True, help="Frame-0 pixels 'x,y x,y ...' to follow.")
@click.option(
    "--out", "-o", "picture", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Draw the tracks over the last frame (PNG).",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write the tracks as JSON here instead of stdout.",
)  # fmt: skip
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@friendly_errors
def track(frames_dir, model: ModelChoice, points, picture, json_path, no_exif) -> None:
    """Track --points of the first frame through FRAMES_DIR (frame images sorted by name; a video export)."""
    start = parse_points(points, None)
    frames = frame_files(frames_dir)
    with model.open(exif_transpose=not no_exif) as extractor:
        maps = extractor.extract_video(frames, model.size, model.ensemble, model.seed)
    tracks, scores = track_points(maps, start, return_scores=True)
    report = {
        "frames": [str(f) for f in frames],
        "tracks": [
            {"points": tracks[:, n].tolist(), "cosine": [round(float(c), 6) for c in scores[:, n]]}
            for n in range(tracks.shape[1])
        ],
    }
    emit_text(json.dumps(report, indent=2) + "\n", json_path)
    if picture is not None:
        draw_tracks(frames[-1], tracks, path=picture, exif_transpose=not no_exif)
        click.echo(f"wrote {picture}", err=True)


@click.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", "-o", "picture", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write."
)
@model_options(required=False, model_help="Export folder; needed when SOURCE is an image rather than a feature file.")
@click.option("--side-by-side", is_flag=True, help="Put the image left of its PCA picture (image input only).")
@friendly_errors
def show(source, picture, model: ModelChoice, side_by_side) -> None:
    """PCA-to-RGB picture of SOURCE's features (an image with --model, or a .safetensors/.npy file)."""
    if source.suffix in (".safetensors", ".npy"):
        features = load_features(source)
        image = None
    else:
        if model.export_dir is None:
            raise InputError(f"{source} is an image: give --model EXPORT_DIR (or pass a feature file)")
        with model.open() as extractor:
            (features,) = extractor.extract([source], model.size, model.ensemble, model.seed)
        image = open_image(source)
    pca = pca_image(features)
    if side_by_side and image is not None:
        canvas = Image.new("RGB", (image.width + GAP + pca.width, max(image.height, pca.height)), BACKGROUND)
        canvas.paste(image, (0, 0))
        canvas.paste(pca, (image.width + GAP, 0))
        pca = canvas
    save_png(pca, picture)
    click.echo(f"wrote {picture}", err=True)

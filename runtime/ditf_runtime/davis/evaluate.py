"""`evaluate_davis`: propagate each video's first-frame masks with an extractor's features, write the
masks as DAVIS-style indexed PNGs, score them with J and F.

Output folder (resumable):

    OUT/ditf-davis.json          what the masks depend on (model, sizes, propagation settings)
    OUT/<video>/<frame>.png      one indexed PNG per frame, each written atomically

A video whose PNGs all exist is finished and is only re-scored on a rerun; an interrupted video
is propagated again from its first frame (propagation is sequential). A folder made with other
settings is refused unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..annotate import RANDOM_WEIGHTS, Caption, describe_run
from ..errors import InputError
from ..manifest import write_text_atomic
from .dataset import Video, load_videos
from .features import frame_features, protocol_size
from ..run_records import extractor_record, refuse_other_settings
from .masks import decode_labels, labels_to_grid, read_label_png, write_label_png
from .metrics import boundary_f, region_similarity
from .overlay import draw_mask_overlay
from .propagation import LabelPropagator, PropagationSettings, one_hot
from .results import DavisResult, ObjectScore, VideoSummary

RUN_RECORD = "ditf-davis.json"
FRAME_RESIZE = "PIL bilinear"  # the authors use OpenCV's INTER_LINEAR (README: how little it differs)


def evaluate_davis(
    extractor: Any,
    dataset: str | os.PathLike,
    split: str = "val",
    *,
    videos: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    overlay_dir: str | os.PathLike | None = None,
    size: int | None = None,
    n_last_frames: int = 7,
    radius: int = 12,
    topk: int = 5,
    temperature: float = 0.1,
    resolution: str = "480p",
    clip_frames: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **extract_options: Any,
) -> DavisResult:
    """DAVIS-2017 semi-supervised label propagation with `extractor`'s features, scored with J&F.

    `extractor`: an Extractor, or anything with `extract(images, size=..., **extract_options)`
    returning [1, C, h, w] maps per uint8 frame (video exports: `is_video`, `frame_range`,
    `extract_video`). `size` is the short side S of the resized frames (default: the export
    manifest's long side; the authors use 480). Masks go to `out_dir` (a temporary folder when
    None), overlay pictures to `overlay_dir`. `extract_options` (ensemble, seed) go to extract.
    """
    settings = PropagationSettings(n_last_frames, radius, topk, temperature)
    short_side = _short_side(extractor, size)
    video_list = load_videos(dataset, split, videos, resolution)  # every input checked before the model runs
    record = _run_record(extractor, split, resolution, short_side, settings, clip_frames, extract_options)
    described = describe_run(extractor, size=short_side, ensemble=extract_options.get("ensemble"), side="short side")
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ditf-davis-")))
        else:
            folder = Path(out_dir)
            _check_run_record(folder, record, overwrite)
        pending = [v for v in video_list if overwrite or out_dir is None or not _finished(v, folder)]
        pending_names = {v.name for v in pending}
        bar = _progress_bar(sum(len(v.frames) for v in pending), progress)
        stack.callback(bar.close)
        for video in pending:
            bar.set_postfix_str(video.name)
            _propagate_video(extractor, video, folder, short_side, settings, clip_frames, bar, extract_options)
        scores, summaries, unscored = [], [], []
        for video in video_list:
            if overlay_dir is not None:
                _draw_overlays(video, folder, Path(overlay_dir), overwrite, described)
            objects = score_video(video, folder / video.name)
            if objects is None:
                unscored.append(video.name)
                continue
            scores.extend(objects)
            summaries.append(_summary(video, objects, resumed=video.name not in pending_names))
    return DavisResult(scores, summaries, record, None if out_dir is None else str(out_dir), unscored, described)


def _short_side(extractor: Any, size: int | None) -> int:
    manifest = getattr(extractor, "manifest", None)
    if size is None:
        if manifest is None:
            raise InputError("give size= (the frames' short side; the authors use 480): this extractor has no manifest")
        size = manifest.preprocess.long_side
    size = int(size)
    geometry = getattr(extractor, "geometry", None)
    multiple = getattr(geometry, "size_multiple", 1)
    if size < 32 or size % multiple:
        raise InputError(
            f"size {size} does not fit: the short side must be >= 32 and a multiple of the model's size multiple "
            f"{multiple} (the authors use 480)"
        )
    return size


def _run_record(extractor, split, resolution, short_side, settings, clip_frames, extract_options) -> dict[str, Any]:
    model = extractor_record(extractor)
    return {
        "model": model,
        "split": split,
        "resolution": resolution,
        "short_side": short_side,
        "frame_resize": FRAME_RESIZE,
        "n_last_frames": settings.n_last_frames,
        "radius": settings.radius,
        "topk": settings.topk,
        "temperature": settings.temperature,
        "clip_frames": clip_frames,
        "extract_options": {k: v for k, v in sorted(extract_options.items()) if k != "noise"},
    }


def _check_run_record(folder: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix masks of another model or other settings into `folder`."""
    path = folder / RUN_RECORD
    comparable = json.loads(json.dumps(record))  # what the record reads back as (tuples -> lists)
    refuse_other_settings(path, comparable, overwrite, holds="masks", unit="video")
    write_text_atomic(path, json.dumps(comparable, indent=2) + "\n")


def _finished(video: Video, folder: Path) -> bool:
    return all((folder / video.name / f"{name}.png").is_file() for name in video.frame_names)


def _propagate_video(extractor, video: Video, folder: Path, short_side, settings, clip_frames, bar, options) -> None:
    size = protocol_size(*video.size, short_side)
    names = video.frame_names
    target = folder / video.name
    features = frame_features(extractor, video.frames, size, clip_frames=clip_frames, **options)
    first = next(features)
    grid = first.shape[-2:]
    labels = labels_to_grid(video.first_labels, grid)
    propagator = LabelPropagator(first, one_hot(labels, video.objects + 1), settings)
    write_label_png(target / f"{names[0]}.png", video.first_labels)
    bar.update(1)
    done = 1
    for index, frame in enumerate(features, start=1):
        if index >= len(names) or frame.shape[-2:] != grid:
            raise InputError(
                f"{video.name}: the extractor gave a map of grid {frame.shape[-2:]} for frame {index} "
                f"(expected {len(names)} maps of grid {tuple(grid)})"
            )
        soft = propagator.step(frame)
        write_label_png(target / f"{names[index]}.png", decode_labels(soft, size, video.size))
        bar.update(1)
        done += 1
    if done != len(names):
        raise InputError(f"{video.name}: the extractor gave {done} maps for {len(names)} frames")


def score_video(video: Video, masks_dir: str | os.PathLike) -> list[ObjectScore] | None:
    """Per object J and F over the scored frames; None when the dataset has no ground truth for them."""
    if not video.has_ground_truth:
        return None
    masks_dir = Path(masks_dir)
    frames = list(video.scored_frames)
    j = np.zeros((video.objects, len(frames)))
    f = np.zeros((video.objects, len(frames)))
    for column, index in enumerate(frames):
        truth = video.ground_truth(index)
        path = masks_dir / f"{video.frames[index].stem}.png"
        if not path.is_file():
            raise InputError(f"{path}: predicted mask missing")
        predicted = read_label_png(path)
        if predicted.shape != truth.shape:
            raise InputError(f"{path}: mask is {predicted.shape} (h, w), the annotation {truth.shape}")
        if int(predicted.max()) > video.objects:
            raise InputError(f"{path}: object id {int(predicted.max())} is not among the video's 1..{video.objects}")
        for k in range(1, video.objects + 1):
            j[k - 1, column] = region_similarity(truth == k, predicted == k)
            f[k - 1, column] = boundary_f(truth == k, predicted == k)
    return [ObjectScore(video.name, k + 1, j[k], f[k]) for k in range(video.objects)]


def _summary(video: Video, objects: list[ObjectScore], resumed: bool) -> VideoSummary:
    j_mean = float(np.mean([o.j_stats[0] for o in objects]))
    f_mean = float(np.mean([o.f_stats[0] for o in objects]))
    return VideoSummary(video.name, len(video.frames), video.objects, j_mean, f_mean, resumed)


def _draw_overlays(video: Video, masks: Path, overlay_dir: Path, overwrite: bool,
                   described: dict[str, Any] | None) -> None:
    objects = list(range(1, video.objects + 1))
    caption = None if described is None else Caption(
        ("masks propagated from the first frame's annotation by label propagation", *described["caption"]),
        RANDOM_WEIGHTS if described["warning"] else None)
    for frame in video.frames:
        path = overlay_dir / video.name / f"{frame.stem}.png"
        if path.is_file() and not overwrite:
            continue
        labels = read_label_png(masks / video.name / f"{frame.stem}.png")
        draw_mask_overlay(frame, labels, objects=objects, title=f"{video.name} {frame.stem}", caption=caption,
                          path=path)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from ..progress import progress_bar

    return progress_bar(total=total, unit="frame", desc="DAVIS propagation")

"""The DAVIS-2017 folder layout, checked before any model runs.

    ROOT/ImageSets/2017/<split>.txt              one video name per line
    ROOT/JPEGImages/<resolution>/<video>/*.jpg   frames, sorted by name
    ROOT/Annotations/<resolution>/<video>/*.png  indexed PNGs named like the frames (0 = background)

The first frame's annotation is required (it is what gets propagated); the others are needed
only for scoring, which skips the first and the last frame as the official evaluation does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from .masks import MAX_OBJECTS, VOID_LABEL, read_label_png

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLIT_YEAR = "2017"


@dataclass(frozen=True, eq=False)
class Video:
    """One sequence: its frames, their annotations where present, and its first frame's objects."""

    name: str
    frames: tuple[Path, ...]
    annotations: tuple[Path | None, ...]  # per frame; None where the dataset has none
    size: tuple[int, int]  # (height, width) of every frame
    first_labels: np.ndarray  # uint8 [H, W] object ids of frame 0, void (255) read as background

    @property
    def objects(self) -> int:
        """N: objects are ids 1..N, N the largest id of the first annotation (the official count)."""
        return int(self.first_labels.max())

    @property
    def frame_names(self) -> list[str]:
        return [p.stem for p in self.frames]

    @property
    def scored_frames(self) -> range:
        """Indices the official semi-supervised evaluation scores: all but the first and the last."""
        return range(1, len(self.frames) - 1)

    @property
    def has_ground_truth(self) -> bool:
        """Scorable: at least one scored frame, each annotated (a test split annotates only frame 0)."""
        return len(self.scored_frames) > 0 and all(self.annotations[i] is not None for i in self.scored_frames)

    def ground_truth(self, index: int) -> np.ndarray:
        """uint8 [H, W] ids of frame `index`; ids the first frame does not have are an error."""
        path = self.annotations[index]
        if path is None:
            raise InputError(f"{self.name}: frame {self.frames[index].name} has no annotation to score against")
        labels = read_label_png(path)
        if labels.shape != self.size:
            raise InputError(f"{path}: annotation is {labels.shape[1]}x{labels.shape[0]}, its frame is "
                             f"{self.size[1]}x{self.size[0]} (width x height)")  # fmt: skip
        labels = np.where(labels == VOID_LABEL, 0, labels)
        if int(labels.max()) > self.objects:
            unknown = sorted(int(v) for v in np.unique(labels[labels > self.objects]))
            raise InputError(
                f"{path}: object ids {unknown} do not appear in the first frame (ids 1..{self.objects}); "
                "semi-supervised propagation can only follow the first frame's objects"
            )
        return labels


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    path = Path(root) / "ImageSets" / SPLIT_YEAR / f"{split}.txt"
    if not path.is_file():
        raise InputError(
            f"{path} not found: expected the DAVIS-2017 layout ROOT/ImageSets/{SPLIT_YEAR}/<split>.txt, "
            "ROOT/JPEGImages/480p/<video>/, ROOT/Annotations/480p/<video>/"
        )
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path} lists no videos")
    return names


def load_videos(
    root: str | os.PathLike,
    split: str = "val",
    videos: Sequence[str] | None = None,
    resolution: str = "480p",
) -> list[Video]:
    """The split's videos (or the named ones, which must be in the split), each checked."""
    root = Path(root)
    names = read_split(root, split)
    if videos is not None:
        wanted = [v.strip() for v in videos if v.strip()]
        if not wanted:
            raise InputError("no video names given: pass names from the split, or none for all of it")
        missing = [v for v in wanted if v not in names]
        if missing:
            raise InputError(
                f"videos {missing} are not in ImageSets/{SPLIT_YEAR}/{split}.txt ({len(names)} videos, e.g. "
                f"{', '.join(names[:3])}); check --videos or --split"
            )
        names = list(dict.fromkeys(wanted))
    return [load_video(root, name, resolution) for name in names]


def load_video(root: str | os.PathLike, name: str, resolution: str = "480p") -> Video:
    root = Path(root)
    frame_dir = root / "JPEGImages" / resolution / name
    annotation_dir = root / "Annotations" / resolution / name
    if not frame_dir.is_dir():
        raise InputError(f"{frame_dir}: no such folder of frames for video {name!r}")
    frames = sorted((p for p in frame_dir.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                    key=lambda p: p.name)  # fmt: skip
    if not frames:
        raise InputError(f"{frame_dir}: the video folder holds no frames ({', '.join(FRAME_SUFFIXES)})")
    annotations = tuple((annotation_dir / f"{p.stem}.png") if (annotation_dir / f"{p.stem}.png").is_file() else None
                        for p in frames)  # fmt: skip
    if annotations[0] is None:
        raise InputError(
            f"{annotation_dir / (frames[0].stem + '.png')} not found: the first frame's annotation is what "
            f"gets propagated; video {name!r} cannot be evaluated without it"
        )
    size = _check_sizes(name, frames)
    first = read_label_png(annotations[0])
    if first.shape != size:
        raise InputError(f"{annotations[0]}: annotation is {first.shape[1]}x{first.shape[0]}, the frames are "
                         f"{size[1]}x{size[0]} (width x height)")  # fmt: skip
    first = np.where(first == VOID_LABEL, 0, first).astype(np.uint8)
    if first.max() == 0:
        raise InputError(f"{annotations[0]}: the first annotation has no object (all background): nothing to propagate")
    if first.max() > MAX_OBJECTS:
        raise InputError(f"{annotations[0]}: object id {first.max()} is above {MAX_OBJECTS}")
    return Video(name, tuple(frames), annotations, size, first)


def _check_sizes(name: str, frames: list[Path]) -> tuple[int, int]:
    sizes = []
    for path in frames:
        try:
            with Image.open(path) as image:  # reads the header only
                sizes.append((image.height, image.width))
        except OSError as exc:
            raise InputError(f"{path}: not a readable frame ({exc})") from exc
    first = sizes[0]
    for path, size in zip(frames, sizes):
        if size != first:
            raise InputError(
                f"video {name!r} mixes frame sizes: {frames[0].name} is {first[1]}x{first[0]} but {path.name} is "
                f"{size[1]}x{size[0]} (width x height); every frame of a video must have one size"
            )
    return first

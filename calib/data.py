"""Calibration data: real images through the runtime's own preprocessing, with seeded noise.

One data protocol (STYLE.md, after Polygraphy's DataLoader): any iterable of
`{input_name: np.ndarray}`, in the graph's own layout (graph_io.GraphIO). The feeds are exactly what
deployment feeds the graph:
`ditf_runtime.preprocess.prepare` (docs/DESIGN.md, "The feature" step 1: long side, rounding to the size multiple,
bicubic, RGB, [-1, 1], EXIF orientation) and `ditf_runtime.noise.default_noise` (noise keyed by the
image content and a seed), one image per feed since images differ in size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ditf_runtime.errors import ImageError, InputError
from ditf_runtime.manifest import Geometry, Preprocess
from ditf_runtime.noise import default_noise
from ditf_runtime.preprocess import IMAGE_SUFFIXES, PreparedImage, prepare

from .graph_io import ENSEMBLE, FRAMES, IMAGE, NOISE, GraphIO, Sizes


class CalibrationError(ValueError):
    """The calibration images cannot be used; the message says which and why."""


def list_images(folder: str | os.PathLike, option: str = "--calib-images") -> list[Path]:
    """Image files directly in `folder`, sorted by name (so calibration is reproducible).

    `option` is the command-line option that named the folder, for the messages.
    """
    folder = Path(folder)
    if not folder.exists():
        raise CalibrationError(f"{option} {folder}: no such folder")
    if not folder.is_dir():
        raise CalibrationError(f"{option} {folder}: not a folder (give a folder of images)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise CalibrationError(
            f"{option} {folder}: no images ({', '.join(sorted(s[1:] for s in IMAGE_SUFFIXES))}) in it; "
            "give a folder of real photos like the ones the model will see (e.g. examples/images)"
        )
    return files


def check_folder(folder: str | os.PathLike, option: str = "--calib-images") -> list[Path]:
    """Every image in `folder` decodes (a cheap check before any heavy work); returns the files."""
    from ditf_runtime.preprocess import open_image

    files = list_images(folder, option)
    for path in files:
        try:
            open_image(path)
        except (ImageError, InputError) as exc:
            raise CalibrationError(f"{option}: {exc}; remove or replace that file") from exc
    return files


@dataclass(frozen=True)
class CalibrationSet:
    """A folder of images prepared once; `feeds()` yields graph inputs in the graph's own layout (`io`).

    Image inputs take the prepared pixels, noise inputs the runtime's seeded default noise. Graphs with
    a frames axis get each photo as a still clip of `frames` frames with fresh noise per frame (seeded by
    the image's index): massive channels and activation ranges are properties of the channel, not of
    the motion.
    """

    images: tuple[PreparedImage, ...]
    io: GraphIO
    ensemble: int
    seed: int = 0
    frames: int | None = None  # clip length for graphs with a frames axis

    def __len__(self) -> int:
        return len(self.images)

    @property
    def geometry(self) -> Geometry:
        return self.io.geometry

    def feeds(self, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        seed = self.seed if seed is None else seed
        for i, img in enumerate(self.images):
            yield self._in_layout(img.pixels[None], seed, i)

    def feeds_per_draw(self, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """`feeds()`, each split into one feed per noise draw (the noise's ensemble axis; the image repeated):
        the same values, so the same statistics, with 1/E of the transformer's activations held per run
        (attention scores grow with E: on FLUX.1-dev's widths at 640 px, 428 MB per draw and copy)."""
        for feed in self.feeds(seed):
            axes = {t.name: t.axis_index(ENSEMBLE) for t in self.io.inputs if t.role == NOISE}
            axes = {name: axis for name, axis in axes.items() if axis is not None and name in feed}
            draws = {feed[name].shape[axis] for name, axis in axes.items()}
            if len(draws) != 1 or draws == {1}:
                yield feed
                continue
            for e in range(draws.pop()):
                yield {name: np.ascontiguousarray(np.take(arr, [e], axis=axes[name])) if name in axes else arr
                       for name, arr in feed.items()}

    def batched(self, size: tuple[int, int], seed: int | None = None) -> dict[str, np.ndarray]:
        """All images resized to one (H, W) (aspect not kept) in one batch: for parity, where
        nearest-neighbour agreement matches tokens across images."""
        from PIL import Image

        seed = self.seed + 1 if seed is None else seed
        h, w = size
        pixels = []
        for img in self.images:
            unit = ((img.pixels.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
            resized = np.asarray(Image.fromarray(unit).resize((w, h), Image.Resampling.BICUBIC), np.float32)
            pixels.append((resized / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)).transpose(2, 0, 1))
        return self._in_layout(np.ascontiguousarray(np.stack(pixels)), seed, 0)

    def _in_layout(self, pixels: np.ndarray, seed: int, index: int) -> dict[str, np.ndarray]:
        """pixels [N, 3, H, W] -> a feed of every graph input (still clips where the graph has frames)."""
        if self.frames is not None:
            return self._still_clip(pixels, seed, index)
        feed = {}
        for t in self.io.inputs:
            if t.role == IMAGE:
                feed[t.name] = pixels
            elif t.role == NOISE:
                feed[t.name] = np.stack([default_noise(p, self.geometry, self.ensemble, seed) for p in pixels])
            else:
                raise CalibrationError(f"graph input {t.name}: calibration has no rule for {t.role!r} inputs")
        return feed

    def _still_clip(self, pixels: np.ndarray, seed: int, index: int) -> dict[str, np.ndarray]:
        frames = int(self.frames)
        sizes = Sizes(batch=pixels.shape[0], height=pixels.shape[-2], width=pixels.shape[-1],
                      ensemble=self.ensemble, frames=frames)
        rng = np.random.default_rng([int(seed), index, frames])
        feed = {}
        for t in self.io.inputs:
            if t.role == IMAGE:
                axis = t.axis_index(FRAMES)
                feed[t.name] = np.ascontiguousarray(np.repeat(np.expand_dims(pixels, axis), frames, axis=axis))
            elif t.role == NOISE:
                feed[t.name] = rng.standard_normal(t.shape(sizes), dtype=np.float32)
            else:
                raise CalibrationError(f"graph input {t.name}: calibration has no rule for {t.role!r} inputs")
        return feed


def load_calibration_set(folder: str | os.PathLike | Sequence[os.PathLike], *, io: GraphIO,
                         long_side: int | Sequence[int], ensemble: int = 2, seed: int = 0,
                         max_images: int | None = None, frames: int | None = None,
                         option: str = "--calib-images") -> CalibrationSet:
    """Read and preprocess every image in `folder` (or the listed files); any unreadable one is an error
    naming the file.

    long_side: the runtime's resize rule (long side, aspect kept); several: every image at each of them
    (calibrating at several sizes the graph will run at). frames: clip length for graphs with a frames
    axis (default: the graph's most, at most graph_io.CHECK_FRAMES: io.check_frames()).
    """
    files = list_images(folder, option) if isinstance(folder, (str, os.PathLike)) else [Path(f) for f in folder]
    if max_images is not None:
        files = files[:max_images]
    if ensemble < 1:
        raise CalibrationError("calibration ensemble must be >= 1")
    sides = (int(long_side),) if isinstance(long_side, (int, np.integer)) else tuple(int(s) for s in long_side)
    images = []
    for side in sides:
        spec = Preprocess(long_side=side)
        for path in files:
            try:
                images.append(prepare(path, spec, io.geometry))
            except (ImageError, InputError) as exc:
                raise CalibrationError(f"{option}: {exc}; remove or replace that file") from exc
    if io.has_axis(FRAMES):
        frames = int(frames or io.check_frames())
    elif frames is not None:
        raise CalibrationError("frames= is for graphs with a frames axis (video); this graph has none")
    return CalibrationSet(tuple(images), io, int(ensemble), int(seed), frames)

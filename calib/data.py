"""Calibration data: real images through the runtime's own preprocessing, with seeded noise.

One data protocol (STYLE.md, after Polygraphy's DataLoader): any iterable of
`{input_name: np.ndarray}`. The feeds are exactly what deployment feeds the graph:
`ditf_runtime.preprocess.prepare` (DESIGN.md §2 step 1: long side, rounding to the size multiple,
bicubic, RGB, [-1, 1], EXIF orientation) and `ditf_runtime.noise.default_noise` (noise keyed by the
image content and a seed), one image per feed since images differ in size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ditf_runtime.errors import ImageError, InputError
from ditf_runtime.manifest import IMAGE_INPUT, NOISE_INPUT, Geometry, Preprocess
from ditf_runtime.noise import default_noise
from ditf_runtime.preprocess import PreparedImage, prepare

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class CalibrationError(ValueError):
    """The calibration images cannot be used; the message says which and why."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder`, sorted by name (so calibration is reproducible)."""
    folder = Path(folder)
    if not folder.exists():
        raise CalibrationError(f"--calib-images {folder}: no such folder")
    if not folder.is_dir():
        raise CalibrationError(f"--calib-images {folder}: not a folder (give a folder of images)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise CalibrationError(
            f"--calib-images {folder}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES[:4])}, ...) in it; "
            "give a folder of real photos like the ones the model will see (e.g. examples/images)"
        )
    return files


def check_folder(folder: str | os.PathLike) -> list[Path]:
    """Every image in `folder` decodes (a cheap check before any heavy work); returns the files."""
    from ditf_runtime.preprocess import open_image

    files = list_images(folder)
    for path in files:
        try:
            open_image(path)
        except (ImageError, InputError) as exc:
            raise CalibrationError(f"--calib-images: {exc}; remove or replace that file") from exc
    return files


@dataclass(frozen=True)
class CalibrationSet:
    """A folder of images prepared once; `feeds()` yields graph inputs with seeded noise."""

    images: tuple[PreparedImage, ...]
    geometry: Geometry
    ensemble: int
    seed: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def feeds(self, seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        seed = self.seed if seed is None else seed
        for img in self.images:
            noise = default_noise(img.pixels, self.geometry, self.ensemble, seed)
            yield {IMAGE_INPUT: img.pixels[None], NOISE_INPUT: noise[None]}

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
        image = np.ascontiguousarray(np.stack(pixels))
        noise = np.stack([default_noise(p, self.geometry, self.ensemble, seed) for p in image])
        return {IMAGE_INPUT: image, NOISE_INPUT: noise}


def load_calibration_set(folder: str | os.PathLike, *, long_side: int, latent_channels: int,
                         size_multiple: int = 16, vae_stride: int = 8, ensemble: int = 2,
                         seed: int = 0, max_images: int | None = None) -> CalibrationSet:
    """Read and preprocess every image in `folder`; any unreadable one is an error naming the file."""
    files = list_images(folder)
    if max_images is not None:
        files = files[:max_images]
    spec = Preprocess(long_side=int(long_side))
    geometry = Geometry(latent_channels=int(latent_channels), feature_channels=0, vae_stride=vae_stride,
                        feature_stride=size_multiple, size_multiple=size_multiple)
    images = []
    for path in files:
        try:
            images.append(prepare(path, spec, geometry))
        except (ImageError, InputError) as exc:
            raise CalibrationError(f"--calib-images: {exc}; remove or replace that file") from exc
    if ensemble < 1:
        raise CalibrationError("calibration ensemble must be >= 1")
    return CalibrationSet(tuple(images), geometry, int(ensemble), int(seed))

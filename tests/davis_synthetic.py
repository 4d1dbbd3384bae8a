"""A synthetic DAVIS-2017 set and a hand-made feature extractor, for tests and bench/davis_resize_check.py.

Frames: a red striped disc drifting right over a smooth random background, and a blue checker
square sliding left until it leaves the frame (after frame 7 at any size), as JPEGs; masks as
indexed PNGs with the DAVIS palette; ImageSets/2017/val.txt listing the videos. Positions and
texture periods are fractions of the frame size, so any size draws the same scene.

Random-weight models carry no notion of "the same thing moved"; ColourFeatures does: per cell,
the mean and spread of R, G, B through a fixed tanh layer, so cells of one object look alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ditf_runtime.davis.masks import write_label_png
from PIL import Image


def render(background: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t over `background` (float [H, W, 3]): uint8 RGB and its label map (1 = disc, 2 = square)."""
    height, width = background.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    unit = height / 96  # texture and sizes scale with the frame
    image = background.copy()
    labels = np.zeros((height, width), np.uint8)
    cx, cy = width * (0.25 + 0.04375 * t), height * (0.47 + 0.021 * t)
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= (20 * unit) ** 2
    stripes = np.sin((xx + yy) / (3.0 * unit)) > 0
    image[disc] = np.where(stripes[disc, None], [220, 40, 40], [160, 20, 60])
    labels[disc] = 1
    x0, y0, side = width * (0.625 - 0.1125 * t), 20 * unit, 28 * unit
    square = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
    checker = (xx // (5 * unit) + yy // (5 * unit)) % 2 == 0
    image[square] = np.where(checker[square, None], [30, 60, 230], [60, 160, 240])
    labels[square] = 2
    return np.clip(image, 0, 255).astype(np.uint8), labels


def make_davis(root: Path, videos=("shapes-a", "shapes-b"), frames: int = 9, size=(96, 160)) -> dict:
    """Write ROOT in DAVIS-2017's layout (frames of `size` (h, w)); return the true label maps per video."""
    root = Path(root)
    height, width = size
    truth = {}
    for seed, name in enumerate(videos):
        rng = np.random.default_rng(seed)
        coarse = rng.uniform(0, 255, (9, 14, 3)).astype(np.uint8)
        background = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
        background = 70 + 0.35 * background.astype(np.float64) + np.array([0, 30, 0])
        frame_dir = root / "JPEGImages" / "480p" / name
        frame_dir.mkdir(parents=True)
        truth[name] = []
        for t in range(frames):
            image, labels = render(background, t)
            Image.fromarray(image).save(frame_dir / f"{t:05d}.jpg", quality=95)
            write_label_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels)
            truth[name].append(labels)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(videos) + "\n")
    return truth


class ColourFeatures:
    """Hand-made extractor: per `stride` x `stride` cell, mean and spread of R, G, B through a fixed tanh layer."""

    def __init__(self, channels: int = 32, stride: int = 8) -> None:
        rng = np.random.default_rng(0)
        self.weight = rng.standard_normal((channels, 6)).astype(np.float32)
        self.bias = (0.1 * rng.standard_normal(channels)).astype(np.float32)
        self.stride = stride
        self.frames_seen = 0

    def features(self, image) -> np.ndarray:
        pixels = np.asarray(image, np.float32) / 127.5 - 1
        s = self.stride
        height, width = pixels.shape[0] // s, pixels.shape[1] // s
        cells = pixels[: height * s, : width * s].reshape(height, s, width, s, 3)
        stats = np.concatenate([cells.mean(axis=(1, 3)), cells.std(axis=(1, 3))], axis=-1)
        return np.tanh(2 * stats @ self.weight.T + self.bias).transpose(2, 0, 1)[None].astype(np.float32)

    def extract(self, images, size=None, **options):
        self.frames_seen += len(images)
        return [self.features(image) for image in images]


class ClipColourFeatures(ColourFeatures):
    """The same features through the video-export interface, recording each clip's length."""

    is_video = True

    def __init__(self, frame_range=(2, 4)) -> None:
        super().__init__()
        self.frame_range = frame_range
        self.clips: list[int] = []

    def extract(self, images, size=None, **options):
        raise AssertionError("video exports take clips through extract_video")

    def extract_video(self, frames, size=None, **options):
        low, high = self.frame_range
        assert low <= len(frames) <= high, len(frames)
        self.clips.append(len(frames))
        return [self.features(frame) for frame in frames]

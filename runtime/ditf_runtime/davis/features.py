"""Frames in, one feature map per frame out, for any extractor-like object.

Frames are resized by the protocol (short side S, long side floored to a multiple of 32,
bilinear) before the extractor sees them, and handed over as uint8 arrays with `size` = their
long side, so an Extractor's own resize rule (long side S, sides rounded to its multiple) is a
no-op on them. Image exports go frame by frame through `extract`; video exports (`is_video`)
through `extract_video` in clips that fit `frame_range`. Anything with the same `extract`
signature returning [1, C, h, w] maps (a fused extractor, a stand-in in tests) works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from ..preprocess import open_image

LONG_SIDE_MULTIPLE = 32  # the authors floor the long side to a multiple of 32
DEFAULT_CLIP_FRAMES = 16  # video exports whose manifest gives no maximum clip length


def protocol_size(height: int, width: int, short_side: int, multiple: int = LONG_SIDE_MULTIPLE) -> tuple[int, int]:
    """(H, W) of a frame: the short side becomes `short_side`, the long side floor(long*S/short/multiple)*multiple.

    The same float operations as the authors' read_frame (portrait when height > width).
    """
    if height > width:
        new_width = short_side
        new_height = int(((short_side * height) / width // multiple) * multiple)
    else:
        new_height = short_side
        new_width = int(((short_side * width) / height // multiple) * multiple)
    return new_height, new_width


def read_frame(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] RGB frame resized bilinearly to `size` (H, W); the file's pixel frame, no EXIF turn."""
    image = open_image(path, exif_transpose=False)
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
    return np.asarray(image)


def frame_features(
    extractor: Any,
    frames: Sequence[str | Path],
    size: tuple[int, int],
    *,
    clip_frames: int | None = None,
    **extract_options: Any,
) -> Iterator[np.ndarray]:
    """Yield float32 [1, C, h, w] features of each frame in order, each computed once."""
    if getattr(extractor, "is_video", False):
        yield from _video_features(extractor, frames, size, clip_frames, extract_options)
        return
    batch = max(1, int(getattr(extractor, "batch_size", 1)))
    for start in range(0, len(frames), batch):
        pixels = [read_frame(path, size) for path in frames[start : start + batch]]
        for features in extractor.extract(pixels, size=max(size), **extract_options):
            yield np.asarray(features, dtype=np.float32)


def clip_windows(count: int, clip: int, low: int = 1) -> list[tuple[int, int, int]]:
    """(window start, first new frame, end) per clip: every frame once, every window `clip` long.

    The last window is moved back to stay full length (its leading frames were already computed
    and are not yielded again), so an engine built for one clip length serves the whole video.
    """
    if count < low:
        raise InputError(f"the video has {count} frame(s); this export takes clips of at least {low}")
    clip = max(clip, low)
    windows = []
    for first_new in range(0, count, clip):
        end = min(first_new + clip, count)
        start = max(0, min(first_new, count - clip))
        windows.append((start, first_new, end))
    return windows


def _video_features(extractor, frames, size, clip_frames, options) -> Iterator[np.ndarray]:
    low, high = extractor.frame_range
    clip = clip_frames or high or DEFAULT_CLIP_FRAMES
    if high is not None and clip > high:
        raise InputError(f"clip_frames {clip} exceeds the export's maximum of {high} frames per clip")
    for start, first_new, end in clip_windows(len(frames), clip, low):
        pixels = [read_frame(path, size) for path in frames[start:end]]
        maps = extractor.extract_video(pixels, size=max(size), **options)
        for features in maps[first_new - start :]:
            yield np.asarray(features, dtype=np.float32)

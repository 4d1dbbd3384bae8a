"""Images in, model arrays out: docs/DESIGN.md, "The feature" step 1, rebuilt from the manifest with PIL and numpy.

The authors' code (eval_spair.py) does

    scale = S / max(h, w)
    H = int(round(h * scale / 16)) * 16; W = int(round(w * scale / 16)) * 16
    img = img.resize((W, H))                      # PIL default: bicubic
    x = (PILToTensor()(img) / 255.0 - 0.5) * 2    # float32

and this module reproduces it bit for bit (same float operation order), plus what their code
leaves to chance: EXIF orientation, non-RGB modes, corrupt files and decompression bombs.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import DitfWarning, ImageError, InputError
from .manifest import Geometry, Preprocess

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

# The one decompression-bomb limit (`max_pixels=`, `--max-pixels`): Pillow's own warning threshold
# (Image.MAX_IMAGE_PIXELS, ~89.5 Mpx, a 9459x9459 image). Pillow's hard limit (twice that) is lifted
# while a file is opened under a larger limit, so ours is the only one a user meets.
DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS_HINT = "downscale it, or raise the limit with --max-pixels (max_pixels= in Python)"

# Images smaller than this on a side are mostly invented by the resize to the model size: warn.
MIN_IMAGE_SIDE = 32

# What counts as an image file in a folder (batch extraction's inputs, a video's frames).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})

# Transparent pixels are composited onto white: what a viewer shows on a white page. Dropping
# alpha instead would expose whatever colour an editor left under fully transparent pixels.
ALPHA_BACKGROUND = (255, 255, 255)


def describe(source: ImageSource) -> str:
    """A short name for messages: the path, or the kind of in-memory image."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"PIL image {source.mode} {source.size[0]}x{source.size[1]}"
    if isinstance(source, np.ndarray):
        return f"array {source.dtype} {tuple(source.shape)}"
    return type(source).__name__


def as_image_list(images) -> list:
    """One image or a sequence of images as a list: a path, PIL image or HxWx3 array is one image."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [images]
        raise InputError(f"an image array must be uint8 HxWx3, got shape {images.shape}; pass a list for several")
    try:
        return list(images)
    except TypeError:
        raise InputError(f"cannot read images from {type(images).__name__}") from None


def open_image(
    source: ImageSource,
    *,
    exif_transpose: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Read a path / PIL image / uint8 HxWx3 array as an 8-bit RGB PIL image.

    EXIF orientation is applied when `exif_transpose` (arrays carry none). Images with more than
    `max_pixels` pixels are refused before decoding; Pillow's own bomb error (at twice its
    threshold) is reported the same way, so the effective limit never exceeds ~179 Mpx.
    """
    if isinstance(source, np.ndarray):
        return _image_from_array(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels, describe(source))
        image = source
    elif isinstance(source, (str, os.PathLike)):
        image = _open_file(Path(source), max_pixels)
    else:
        raise InputError(
            f"cannot read an image from {type(source).__name__}: pass a path, a PIL image or a uint8 HxWx3 numpy array"
        )
    try:
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "refuse this image"
        raise ImageError(f"{describe(source)}: cannot decode the image ({exc})") from exc


def _open_file(path: Path, max_pixels: int | None) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        with warnings.catch_warnings(), _pillow_limit_at_least(max_pixels):
            # Our own limit decides; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
            _check_pixels(image.size, max_pixels, str(path))
            image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's hard limit fired first: it is above ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,}" if found else f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,}"
        raise ImageError(f"{path}: {count} pixels exceeds the limit of {max_pixels:,} (possible decompression "
                         f"bomb); {MAX_PIXELS_HINT}") from exc
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, truncated data, bad chunks...
        raise ImageError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    return image


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_limit_at_least(max_pixels: int | None):
    """Lift Pillow's hard limit (2 x Image.MAX_IMAGE_PIXELS) when ours is larger, so one limit applies.

    Only then is Pillow's process-wide setting touched (under a lock, restored afterwards): asking for
    a limit above Pillow's is the caller's explicit choice.
    """
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is None or (max_pixels is not None and max_pixels <= 2 * pillow):
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = pillow


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (possible decompression bomb); {MAX_PIXELS_HINT}"
        )


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"image arrays must be uint8 HxWx3 RGB, got {array.dtype} {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image array is empty: {tuple(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; alpha is composited on white, 16/32-bit scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit int)
        values = np.asarray(image).astype(np.float64)
        # Pillow's own convert() clips 16-bit values at 255, which turns most photos white.
        if mode.startswith("I;16") or values.max(initial=0) > 255:
            values = np.clip(values, 0, 65535) / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        if values.size and np.nanmax(values) <= 1.0:  # float images in [0, 1]
            values = values * 255.0
        gray = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def model_size(height: int, width: int, long_side: int, multiple: int) -> tuple[int, int]:
    """(H, W) the model sees: long side -> `long_side`, each side rounded to `multiple`.

    Same float operations in the same order as the authors (scale first), Python's round()
    (half to even). A side that would round to 0 (extreme aspect ratios) gets one `multiple`.
    """
    scale = long_side / max(height, width)
    model_h = int(round(height * scale / multiple)) * multiple
    model_w = int(round(width * scale / multiple)) * multiple
    return max(model_h, multiple), max(model_w, multiple)


def to_model_array(image: Image.Image, size: tuple[int, int], spec: Preprocess) -> np.ndarray:
    """Resize an RGB image to `size` (H, W) and scale to the manifest's range: float32 [3, H, W]."""
    try:
        resample = Image.Resampling[spec.resample.upper()]
    except KeyError:
        raise InputError(f"manifest preprocess.resample {spec.resample!r} is not a PIL filter") from None
    height, width = size
    if image.size != (width, height):
        image = image.resize((width, height), resample=resample)
    pixels = np.asarray(image, dtype=np.uint8)
    unit = pixels.astype(np.float32) / np.float32(255.0)
    low, high = spec.value_range
    # For (-1, 1) this is fl(2q - 1), bit-identical to the authors' (q - 0.5) * 2.
    scaled = unit * np.float32(high - low) + np.float32(low)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


class SmallImageWarning(DitfWarning):
    """An image so small that the model sees mostly the resize's interpolation."""


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the graph: its float32 [3, H, W] array and where it came from."""

    pixels: np.ndarray
    image_size: tuple[int, int]  # original (height, width), after EXIF orientation if applied
    name: str

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


def prepare(
    source: ImageSource,
    spec: Preprocess,
    geometry: Geometry,
    *,
    long_side: int | None = None,
    exif_transpose: bool | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    input_size: tuple[int, int] | None = None,
    check_size: Callable[[tuple[int, int]], None] | None = None,
    option: str = "--size",
) -> PreparedImage:
    """Read and preprocess one image the way the manifest says.

    `input_size` (H, W) forces the model size instead of the long-side rule: a video's frames all
    take their first frame's size. `check_size(model (H, W))` runs before the resize, which itself can
    take gigabytes at absurd sizes: the Extractor (and the server) check their memory budget there.
    The size limits are the export's own (geometry), for the command line and the server alike; `option`
    is how the caller names the long side in its messages (the server's requests: 'size').
    """
    if exif_transpose is None:
        exif_transpose = spec.exif_transpose
    long_side = spec.long_side if long_side is None else int(long_side)
    if long_side < geometry.size_multiple:
        raise InputError(f"size {long_side} is smaller than the model's size multiple {geometry.size_multiple}")
    check_size_limit(geometry, *(input_size or (long_side,)), what="size" if input_size is None else "input size",
                     option=option)
    image = open_image(source, exif_transpose=exif_transpose, max_pixels=max_pixels)
    width, height = image.size
    size = model_size(height, width, long_side, geometry.size_multiple) if input_size is None else input_size
    check_size_limit(geometry, *size, what="model size", option=option)
    if check_size is not None:
        check_size(size)
    if min(width, height) < MIN_IMAGE_SIDE:
        warnings.warn(SmallImageWarning(
            f"{describe(source)} is only {width}x{height} pixels: it is upscaled to {size[1]}x{size[0]} for the "
            f"model, so its features say little (images under {MIN_IMAGE_SIDE} px on a side are mostly resize)"
        ), stacklevel=2)
    return PreparedImage(to_model_array(image, size, spec), (height, width), describe(source))


def check_size_limit(geometry: Geometry, *sides: int, what: str = "size", option: str = "--size") -> None:
    """Refuse image sides past what the export supports (geometry.max_size): its position tables end
    there, and a larger grid would reuse or wrap positions and give wrong features without any error."""
    limit = geometry.max_size
    if limit is not None and max(sides) > limit:
        raise InputError(
            f"{what} {'x'.join(map(str, sides))} is past this export's limit: it is verified for image sides "
            f"up to {limit} px (its position tables cover token grids up to {limit // geometry.feature_stride} "
            f"per side at stride {geometry.feature_stride}); use {option} {limit} or less"
        )


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """A video's frames: the image files directly in `folder`, sorted by name (zero-pad the numbers)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of frames")
    frames = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda p: p.name)
    if not frames:
        raise InputError(f"{folder}: no frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return frames

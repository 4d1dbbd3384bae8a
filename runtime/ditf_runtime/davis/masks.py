"""Label maps in and out: the DAVIS palette, indexed PNGs, labels to the feature grid and back.

Read and written the way the authors' eval_davis.py does it: the first annotation is resized to
the feature grid with nearest-neighbour sampling (PIL); predicted soft labels are upsampled
bilinearly (align_corners=False), each label channel with a positive maximum is min-max
normalised, the argmax is taken and resized to the original frame with nearest-neighbour.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..draw import save_png
from ..errors import InputError

VOID_LABEL = 255  # DAVIS marks "don't care" pixels so; the official evaluation scores them as background
MAX_OBJECTS = 254


def davis_palette() -> np.ndarray:
    """[256, 3] uint8: the DAVIS / PASCAL VOC colour map (label bits spread over R, G, B from the top bit down)."""
    labels = np.arange(256)
    colors = np.zeros((256, 3), dtype=np.uint8)
    for level in range(8):  # label bits 3*level .. 3*level+2 go to bit (7 - level) of R, G, B
        for channel in range(3):
            bit = (labels >> (3 * level + channel)) & 1
            colors[:, channel] |= (bit << (7 - level)).astype(np.uint8)
    return colors


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W] object ids of an indexed (palette) or greyscale label PNG."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            labels = np.array(image)
            palette = image.getpalette() if mode == "P" else None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable annotation PNG ({exc})") from exc
    if mode not in ("P", "L"):
        raise InputError(
            f"{path}: a {mode} image; DAVIS annotations are indexed (palette) PNGs whose pixel values are object "
            "ids (0 = background): convert colour masks to ids first"
        )
    if palette is not None:
        entries = len(palette) // 3
        if labels.size and int(labels.max()) >= entries:
            unknown = sorted(int(v) for v in np.unique(labels[labels >= entries]))
            raise InputError(
                f"{path}: pixel values {unknown[:10]} have no entry in the PNG's {entries}-colour palette; "
                "this is not a DAVIS label map"
            )
    return labels


def write_label_png(path: str | os.PathLike, labels: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write uint8 [H, W] ids as an indexed PNG with the DAVIS palette, atomically."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette((davis_palette() if palette is None else palette).reshape(-1).tolist())
    return save_png(image, path)


def labels_to_grid(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an id map to the (h, w) feature grid, as PIL's NEAREST does it."""
    height, width = grid
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    return np.asarray(image.resize((width, height), resample=Image.Resampling.NEAREST))


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out, in] weights of a 1-D bilinear resize with align_corners=False (PyTorch's rule)."""
    scale = in_size / out_size
    source = (np.arange(out_size) + 0.5) * scale - 0.5
    source = np.maximum(source, 0.0)  # PyTorch clamps negative source coordinates to 0
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = source - low
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix.astype(np.float32)


def decode_labels(soft: np.ndarray, frame_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """uint8 [H0, W0] ids from [h, w, L] soft labels.

    Upsampled bilinearly to `frame_size` (the protocol's resized frame), each channel with a
    positive maximum min-max normalised, argmax over channels, nearest resize to `image_size`.
    """
    height, width = frame_size
    rows = bilinear_matrix(height, soft.shape[0])
    cols = bilinear_matrix(width, soft.shape[1])
    channels = np.ascontiguousarray(soft.transpose(2, 0, 1), dtype=np.float32)  # [L, h, w]
    up = rows @ channels @ cols.T  # [L, H, W]
    with np.errstate(invalid="ignore", divide="ignore"):
        for channel in up:
            if channel.max() > 0:
                channel -= channel.min()
                # A constant positive channel becomes 0/0 = NaN, and argmax (numpy's, like
                # torch.max) picks NaN: the authors' behaviour, kept so masks agree.
                channel /= channel.max()
    ids = np.argmax(up, axis=0).astype(np.uint8)
    if (height, width) != tuple(image_size):
        ids = np.asarray(Image.fromarray(ids).resize((image_size[1], image_size[0]), Image.Resampling.NEAREST))
    return ids

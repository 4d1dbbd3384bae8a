"""FeatureMap: one image's features and the geometry needed to match them back to pixels, and the
bilinear stencil (PyTorch's align_corners=False rule) that maps feature cells to pixels."""

from __future__ import annotations

import numpy as np

from .errors import InputError


class FeatureMap:
    """One image's features: float32 [1, C, h, w]; `np.asarray(fm)` gives the array.

    `image_size` is the original (height, width) the features describe (after EXIF orientation
    when it was applied), `input_size` the preprocessed (H, W) the model saw, `stride` the pixels
    of model input per feature cell (so h = H / stride).
    """

    __slots__ = ("array", "image_size", "input_size", "stride", "name")

    def __init__(self, array: np.ndarray, image_size, input_size, stride: int, name: str | None = None) -> None:
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[0] != 1:
            raise InputError(f"a FeatureMap holds [1, C, h, w] features, got {array.shape}")
        self.array = array
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.stride = int(stride)
        self.name = name

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and np.dtype(dtype) != self.array.dtype:
            return self.array.astype(dtype)
        return self.array.copy() if copy else self.array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def channels(self) -> int:
        return self.array.shape[1]

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) feature cells."""
        return self.array.shape[2], self.array.shape[3]

    def __repr__(self) -> str:
        return (
            f"FeatureMap(shape={self.shape}, image_size={self.image_size}, input_size={self.input_size}, "
            f"stride={self.stride}{'' if self.name is None else f', name={self.name!r}'})"
        )


def bilinear_stencil(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear (align_corners=False) source index and weights along one axis.

    Output index o reads input i0[o] with weight w0[o] and i0[o] + 1 with weight w1[o], where
    src = max((o + 0.5) * in / out - 0.5, 0), i0 = floor(src), w1 = src - i0. PyTorch clamps
    i0 + 1 to in - 1; callers pad the map by repeating its last row/column instead, which gives
    the same values and keeps i0 + 1 valid everywhere. On the last cell (i0 = in - 1) the weights
    are (1, 0): the upsampled value is exactly the edge cell there.
    """
    if in_size < 1 or out_size < 1:
        raise InputError(f"cannot upsample {in_size} cells to {out_size} pixels")
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    w1 = src - i0
    # Past the last cell centre both corners are the edge cell: the value is that cell exactly. Weights
    # (1, 0) keep it exact (w0*T + w1*T can differ from T in the last bit), so a border band of one vector
    # is a band of exact ties and the first pixel in row-major order wins, as in exact upsampling.
    w1[i0 == in_size - 1] = 0.0
    return i0, 1.0 - w1, w1

"""FeatureMap: one image's features and the geometry needed to match them back to pixels."""

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

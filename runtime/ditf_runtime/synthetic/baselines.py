"""Baselines that learned nothing, to read a PCK number against (bench/bench_semantic.py, tests)."""

from __future__ import annotations

import numpy as np


class PixelFeatures:
    """The colour/position baseline: RGB averaged over `cell` x `cell` pixels is the feature of that cell."""

    def __init__(self, cell: int = 8) -> None:
        self.cell = cell

    def extract(self, images, **_):
        from PIL import Image

        from ..features import FeatureMap

        maps = []
        for image in images:
            h, w = image.shape[:2]
            small = Image.fromarray(image).resize((w // self.cell, h // self.cell), Image.BOX)
            rgb = np.asarray(small, np.float32).transpose(2, 0, 1) / 127.5 - 1.0
            maps.append(FeatureMap(rgb, (h, w), (h, w), self.cell))
        return maps

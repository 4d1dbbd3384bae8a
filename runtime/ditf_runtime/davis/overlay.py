"""A frame with its object masks blended in and outlined, over a legend naming each object's colour."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..annotate import Caption, with_caption
from ..draw import save_png
from ..errors import InputError
from ..preprocess import ImageSource, open_image
from .masks import davis_palette
from .metrics import boundary_map

ALPHA = 0.5  # mask colour weight inside an object
LEGEND_BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)


def draw_mask_overlay(
    frame: ImageSource,
    labels: np.ndarray,
    *,
    objects: Sequence[int] | None = None,
    names: dict[int, str] | None = None,
    title: str | None = None,
    alpha: float = ALPHA,
    palette: np.ndarray | None = None,
    caption: Caption | None = None,
    path: str | os.PathLike | None = None,
) -> Image.Image:
    """`frame` with each object id of `labels` (uint8 [H, W], 0 = background) tinted and outlined.

    A strip below the frame (the legend) lists `objects` (default: the ids present), each as a colour swatch and
    its name (`names`, default "object k"), under an optional `title`; `caption` (annotate.Caption: model,
    layer, precision, random weights) below it. Colours are the DAVIS palette's, as in the indexed PNGs.
    Saved as PNG when `path` is given.
    """
    image = open_image(frame, exif_transpose=False)
    labels = np.asarray(labels)
    if labels.shape != (image.height, image.width):
        raise InputError(f"labels are {labels.shape} (h, w) but the frame is {(image.height, image.width)}")
    colors = davis_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
    pixels = np.asarray(image, dtype=np.float32)
    tinted = pixels * (1 - alpha) + colors[labels].astype(np.float32) * alpha
    out = np.where((labels > 0)[..., None], tinted, pixels)
    for object_id in np.unique(labels[labels > 0]):
        edge = boundary_map(labels == object_id)
        edge[1:] |= edge[:-1]  # two pixels wide: visible on a 854-pixel frame
        edge[:, 1:] |= edge[:, :-1]
        out[edge] = colors[object_id]
    blended = Image.fromarray(np.rint(out).astype(np.uint8))
    ids = sorted(int(v) for v in (np.unique(labels[labels > 0]) if objects is None else objects))
    canvas = with_caption(_with_legend(blended, ids, names or {}, title, colors), caption)
    if path is not None:
        save_png(canvas, path)
    return canvas


def _with_legend(frame: Image.Image, ids: list[int], names: dict[int, str], title: str | None, colors) -> Image.Image:
    """The frame above a white strip: the title, then a swatch and a name per object, wrapped to the width."""
    font_size = max(11, round(frame.height / 36))
    font = ImageFont.load_default(size=font_size)
    pad = max(3, font_size // 3)
    items: list[tuple[tuple[int, int, int] | None, str]] = [(None, title)] if title else []
    items += [(tuple(int(c) for c in colors[i]), names.get(i, f"object {i}")) for i in ids]
    # Lay the items out left to right, wrapping to new lines, before sizing the strip.
    placed, x, line = [], pad, 0
    for color, text in items:
        width = _text_width(font, text) + (font_size + pad if color is not None else 0)
        if x > pad and x + width > frame.width - pad:
            x, line = pad, line + 1
        placed.append((x, line, color, text))
        x += width + 3 * pad
    line_height = font_size + 2 * pad
    canvas = Image.new("RGB", (frame.width, frame.height + (line + 1) * line_height + pad), LEGEND_BACKGROUND)
    canvas.paste(frame, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for x, row, color, text in placed:
        y = frame.height + pad + row * line_height
        if color is not None:
            draw.rectangle((x, y, x + font_size, y + font_size), fill=color, outline=TEXT_COLOR)
            x += font_size + pad
        draw.text((x, y), text, fill=TEXT_COLOR, font=font)
    return canvas


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)

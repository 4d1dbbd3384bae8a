"""Pictures with Pillow: correspondences side by side, point tracks, and a feature map's PCA as RGB.

Each picture can carry a caption strip (annotate.Caption: model, layer, precision, and a red line
when the weights are random); match pictures colour each match by its cosine similarity, with a
colour bar, and number their points.
"""

from __future__ import annotations

import colorsys
import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .annotate import MIN_PICTURE_WIDTH, Caption, ColorScale, LabelPlacer, font, text_size_for, with_caption
from .errors import InputError
from .manifest import write_bytes_atomic
from .preprocess import DEFAULT_MAX_PIXELS, ImageSource, open_image

GAP = 8  # pixels between the two images
MIN_WIDTH = 640  # narrower track pictures are enlarged (video frames are often small; paths need the room)
MAX_ENLARGED_HEIGHT = 2048  # ... but a tall, narrow one not beyond this height
BACKGROUND = (255, 255, 255)
CORRECT_COLOR = (0, 200, 0)
WRONG_COLOR = (230, 0, 0)


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Encode to PNG in memory, then write atomically (no half-written pictures)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())


def enlargement(width: int, height: int, fixed: int = 0, minimum: int = MIN_PICTURE_WIDTH) -> float:
    """The factor (>= 1) that brings images `width` wide in all (plus `fixed` pixels that do not scale, e.g.
    the gap between two) to `minimum`, capped so that `height` stays within MAX_ENLARGED_HEIGHT."""
    if width + fixed >= minimum:
        return 1.0
    return max(1.0, min((minimum - fixed) / max(width, 1), MAX_ENLARGED_HEIGHT / max(height, 1)))


def enlarged(image: Image.Image, scale: float) -> Image.Image:
    """`image` resized by `scale`: pixel blocks when enlarged 4x or more (a tiny image shows what it is),
    else bicubic."""
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 4 else Image.Resampling.BICUBIC
    return image.resize(size, resample=resample)


def scaled_points(xy: np.ndarray, scale: float) -> np.ndarray:
    """Pixel (x, y) of an image -> the same pixels' centres in the image enlarged by `scale`."""
    return xy if scale == 1.0 else (xy + 0.5) * scale - 0.5


def palette(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct saturated colours around the hue circle."""
    colors = []
    for k in range(count):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 0.95)  # golden-ratio hue steps
        colors.append((int(255 * r), int(255 * g), int(255 * b)))
    return colors


def draw_matches(
    src_image: ImageSource,
    trg_image: ImageSource,
    src_xy: Any,
    trg_xy: Any,
    *,
    scores: Sequence[float] | None = None,
    correct: Sequence[bool] | None = None,
    caption: Caption | None = None,
    path: str | os.PathLike | None = None,
    exif_transpose: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    radius: int | None = None,
) -> Image.Image:
    """Source and target side by side, each match a numbered dot pair joined by a line.

    Points are pixel (x, y) in each image's own frame (read with the same `exif_transpose` as
    the features were). With `scores` (cosine per match) the colour says the similarity, with a
    colour bar below; without, each match gets its own colour. With `correct`, dots get a green
    (right) or red (wrong) ring. `caption` adds a caption strip. Saved as PNG when `path` is given.
    """
    src = open_image(src_image, exif_transpose=exif_transpose, max_pixels=max_pixels)
    trg = open_image(trg_image, exif_transpose=exif_transpose, max_pixels=max_pixels)
    src_xy = np.asarray(src_xy, dtype=np.float64).reshape(-1, 2)
    trg_xy = np.asarray(trg_xy, dtype=np.float64).reshape(-1, 2)
    if len(src_xy) != len(trg_xy):
        raise InputError(f"{len(src_xy)} source points but {len(trg_xy)} target points")
    if correct is not None and len(correct) != len(src_xy):
        raise InputError(f"correct has {len(correct)} flags for {len(src_xy)} matches")
    if scores is not None and len(scores) != len(src_xy):
        raise InputError(f"scores has {len(scores)} values for {len(src_xy)} matches")
    scale = enlargement(src.width + trg.width, max(src.height, trg.height), fixed=GAP)
    src, trg = enlarged(src, scale), enlarged(trg, scale)
    src_xy, trg_xy = scaled_points(src_xy, scale), scaled_points(trg_xy, scale)
    width = src.width + GAP + trg.width
    height = max(src.height, trg.height)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    canvas.paste(src, (0, 0))
    offset = src.width + GAP
    canvas.paste(trg, (offset, 0))
    draw = ImageDraw.Draw(canvas)
    radius = radius or max(3, round(max(height, width) / 200))
    line_width = max(1, radius // 2)
    color_scale = ColorScale.of(scores) if scores is not None else None
    colors = [color_scale.color(v) for v in scores] if color_scale is not None else palette(len(src_xy))
    for (sx, sy), (tx, ty), color in zip(src_xy, trg_xy, colors):
        draw.line([(sx, sy), (tx + offset, ty)], fill=color, width=line_width)
    dots = [(x, y) for (sx, sy), (tx, ty) in zip(src_xy, trg_xy) for x, y in ((sx, sy), (tx + offset, ty))]
    for k, color in enumerate(colors):
        for x, y in dots[2 * k: 2 * k + 2]:
            ring = None if correct is None else (CORRECT_COLOR if correct[k] else WRONG_COLOR)
            draw.ellipse(
                [x - radius, y - radius, x + radius, y + radius],
                fill=color,
                outline=ring or (0, 0, 0),
                width=max(1, radius // 3) if ring else 1,
            )
    # Labels last, over every line and dot, each inside its own image and off the others.
    placer = LabelPlacer(font(max(10, round(radius * 2.2))), radius, dots)
    bounds = ((0, 0, src.width, src.height), (offset, 0, offset + trg.width, trg.height))
    for k in range(len(src_xy)):
        for side, xy in enumerate(dots[2 * k: 2 * k + 2]):
            placer.label(draw, xy, str(k + 1), bounds[side])
    footer = color_scale.bar(min(width - 2 * text_size_for(width), 480)) if color_scale is not None else None
    canvas = with_caption(canvas, caption, footer)
    if path is not None:
        save_png(canvas, path)
    return canvas


def pca_components(features: Any, count: int = 3) -> np.ndarray:
    """[h, w, count] projections of each cell's vector on the map's top principal directions."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise InputError(f"features must be [C, h, w] or [1, C, h, w], got {array.shape}")
    channels, grid_h, grid_w = array.shape
    cells = array.reshape(channels, -1).T
    cells = cells - cells.mean(axis=0)
    _, _, directions = np.linalg.svd(cells, full_matrices=False)
    directions = directions[:count]
    # SVD signs are arbitrary: make each direction's largest loading positive, so colours are stable.
    signs = np.sign(directions[np.arange(len(directions)), np.abs(directions).argmax(axis=1)])
    directions = directions * np.where(signs == 0, 1.0, signs)[:, None]
    projected = cells @ directions.T
    if projected.shape[1] < count:  # fewer channels or cells than components
        projected = np.pad(projected, ((0, 0), (0, count - projected.shape[1])))
    return projected.reshape(grid_h, grid_w, count)


def pca_image(
    features: Any,
    *,
    size: tuple[int, int] | None = None,
    path: str | os.PathLike | None = None,
) -> Image.Image:
    """The first three principal components of a feature map as RGB (each scaled to 0..255).

    `size` (height, width) defaults to a FeatureMap's `image_size`, else the grid itself;
    upscaled bilinearly. Saved as PNG when `path` is given.
    """
    components = pca_components(features)
    low = components.min(axis=(0, 1))
    span = np.maximum(components.max(axis=(0, 1)) - low, 1e-12)
    rgb = np.rint(255 * (components - low) / span).astype(np.uint8)
    picture = Image.fromarray(rgb, "RGB")
    size = size or getattr(features, "image_size", None)
    if size is not None:
        picture = picture.resize((int(size[1]), int(size[0])), resample=Image.Resampling.BILINEAR)
    if path is not None:
        save_png(picture, path)
    return picture


def draw_pca(
    features: Any,
    *,
    image: ImageSource | None = None,
    caption: Caption | None = None,
    path: str | os.PathLike | None = None,
    exif_transpose: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """The PCA picture (pca_image) beside its photo when `image` is given, with `caption` below.

    Same colour, similar feature: parts that look alike to the model share a colour.
    """
    pca = pca_image(features)
    if image is None:
        pca = enlarged(pca, enlargement(pca.width, pca.height))
    else:
        photo = open_image(image, exif_transpose=exif_transpose, max_pixels=max_pixels)
        if pca.size != photo.size:
            pca = pca.resize(photo.size, resample=Image.Resampling.BILINEAR)
        scale = enlargement(photo.width + pca.width, photo.height, fixed=GAP)
        photo, pca = enlarged(photo, scale), enlarged(pca, scale)
        canvas = Image.new("RGB", (photo.width + GAP + pca.width, max(photo.height, pca.height)), BACKGROUND)
        canvas.paste(photo, (0, 0))
        canvas.paste(pca, (photo.width + GAP, 0))
        pca = canvas
    pca = with_caption(pca, caption)
    if path is not None:
        save_png(pca, path)
    return pca


def draw_tracks(
    frame: ImageSource,
    tracks: Any,
    *,
    caption: Caption | None = None,
    path: str | os.PathLike | None = None,
    exif_transpose: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    radius: int | None = None,
) -> Image.Image:
    """Point tracks over one frame (usually the last): each point's path a coloured, numbered line.

    `tracks` is [F, N, 2] pixel (x, y) per frame (`matching.track_points`); the start is a ring,
    the last position a filled dot with the point's number. Saved as PNG when `path` is given.
    """
    canvas = open_image(frame, exif_transpose=exif_transpose, max_pixels=max_pixels).copy()
    tracks = np.asarray(tracks, dtype=np.float64)
    if tracks.ndim != 3 or tracks.shape[2] != 2:
        raise InputError(f"tracks must be [F, N, 2] pixel (x, y), got shape {tracks.shape}")
    # video frames are often small: paths and labels need the room
    scale = enlargement(canvas.width, canvas.height, minimum=MIN_WIDTH)
    canvas, tracks = enlarged(canvas, scale), scaled_points(tracks, scale)
    draw = ImageDraw.Draw(canvas)
    radius = radius or max(3, round(max(canvas.size) / 200))
    placer = LabelPlacer(font(max(10, round(radius * 2.2))), radius, [tuple(p) for p in tracks[-1]])
    for color, path_xy in zip(palette(tracks.shape[1]), tracks.transpose(1, 0, 2)):
        points = [(float(x), float(y)) for x, y in path_xy]
        if len(points) > 1:
            draw.line(points, fill=color, width=max(1, radius // 2), joint="curve")
        (sx, sy), (ex, ey) = points[0], points[-1]
        draw.ellipse([sx - radius, sy - radius, sx + radius, sy + radius], outline=color, width=max(1, radius // 2))
        draw.ellipse([ex - radius, ey - radius, ex + radius, ey + radius], fill=color, outline=(0, 0, 0))
    for k, end in enumerate(tracks[-1]):  # labels last, over every path
        placer.label(draw, end, str(k + 1), (0, 0, canvas.width, canvas.height))
    canvas = with_caption(canvas, caption)
    if path is not None:
        save_png(canvas, path)
    return canvas

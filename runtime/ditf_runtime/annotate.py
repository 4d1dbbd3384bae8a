"""What makes a picture explain itself: a caption strip (which model, layer, precision; a loud line when
the weights are random), a similarity colour scale with its colour bar, and numbered point labels.

draw.py composes these; nothing here reads images or features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .manifest import Manifest

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
WARNING_TEXT = (200, 40, 0)
RANDOM_WEIGHTS = "random weights - pipeline check only: these matches and colours mean nothing"

# viridis at five stops (dark violet -> yellow): readable on photos, ordered in lightness, colour-blind safe.
_RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


@dataclass(frozen=True)
class Caption:
    """Lines under a picture; `warning` (e.g. random weights) is drawn first, in red."""

    lines: tuple[str, ...] = ()
    warning: str | None = None

    @property
    def empty(self) -> bool:
        return not self.lines and not self.warning


def caption_for(manifests: Manifest | Sequence[Manifest], *, size: int | Sequence[int | None] | None = None,
                ensemble: int | None = None, what: str | None = None,
                weights: Sequence[float] | None = None) -> Caption:
    """The caption of a picture made with an export: model, layer (block), precision, t, E, size; with two
    fused exports one such line per model and a line with the fusion weights."""
    manifests = (manifests,) if isinstance(manifests, Manifest) else tuple(manifests)
    sizes = list(size) if isinstance(size, (tuple, list)) else [size] * len(manifests)
    lines = [settings_line(m, size=s, ensemble=ensemble) for m, s in zip(manifests, sizes)]
    if len(manifests) > 1:
        shares = " / ".join(f"{w:g}" for w in weights) if weights is not None else "equal"
        lines.append(f"fused: each model's features L2-normalised, weighted {shares}, concatenated")
    lines += [f"{m.model_name}: weights trained on {m.trained_on}" for m in manifests if m.trained_on]
    random = any(m.random_weights for m in manifests)
    return Caption(tuple(lines) if what is None else (what, *lines), RANDOM_WEIGHTS if random else None)


def settings_line(manifest: Manifest, *, size: int | None = None, ensemble: int | None = None) -> str:
    """One export's settings: model, layer (block), precision, then t and E for graphs with noise, long side."""
    feature = manifest.feature
    parts = [manifest.model_name, f"layer {feature.layer} ({feature.block})", manifest.precision]
    if feature.timestep is not None:  # a diffusion model; DINOv2 graphs take no noise
        parts += [f"t={feature.timestep:g}", f"E={ensemble or feature.ensemble}"]
    parts.append(f"long side {size or manifest.preprocess.long_side} px")
    return " · ".join(parts)


def file_caption(metadata: dict[str, str], what: str) -> Caption:
    """A feature file's caption from the metadata `ditf extract` wrote into it (whatever it has); a fused
    file's "models" give one line per model."""
    records: list[dict[str, Any]] = [metadata]
    if "models" in metadata:
        try:
            records = [r for r in json.loads(metadata["models"]) if isinstance(r, dict)]
        except ValueError:
            records = []
    lines = []
    for record in records:
        parts = [f"{key} {record[key]}" for key in ("model_name", "layer", "precision", "timestep", "ensemble")
                 if record.get(key) not in (None, "null")]
        if parts:
            lines.append(" · ".join(parts))
    lines += [f"weights trained on {r['trained_on']}" for r in records if r.get("trained_on") not in (None, "null")]
    if "weights" in metadata:
        lines.append(f"fused, weights {metadata['weights']}")
    random = any(str(r.get("random_weights", "")).lower() == "true" for r in records)
    return Caption((what, *lines), RANDOM_WEIGHTS if random else None)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at `size` px (a scalable one where Pillow has FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def text_size_for(width: int) -> int:
    """Caption text height for a picture `width` pixels wide: readable, never huge."""
    return int(np.clip(width / 60, 13, 22))


def with_caption(picture: Image.Image, caption: Caption | None, footer: Image.Image | None = None) -> Image.Image:
    """`picture` with `footer` (e.g. a colour bar) and the caption's lines in a white strip below it."""
    if caption is None or caption.empty:
        if footer is None:
            return picture
        caption = Caption()
    size = text_size_for(picture.width)
    face = font(size)
    lines = ([(caption.warning, WARNING_TEXT)] if caption.warning else []) + [(t, TEXT) for t in caption.lines]
    lines = [(wrapped, color) for text, color in lines for wrapped in _wrap(text, face, picture.width - size)]
    line_height = int(size * 1.35)
    footer_height = footer.height + size // 2 if footer is not None else 0
    strip = footer_height + len(lines) * line_height + (size // 2 if lines else 0)
    canvas = Image.new("RGB", (picture.width, picture.height + strip), BACKGROUND)
    canvas.paste(picture, (0, 0))
    y = picture.height + size // 3
    if footer is not None:
        canvas.paste(footer, ((picture.width - footer.width) // 2, y))
        y += footer_height
    draw = ImageDraw.Draw(canvas)
    for text, color in lines:
        draw.text((size // 2, y), text, fill=color, font=face)
        y += line_height
    return canvas


def _wrap(text: str, face: ImageFont.ImageFont, width: int) -> list[str]:
    """Break `text` at spaces (or " · ") so each line fits `width` pixels."""
    words, lines, current = text.split(" "), [], ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if current and face.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current] if current else lines


# -- similarity colours ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColorScale:
    """Cosine similarity -> colour on a viridis ramp over [low, high]."""

    low: float
    high: float

    @classmethod
    def of(cls, scores: Sequence[float] | np.ndarray) -> "ColorScale":
        """Spanning the scores shown (at least 0.02 wide, so near-equal scores do not exaggerate)."""
        values = np.asarray(scores, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(-1.0, 1.0)
        low, high = float(values.min()), float(values.max())
        if high - low < 0.02:
            middle = (high + low) / 2
            low, high = middle - 0.01, middle + 0.01
        return cls(low, high)

    def color(self, value: float) -> tuple[int, int, int]:
        position = 0.0 if not np.isfinite(value) else float(np.clip((value - self.low) / (self.high - self.low), 0, 1))
        scaled = position * (len(_RAMP) - 1)
        k = min(int(scaled), len(_RAMP) - 2)
        rgb = _RAMP[k] + (scaled - k) * (_RAMP[k + 1] - _RAMP[k])
        return tuple(int(round(c)) for c in rgb)  # type: ignore[return-value]

    def bar(self, width: int, label: str = "cosine similarity") -> Image.Image:
        """A horizontal colour bar `width` px wide with its end values and `label`."""
        size = text_size_for(width * 2)
        face = font(size)
        bar_height = max(8, size)
        image = Image.new("RGB", (width, bar_height + size + 4), BACKGROUND)
        draw = ImageDraw.Draw(image)
        inner = width - 2
        for x in range(inner):
            draw.line([(x + 1, 0), (x + 1, bar_height)], fill=self.color(self.low + (self.high - self.low) * x / inner))
        draw.rectangle([0, 0, width - 1, bar_height], outline=TEXT)
        y = bar_height + 2
        draw.text((0, y), f"{self.low:.3f}", fill=TEXT, font=face)
        high = f"{self.high:.3f}"
        draw.text((width - face.getlength(high), y), high, fill=TEXT, font=face)
        draw.text(((width - face.getlength(label)) / 2, y), label, fill=TEXT, font=face)
        return image


def label_point(draw: ImageDraw.ImageDraw, xy: Any, text: str, radius: int, face: ImageFont.ImageFont,
                color: tuple[int, int, int] = TEXT) -> None:
    """`text` beside the dot at `xy`, outlined in white so it reads on any photo."""
    x, y = float(xy[0]), float(xy[1])
    draw.text((x + radius + 1, y - radius - 2), text, fill=color, font=face, stroke_width=2, stroke_fill=BACKGROUND)

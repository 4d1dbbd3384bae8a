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
# A caption needs room for its words: a narrower picture is centred on a white canvas this wide (draw.py
# enlarges small images to it first). Before, a 1x1 image gave a 10 px picture, its caption one letter a line.
MIN_PICTURE_WIDTH = 320
RANDOM_WEIGHTS = "random weights - pipeline check only: these matches and colours mean nothing"
RANDOM_WEIGHTS_SCORES = "random weights - pipeline check only: these scores mean nothing (export trained weights)"

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
                weights: Sequence[float] | None = None, side: str = "long side") -> Caption:
    """The caption of a picture made with an export: model, layer (block), precision, t, E, size; with two
    fused exports one such line per model and a line with the fusion weights. `side` names what `size` is
    (DAVIS: the frames' "short side")."""
    manifests = (manifests,) if isinstance(manifests, Manifest) else tuple(manifests)
    sizes = list(size) if isinstance(size, (tuple, list)) else [size] * len(manifests)
    lines = [settings_line(m, size=s, ensemble=ensemble, side=side) for m, s in zip(manifests, sizes)]
    if len(manifests) > 1:
        shares = " / ".join(f"{w:g}" for w in weights) if weights is not None else "equal"
        lines.append(f"fused: each model's features L2-normalised, weighted {shares}, concatenated")
    lines += [f"{m.model_name}: weights trained on {m.trained_on}" for m in manifests if m.trained_on]
    random = any(m.random_weights for m in manifests)
    return Caption(tuple(lines) if what is None else (what, *lines), RANDOM_WEIGHTS if random else None)


def settings_line(manifest: Manifest, *, size: int | None = None, ensemble: int | None = None,
                  side: str = "long side") -> str:
    """One export's settings: model, layer (block), precision, then t and E for graphs with noise, long side."""
    feature = manifest.feature
    parts = [manifest.model_name, f"layer {feature.layer} ({feature.block})", manifest.precision]
    if feature.timestep is not None:  # a diffusion model; DINOv2 graphs take no noise
        parts += [f"t={feature.timestep:g}", f"E={ensemble or feature.ensemble}"]
    parts.append(f"{side} {size or manifest.preprocess.long_side} px")
    return " · ".join(parts)


def model_facts(manifest: Manifest, *, size: int | None = None, ensemble: int | None = None,
                side: str = "long side") -> dict[str, Any]:
    """The caption's facts about one export, as JSON fields."""
    feature = manifest.feature
    return {
        "model_name": manifest.model_name, "family": manifest.family, "layer": feature.layer, "block": feature.block,
        "precision": manifest.precision, "timestep": feature.timestep,
        "ensemble": None if feature.timestep is None else ensemble or feature.ensemble,
        side.replace(" ", "_"): size or manifest.preprocess.long_side,
        "random_weights": bool(manifest.random_weights), "trained_on": manifest.trained_on,
    }  # fmt: skip


def describe_run(extractor: Any, *, size: int | Sequence[int | None] | None = None, ensemble: int | None = None,
                 side: str = "long side") -> dict[str, Any] | None:
    """What a result (a printed table, its JSON) says about the model that made it: the same facts as a
    picture's caption (model, layer, precision, t, E, size; random weights or what they were trained on),
    as fields and as the caption's lines. None for an extractor without a manifest (a stand-in)."""
    fused = getattr(extractor, "manifests", None)
    manifests = tuple(fused) if fused is not None else (getattr(extractor, "manifest", None),)
    if not manifests or not all(isinstance(m, Manifest) for m in manifests):
        return None
    weights = tuple(getattr(extractor, "weights", ())) or None if len(manifests) > 1 else None
    sizes = list(size) if isinstance(size, (tuple, list)) else [size] * len(manifests)
    facts = [model_facts(m, size=s, ensemble=ensemble, side=side) for m, s in zip(manifests, sizes)]
    described = dict(facts[0]) if len(facts) == 1 else {"models": facts, "fusion_weights": list(weights or ())}
    caption = caption_for(manifests, size=size, ensemble=ensemble, weights=weights, side=side)
    described.update(caption=list(caption.lines), warning=RANDOM_WEIGHTS_SCORES if caption.warning else None)
    return described


def described_lines(described: dict[str, Any] | None) -> list[str]:
    """A result table's first lines from `describe_run`: the warning (random weights) first, then the caption."""
    if not described:
        return []
    warning = [f"WARNING: {described['warning']}"] if described.get("warning") else []
    return warning + [f"model: {line}" for line in described.get("caption", ())]


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
    if picture.width < MIN_PICTURE_WIDTH:
        wider = Image.new("RGB", (MIN_PICTURE_WIDTH, picture.height), BACKGROUND)
        wider.paste(picture, ((MIN_PICTURE_WIDTH - picture.width) // 2, 0))
        picture = wider
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


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (pixels, x1 and y1 exclusive)

# Where a label may go around its dot, tried in order: right, left, above, below, the diagonals; then further out.
_DIRECTIONS = ((1, 0), (-1, 0), (0, -1), (0, 1), (1, -1), (1, 1), (-1, -1), (-1, 1))
_RINGS = (1, 2, 3, 5)


class LabelPlacer:
    """Numbered labels beside their dots, each on a white box, kept inside the dot's own image and off every
    other label and dot: a label takes the first free spot of a few around its dot (beside it first, further
    out with a thin leader line when crowded), else the least covered one. Without this, "12" beside "10"
    read "120", and labels at the right edge were cut off."""

    def __init__(self, face: ImageFont.ImageFont, radius: int, dots: Sequence[Any] = (), pad: int = 2) -> None:
        self.face, self.radius, self.pad = face, radius, pad
        self.taken: list[Box] = [(float(x) - radius, float(y) - radius, float(x) + radius + 1, float(y) + radius + 1)
                                 for x, y in dots]

    def box_size(self, text: str) -> tuple[float, float]:
        left, top, right, bottom = self.face.getbbox(text)
        return right - left + 2 * self.pad, bottom - top + 2 * self.pad

    def place(self, xy: Any, text: str, bounds: Box) -> tuple[Box, bool]:
        """The box for `text` near the dot at `xy` inside `bounds`, and whether it is away from the dot (ring > 1)."""
        x, y = float(xy[0]), float(xy[1])
        width, height = self.box_size(text)
        best: tuple[float, Box, bool] | None = None
        for ring in _RINGS:
            gap = self.radius * ring + 2
            for dx, dy in _DIRECTIONS:
                left = x + gap if dx > 0 else x - gap - width if dx < 0 else x - width / 2
                top = y + gap if dy > 0 else y - gap - height if dy < 0 else y - height / 2
                box = _inside(left, top, width, height, bounds)
                covered = sum(_overlap(box, other) for other in self.taken)
                if covered == 0:
                    self.taken.append(box)
                    return box, ring > 1
                if best is None or covered < best[0]:
                    best = (covered, box, ring > 1)
        assert best is not None
        self.taken.append(best[1])
        return best[1], best[2]

    def label(self, draw: ImageDraw.ImageDraw, xy: Any, text: str, bounds: Box,
              color: tuple[int, int, int] = TEXT) -> Box:
        """Place and draw `text` for the dot at `xy`: a white box with a thin outline, the text on it."""
        box, away = self.place(xy, text, bounds)
        x0, y0, x1, y1 = box
        if away:  # a leader line from the dot to the box's nearest edge point says whose label it is
            near = (min(max(float(xy[0]), x0), x1 - 1), min(max(float(xy[1]), y0), y1 - 1))
            draw.line([(float(xy[0]), float(xy[1])), near], fill=color, width=1)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=BACKGROUND, outline=color)
        left, top, _, _ = self.face.getbbox(text)
        draw.text((x0 + self.pad - left, y0 + self.pad - top), text, fill=color, font=self.face)
        return box


def _inside(left: float, top: float, width: float, height: float, bounds: Box) -> Box:
    """The box moved (not shrunk) to lie inside `bounds`; a box larger than them keeps its top-left corner."""
    x0, y0, x1, y1 = bounds
    left = max(x0, min(left, x1 - width))
    top = max(y0, min(top, y1 - height))
    return left, top, left + width, top + height


def _overlap(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

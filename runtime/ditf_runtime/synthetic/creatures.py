"""Procedural "creatures": images of side-view objects with named, ground-truth keypoints.

Each category is drawn from parts in an object frame (x forward along the body, y up, body length ~1),
then placed in the image by one similarity transform: scale, a small tilt, a facing direction (a mirror:
the head is on the left or the right) and a position. Colours, textures, proportions, pose (legs, tail,
fins, wings), background clutter and occluders are drawn at random, so that neither colour nor absolute
position identifies a part. Parts that look alike come in front/back pairs (front paw and back paw,
front wheel and back wheel, ...): which is which depends on where the head is, as left and right do in
real benchmarks.

Everything is deterministic from (seed, index): `draw(seed, index)` gives the same picture and keypoints on
every machine (numpy's PCG64 and Pillow's polygon rasteriser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Keypoints per category, in a fixed order (SPair-style ids are the index in this tuple).
KEYPOINTS: dict[str, tuple[str, ...]] = {
    "fish": ("mouth", "eye", "dorsal_fin_tip", "pelvic_fin_tip", "tail_fin_top", "tail_fin_bottom", "tail_base"),
    "bird": ("beak_tip", "eye", "head_top", "wing_tip", "tail_tip", "foot", "chest"),
    "dog": ("nose", "eye", "ear_tip", "front_paw", "back_paw", "tail_tip", "shoulder", "hip"),
    "car": ("front_wheel", "back_wheel", "headlight", "taillight", "roof_front", "roof_back", "front_bumper",
            "rear_bumper"),
    "turtle": ("head_tip", "eye", "shell_top", "front_foot", "back_foot", "tail_tip", "shell_front", "shell_back"),
}
CATEGORIES = tuple(KEYPOINTS)
TRAIN_SEED = 0  # the stream flux-mini is trained on: no benchmark may be drawn from it
GENERATOR_VERSION = 2  # bump when a drawing changes: a benchmark records the version it was drawn with
SUPERSAMPLE = 3  # drawn at 3x, then downsampled: smooth edges without an anti-aliasing rasteriser


@dataclass(frozen=True)
class Creature:
    """One drawn image and its annotation (pixel frame of `image`)."""

    category: str
    image: Image.Image
    keypoints: np.ndarray  # [K, 2] float (x, y), K = len(KEYPOINTS[category])
    visible: np.ndarray  # [K] bool: inside the image and not under an occluder
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 of the whole object (occluded parts included)
    facing: str  # "left" or "right"


# --- shapes in the object frame -----------------------------------------------------------------------------

def ellipse(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], 1)
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + (cx, cy)


def limb(x0: float, y0: float, length: float, angle: float, width: float) -> tuple[np.ndarray, np.ndarray]:
    """A rectangle from (x0, y0) pointing at `angle` (0 = down, positive = forward); returns polygon, tip."""
    dx, dy = math.sin(angle), -math.cos(angle)
    tip = np.array([x0 + dx * length, y0 + dy * length])
    nx, ny = -dy * width / 2, dx * width / 2
    poly = np.array([[x0 + nx, y0 + ny], [tip[0] + nx, tip[1] + ny], [tip[0] - nx, tip[1] - ny],
                     [x0 - nx, y0 - ny]])
    return poly, tip


@dataclass
class Part:
    polygon: np.ndarray  # [n, 2] object frame
    fill: str  # a key of the colour scheme: "body", "accent", "dark", "light", "eye", "pupil"
    textured: bool = False


def _fish(r: np.random.Generator) -> tuple[list[Part], dict[str, np.ndarray]]:
    h = r.uniform(0.18, 0.3)  # half height of the body
    tail = r.uniform(-0.35, 0.35)
    spread = r.uniform(0.15, 0.3)
    base = np.array([-0.5, 0.0])
    top = base + 0.32 * np.array([-math.cos(tail - 0.8), math.sin(tail + 0.8)])
    bottom = base + 0.32 * np.array([-math.cos(tail + 0.8), math.sin(tail - 0.8)]) - (0, spread * 0.2)
    dorsal_x = r.uniform(-0.15, 0.1)
    dorsal = np.array([dorsal_x - r.uniform(0.05, 0.2), h + r.uniform(0.12, 0.25)])
    pelvic = np.array([dorsal_x + r.uniform(0.0, 0.15), -h - r.uniform(0.06, 0.15)])
    eye = np.array([0.3, h * 0.35])
    parts = [
        Part(np.array([base + (0.06, 0.04), top, base + (-0.12, 0.0), bottom, base + (0.06, -0.04)]), "accent"),
        Part(np.array([[dorsal_x - 0.15, h * 0.8], dorsal, [dorsal_x + 0.12, h * 0.85]]), "accent"),
        Part(np.array([[dorsal_x - 0.02, -h * 0.8], pelvic, [dorsal_x + 0.12, -h * 0.8]]), "accent"),
        Part(ellipse(0.0, 0.0, 0.5, h), "body", textured=True),
        Part(ellipse(*eye, 0.05, 0.05), "eye"),
        Part(ellipse(eye[0] + 0.012, eye[1], 0.025, 0.025), "pupil"),
        Part(np.array([[0.5, 0.0], [0.42, -0.035], [0.44, 0.0]]), "dark"),
    ]
    kps = dict(mouth=np.array([0.49, -0.01]), eye=eye, dorsal_fin_tip=dorsal, pelvic_fin_tip=pelvic,
               tail_fin_top=top, tail_fin_bottom=bottom, tail_base=base)
    return parts, kps


def _bird(r: np.random.Generator) -> tuple[list[Part], dict[str, np.ndarray]]:
    ry = r.uniform(0.2, 0.27)
    head_c = np.array([0.42, ry + r.uniform(0.02, 0.12)])
    head_r = r.uniform(0.12, 0.16)
    beak_len = r.uniform(0.1, 0.2)
    beak_tip = head_c + (head_r + beak_len, r.uniform(-0.06, 0.0))
    wing_angle = r.uniform(-0.3, 0.9)  # folded back .. raised
    wing_tip = np.array([-0.35 + 0.2 * math.sin(wing_angle), 0.05 + 0.45 * math.sin(wing_angle)])
    tail_tip = np.array([-0.75, r.uniform(-0.05, 0.3)])
    leg_a = r.uniform(-0.4, 0.4)
    leg, foot = limb(0.05, -ry * 0.8, r.uniform(0.22, 0.32), leg_a, 0.03)
    parts = [
        Part(np.array([[-0.4, 0.08], tail_tip + (0, 0.07), tail_tip - (0, 0.07), [-0.4, -0.06]]), "accent"),
        Part(leg, "dark"),
        Part(np.array([foot + (-0.06, 0.0), foot + (0.08, 0.0), foot + (0.08, 0.025), foot + (-0.06, 0.025)]),
             "dark"),
        Part(ellipse(0.0, 0.0, 0.45, ry, angle=0.15), "body", textured=True),
        Part(np.array([head_c - (0.12, 0.1), head_c + (0.0, -0.04), [0.3, 0.05]]), "body"),
        Part(ellipse(*head_c, head_r, head_r), "body"),
        Part(np.array([head_c + (head_r * 0.8, 0.04), beak_tip, head_c + (head_r * 0.8, -0.05)]), "light"),
        Part(np.array([[0.2, 0.1], wing_tip, [-0.25, -0.05]]), "accent", textured=True),
        Part(ellipse(head_c[0] + 0.05, head_c[1] + 0.03, 0.04, 0.04), "eye"),
        Part(ellipse(head_c[0] + 0.06, head_c[1] + 0.03, 0.02, 0.02), "pupil"),
    ]
    kps = dict(beak_tip=beak_tip, eye=head_c + (0.05, 0.03), head_top=head_c + (0.0, head_r), wing_tip=wing_tip,
               tail_tip=tail_tip, foot=foot, chest=np.array([0.38, -0.08]))
    return parts, kps


def _dog(r: np.random.Generator) -> tuple[list[Part], dict[str, np.ndarray]]:
    h = r.uniform(0.14, 0.2)
    leg_len = r.uniform(0.28, 0.4)
    stride = r.uniform(-0.5, 0.5)
    front_leg, front_paw = limb(0.32, -h * 0.6, leg_len, stride, 0.09)
    back_leg, back_paw = limb(-0.33, -h * 0.6, leg_len, -stride, 0.09)
    front_leg2, _ = limb(0.26, -h * 0.6, leg_len, -stride * 0.7, 0.08)
    back_leg2, _ = limb(-0.27, -h * 0.6, leg_len, stride * 0.7, 0.08)
    head_c = np.array([0.52, h + r.uniform(0.05, 0.16)])
    snout = r.uniform(0.1, 0.17)
    nose = head_c + (0.1 + snout, -0.04)
    ear_tip = head_c + (r.uniform(-0.12, 0.0), r.uniform(0.15, 0.24))
    tail_a = r.uniform(0.3, 2.4)  # down-back .. up
    tail, tail_tip = limb(-0.45, h * 0.6, r.uniform(0.2, 0.32), -tail_a, 0.05)
    parts = [
        Part(front_leg2, "dark"), Part(back_leg2, "dark"),
        Part(tail, "body"),
        Part(np.array([[-0.5, -h], [0.5, -h], [0.5, h], [-0.5, h]]), "body", textured=True),
        Part(ellipse(-0.5, 0.0, 0.08, h), "body", textured=True),
        Part(ellipse(0.5, 0.0, 0.08, h), "body", textured=True),
        Part(front_leg, "body"), Part(back_leg, "body"),
        Part(np.array([[0.38, h * 0.3], head_c + (-0.02, -0.08), head_c + (0.04, 0.06), [0.5, h]]), "body"),
        Part(ellipse(*head_c, 0.12, 0.1), "body"),
        Part(ellipse(head_c[0] + 0.08 + snout / 2, head_c[1] - 0.04, snout / 2 + 0.02, 0.05), "body"),
        Part(np.array([head_c + (-0.08, 0.05), ear_tip, head_c + (0.0, 0.08)]), "accent"),
        Part(ellipse(*nose, 0.03, 0.025), "pupil"),
        Part(ellipse(head_c[0] + 0.04, head_c[1] + 0.03, 0.03, 0.03), "eye"),
        Part(ellipse(head_c[0] + 0.05, head_c[1] + 0.03, 0.015, 0.015), "pupil"),
    ]
    kps = dict(nose=nose, eye=head_c + (0.04, 0.03), ear_tip=ear_tip, front_paw=front_paw, back_paw=back_paw,
               tail_tip=tail_tip, shoulder=np.array([0.32, h * 0.5]), hip=np.array([-0.33, h * 0.5]))
    return parts, kps


def _car(r: np.random.Generator) -> tuple[list[Part], dict[str, np.ndarray]]:
    h = r.uniform(0.12, 0.17)
    cabin_h = r.uniform(0.14, 0.22)
    front = r.uniform(0.05, 0.25)  # where the cabin ends towards the front
    back = r.uniform(-0.4, -0.2)
    wr = r.uniform(0.09, 0.12)
    fw, bw = np.array([0.3, -h]), np.array([-0.3, -h])
    roof_front = np.array([front - 0.08, h + cabin_h])
    roof_back = np.array([back + 0.05, h + cabin_h])
    parts = [
        Part(np.array([[back, h], roof_back, roof_front, [front + 0.08, h]]), "body", textured=True),
        Part(np.array([[back + 0.05, h + 0.01], roof_back + (0.02, -0.03), roof_front + (-0.02, -0.03),
                       [front + 0.03, h + 0.01]]), "light"),
        Part(np.array([[-0.5, -h], [0.5, -h], [0.5, h * 0.6], [0.35, h], [-0.5, h]]), "body", textured=True),
        Part(ellipse(*fw, wr, wr), "dark"), Part(ellipse(*bw, wr, wr), "dark"),
        Part(ellipse(*fw, wr * 0.45, wr * 0.45), "accent"), Part(ellipse(*bw, wr * 0.45, wr * 0.45), "accent"),
        Part(ellipse(0.47, h * 0.25, 0.03, 0.04), "eye"),
        Part(np.array([[-0.5, h * 0.1], [-0.47, h * 0.1], [-0.47, h * 0.6], [-0.5, h * 0.6]]), "pupil"),
    ]
    kps = dict(front_wheel=fw, back_wheel=bw, headlight=np.array([0.47, h * 0.25]),
               taillight=np.array([-0.49, h * 0.35]), roof_front=roof_front, roof_back=roof_back,
               front_bumper=np.array([0.5, -h * 0.7]), rear_bumper=np.array([-0.5, -h * 0.7]))
    return parts, kps


def _turtle(r: np.random.Generator) -> tuple[list[Part], dict[str, np.ndarray]]:
    sh = r.uniform(0.22, 0.34)
    neck = r.uniform(0.0, 0.5)
    head_c = np.array([0.5 + 0.05 * math.cos(neck), 0.02 + 0.15 * math.sin(neck)])
    ffoot_poly, ffoot = limb(0.25, -0.03, r.uniform(0.1, 0.16), r.uniform(-0.4, 0.6), 0.08)
    bfoot_poly, bfoot = limb(-0.25, -0.03, r.uniform(0.1, 0.16), r.uniform(-0.6, 0.4), 0.08)
    tail_tip = np.array([-0.5 - r.uniform(0.05, 0.12), r.uniform(-0.06, 0.03)])
    parts = [
        Part(ffoot_poly, "accent"), Part(bfoot_poly, "accent"),
        Part(np.array([[-0.4, 0.02], tail_tip, [-0.4, -0.04]]), "accent"),
        Part(np.array([[0.3, 0.0], head_c + (-0.05, 0.04), head_c + (0.0, -0.05), [0.3, -0.05]]), "accent"),
        Part(ellipse(*head_c, 0.09, 0.065), "accent"),
        Part(np.concatenate([ellipse(0.0, 0.0, 0.42, sh, n=48)[:25], [[-0.44, -0.04], [0.44, -0.04]]]), "body",
             textured=True),
        Part(np.array([[-0.44, -0.04], [0.44, -0.04], [0.42, -0.08], [-0.42, -0.08]]), "light"),
        Part(ellipse(head_c[0] + 0.04, head_c[1] + 0.015, 0.025, 0.025), "eye"),
        Part(ellipse(head_c[0] + 0.048, head_c[1] + 0.015, 0.012, 0.012), "pupil"),
    ]
    kps = dict(head_tip=head_c + (0.09, 0.0), eye=head_c + (0.04, 0.015), shell_top=np.array([0.0, sh]),
               front_foot=ffoot, back_foot=bfoot, tail_tip=tail_tip, shell_front=np.array([0.42, -0.02]),
               shell_back=np.array([-0.42, -0.02]))
    return parts, kps


BUILDERS: dict[str, Callable[[np.random.Generator], tuple[list[Part], dict[str, np.ndarray]]]] = {
    "fish": _fish, "bird": _bird, "dog": _dog, "car": _car, "turtle": _turtle,
}


# --- colours, textures, backgrounds ---------------------------------------------------------------------------

def _colour(r: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in r.integers(0, 256, 3))


def _scheme(r: np.random.Generator) -> dict[str, tuple[int, int, int]]:
    body = _colour(r)
    return {
        "body": body,
        "accent": _colour(r) if r.random() < 0.7 else body,
        "dark": tuple(int(v) for v in r.integers(0, 90, 3)),
        "light": tuple(int(v) for v in r.integers(150, 256, 3)),
        "eye": tuple(int(v) for v in r.integers(200, 256, 3)),
        "pupil": tuple(int(v) for v in r.integers(0, 50, 3)),
        "pattern": _colour(r),
    }


def _texture(r: np.random.Generator, big: int, base, other) -> Image.Image:
    """Solid, stripes, spots or checks in two colours, at a random scale and angle (computed at the output
    resolution, then enlarged to the drawing canvas)."""
    size = big // SUPERSAMPLE
    kind = r.choice(["solid", "stripes", "spots", "checks"], p=[0.3, 0.3, 0.25, 0.15])
    img = Image.new("RGB", (size, size), base)
    if kind == "solid":
        return img.resize((big, big))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = r.uniform(0.04, 0.15) * size
    a = r.uniform(0, math.pi)
    if kind == "stripes":
        mask = (np.cos(a) * xx + np.sin(a) * yy) % period < period * r.uniform(0.3, 0.6)
    elif kind == "checks":
        mask = ((xx // period).astype(int) + (yy // period).astype(int)) % 2 == 0
    else:
        mask = np.zeros((size, size), bool)
        for _ in range(int(r.integers(8, 30))):
            cx, cy, rad = r.uniform(0, size), r.uniform(0, size), r.uniform(0.02, 0.07) * size
            mask |= (xx - cx) ** 2 + (yy - cy) ** 2 < rad ** 2
    pattern = Image.composite(Image.new("RGB", (size, size), other), img, Image.fromarray(mask.astype(np.uint8) * 255))
    return pattern.resize((big, big), Image.BILINEAR)


def _background(r: np.random.Generator, size: int) -> Image.Image:
    """A two-colour gradient with random clutter (blobs, bars, lines) that shares the objects' colours."""
    c0, c1 = np.array(_colour(r), np.float32), np.array(_colour(r), np.float32)
    a = r.uniform(0, 2 * math.pi)
    coarse = 32  # a gradient is smooth: compute it small, then resize
    yy, xx = np.mgrid[0:coarse, 0:coarse].astype(np.float32) / coarse
    w = np.clip((math.cos(a) * (xx - 0.5) + math.sin(a) * (yy - 0.5)) + 0.5, 0, 1)[..., None]
    img = Image.fromarray((c0 * (1 - w) + c1 * w).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(r.integers(0, 5))):
        x, y = r.uniform(0, size, 2)
        s = r.uniform(0.03, 0.12) * size
        kind = r.integers(0, 3)
        fill = _colour(r)
        if kind == 0:
            draw.ellipse([x - s, y - s * r.uniform(0.3, 1), x + s, y + s * r.uniform(0.3, 1)], fill=fill)
        elif kind == 1:
            draw.rectangle([x - s, y - s / 3, x + s, y + s / 3], fill=fill)
        else:
            x2, y2 = r.uniform(0, size, 2)
            draw.line([x, y, x2, y2], fill=fill, width=max(1, int(s / 6)))
    return img


# --- placing and drawing ---------------------------------------------------------------------------------------

def _transform(r: np.random.Generator, size: int, parts: list[Part]) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """Scale so the object spans 65-95 % of the image, tilt up to 20 degrees, face left or right, place it
    anywhere that keeps most of it inside."""
    allpts = np.concatenate([p.polygon for p in parts])
    span = float(np.max(allpts.max(0) - allpts.min(0)))
    scale = r.uniform(0.65, 0.95) * size / span
    tilt = r.uniform(-0.35, 0.35)
    facing = "right" if r.random() < 0.5 else "left"
    flip = 1.0 if facing == "right" else -1.0
    c, s = math.cos(tilt), math.sin(tilt)
    centre = (allpts.max(0) + allpts.min(0)) / 2

    def place(pts: np.ndarray, offset=np.zeros(2)) -> np.ndarray:
        p = (pts - centre) * (flip, 1.0)
        p = p @ np.array([[c, s], [-s, c]]) * scale
        return np.stack([p[:, 0] + offset[0], -p[:, 1] + offset[1]], 1)  # y up -> image rows down

    placed = place(allpts)
    lo, hi = placed.min(0), placed.max(0)
    slack = 0.1 * (hi - lo)  # up to 10 % of the object may leave the picture
    ox = r.uniform(-lo[0] - slack[0], size - hi[0] + slack[0])
    oy = r.uniform(-lo[1] - slack[1], size - hi[1] + slack[1])
    return (lambda pts: place(pts, np.array([ox, oy]))), facing


def draw(seed: int, index: int, size: int = 256, category: str | None = None) -> Creature:
    """Image `index` of the stream `seed`: deterministic, independent of every other index."""
    r = np.random.default_rng([int(seed), int(index), 0xC0FFEE])
    category = category or CATEGORIES[int(r.integers(len(CATEGORIES)))]
    if category not in BUILDERS:
        raise ValueError(f"unknown category {category!r}; categories: {', '.join(CATEGORIES)}")
    parts, kps = BUILDERS[category](r)
    place, facing = _transform(r, size, parts)
    big = size * SUPERSAMPLE
    scheme = _scheme(r)
    img = _background(r, big)
    texture = _texture(r, big, scheme["body"], scheme["pattern"])
    object_mask = Image.new("L", (big, big), 0)
    canvas = ImageDraw.Draw(img)
    for part in parts:
        poly = [tuple(p) for p in place(part.polygon) * SUPERSAMPLE]
        if part.textured:
            mask = Image.new("L", (big, big), 0)
            ImageDraw.Draw(mask).polygon(poly, fill=255)
            img.paste(texture, (0, 0), mask)
        else:
            canvas.polygon(poly, fill=scheme[part.fill])
        ImageDraw.Draw(object_mask).polygon(poly, fill=255)
    points = place(np.stack([kps[name] for name in KEYPOINTS[category]]))
    ys, xs = np.nonzero(np.asarray(object_mask))
    bbox = (xs.min() / SUPERSAMPLE, ys.min() / SUPERSAMPLE, (xs.max() + 1) / SUPERSAMPLE, (ys.max() + 1) / SUPERSAMPLE)
    bbox = tuple(float(np.clip(v, 0, size)) for v in bbox)

    # An occluder in front (a quarter of the images): a textured blob or bar over part of the object.
    hidden = Image.new("L", (big, big), 0)
    if r.random() < 0.25:
        x1, y1, x2, y2 = (v * SUPERSAMPLE for v in bbox)
        cx, cy = r.uniform(x1, x2), r.uniform(y1, y2)
        w, h = r.uniform(0.15, 0.35) * (x2 - x1 + 1), r.uniform(0.15, 0.45) * (y2 - y1 + 1)
        shape = [cx - w, cy - h, cx + w, cy + h]
        drawer = ImageDraw.Draw(hidden)
        drawer.ellipse(shape, fill=255) if r.random() < 0.5 else drawer.rectangle(shape, fill=255)
        img.paste(_texture(r, big, _colour(r), _colour(r)), (0, 0), hidden)
    image = img.resize((size, size), Image.BOX)
    if r.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(r.uniform(0.3, 1.0)))
    noise = r.normal(0, r.uniform(0, 6), (size, size, 3))
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8))

    inside = (points[:, 0] >= 0) & (points[:, 0] < size) & (points[:, 1] >= 0) & (points[:, 1] < size)
    hidden_np = np.asarray(hidden)
    under = np.array([inside[i] and hidden_np[int(points[i, 1] * SUPERSAMPLE), int(points[i, 0] * SUPERSAMPLE)] > 0
                      for i in range(len(points))])
    return Creature(category, image, points.astype(np.float64), inside & ~under, bbox, facing)

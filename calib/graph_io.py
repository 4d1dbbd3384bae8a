"""A feature graph's inputs and outputs, declared once, and the one function that gives their shapes.

Each tensor lists its axes: a fixed size, or a named dynamic axis divided by a stride
(`Axis("height", 8)` is "height/8" in the manifest). `GraphIO.shapes(sizes)` evaluates every tensor at
one (batch, ensemble, frames, height, width); tracing (example inputs, dynamic axes), the manifest's I/O
specs and TensorRT profiles, calibration feeds and parity inputs all come from it, so no stride is
written anywhere else. A family declares its own tensors (ditf_export's `FamilyAdapter.graph_io`): the
diffusion families share `diffusion_io` (image + noise -> features); a graph without noise declares
only its image input, with its own strides and size multiple, and the generic code follows.

Torch-free: ditf_calib builds feeds from it, ditf_export traces and writes the manifest with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np

from ditf_runtime.manifest import FEATURES_OUTPUT, IMAGE_INPUT, NOISE_INPUT, Geometry, TensorSpec

BATCH, ENSEMBLE, FRAMES, HEIGHT, WIDTH = "batch", "ensemble", "frames", "height", "width"
SPATIAL = (HEIGHT, WIDTH)

# What a graph input holds, which says how to make one: calibration takes pixels from the runtime's
# preprocessing and noise from its seeded rule; random checks draw uniform pixels and normal noise.
IMAGE, NOISE = "image", "noise"
# parity and calibration clips: at most this many frames (a long clip's cost grows with every frame; spacetime
# attention quadratically), rounded to a length the graph takes
CHECK_FRAMES = 9


@dataclass(frozen=True)
class Sizes:
    """One point of a graph's dynamic axes, in pixels for height and width."""

    batch: int
    height: int
    width: int
    ensemble: int | None = None
    frames: int | None = None

    def of(self, axis: str) -> int:
        value = getattr(self, axis, None)
        if value is None:
            raise ValueError(f"no {axis} size given ({self}); this graph has a {axis} axis")
        return int(value)


@dataclass(frozen=True)
class Axis:
    """A dynamic axis: the size named `name`, divided by `stride` (pixels -> latent or feature cells)."""

    name: str
    stride: int = 1
    # a causal 3-D VAE's frame axis: the first frame alone, then one cell per `stride` frames: 1 + (v - 1) / stride
    causal: bool = False

    def __str__(self) -> str:
        if self.causal:
            return f"1+({self.name}-1)/{self.stride}"
        return self.name if self.stride == 1 else f"{self.name}/{self.stride}"

    def unscaled(self, n: int) -> int:
        """The size `name` that gives n cells on this axis (the inverse of `size`)."""
        return 1 + (int(n) - 1) * self.stride if self.causal else int(n) * self.stride

    def size(self, sizes: Sizes) -> int:
        value = sizes.of(self.name)
        if self.causal:
            if value < 1 or (value - 1) % self.stride:
                raise ValueError(f"{self.name} {value} is not 1 + {self.stride}k (the VAE's temporal groups)")
            return 1 + (value - 1) // self.stride
        if value % self.stride:
            raise ValueError(f"{self.name} {value} is not a multiple of {self.stride}")
        return value // self.stride


@dataclass(frozen=True)
class TensorIO:
    """One graph tensor: its name, axes (ints are fixed), what it holds, and its dtype."""

    name: str
    axes: tuple[int | Axis, ...]
    role: str | None = None  # inputs: IMAGE or NOISE
    dtype: str = "float32"

    def shape(self, sizes: Sizes) -> tuple[int, ...]:
        return tuple(a.size(sizes) if isinstance(a, Axis) else int(a) for a in self.axes)

    def spec(self) -> TensorSpec:
        """The manifest's form: ints for fixed axes, "height/8"-style names for dynamic ones."""
        return TensorSpec(self.name, self.dtype, tuple(str(a) if isinstance(a, Axis) else int(a) for a in self.axes))

    def axis_index(self, name: str) -> int | None:
        return next((i for i, a in enumerate(self.axes) if isinstance(a, Axis) and a.name == name), None)


@dataclass(frozen=True)
class GraphIO:
    """Every tensor of a graph, plus the geometry the runtime reads from the manifest."""

    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]
    geometry: Geometry
    max_frames: int | None = None  # graphs with a frames axis: the most frames one clip may have

    def __post_init__(self) -> None:
        for t in self.inputs + self.outputs:
            for a in t.axes:
                if isinstance(a, Axis) and a.name in SPATIAL and self.size_multiple % a.stride:
                    raise ValueError(f"{t.name}: stride {a.stride} does not divide the size multiple "
                                     f"{self.size_multiple}")
        if self.has_axis(FRAMES) and not self.max_frames:
            raise ValueError("a graph with a frames axis needs max_frames")
        if self.max_frames and self.clip_frames(self.max_frames) != self.max_frames:
            raise ValueError(f"max_frames {self.max_frames} is not 1 + {self.geometry.frame_stride}k")

    @property
    def size_multiple(self) -> int:
        return self.geometry.size_multiple

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def has_axis(self, name: str) -> bool:
        return any(t.axis_index(name) is not None for t in self.inputs + self.outputs)

    def check_frames(self) -> int:
        """The clip length of parity and calibration inputs: the graph's most frames, at most CHECK_FRAMES."""
        return self.clip_frames(min(int(self.max_frames), CHECK_FRAMES))

    def clip_frames(self, frames: int) -> int:
        """A clip length this graph takes near `frames`: itself, or for a causal 3-D VAE (frame_stride s > 1) the
        nearest 1 + s*k at or below it, at least 1 + s."""
        s = self.geometry.frame_stride
        return int(frames) if s == 1 else 1 + s * max(1, (int(frames) - 1) // s)

    def input(self, role: str) -> TensorIO | None:
        return next((t for t in self.inputs if t.role == role), None)

    def shapes(self, sizes: Sizes) -> dict[str, tuple[int, ...]]:
        """THE shape function: every input's and output's shape at `sizes`."""
        limit = self.geometry.max_size
        for side in SPATIAL:
            if sizes.of(side) % self.size_multiple:
                raise ValueError(f"{side} {sizes.of(side)} is not a multiple of {self.size_multiple}")
            if limit is not None and sizes.of(side) > limit:
                raise ValueError(f"{side} {sizes.of(side)} is beyond the {limit} pixels this graph was verified for")
        return {t.name: t.shape(sizes) for t in self.inputs + self.outputs}

    def input_shapes(self, sizes: Sizes) -> dict[str, list[int]]:
        shapes = self.shapes(sizes)
        return {t.name: list(shapes[t.name]) for t in self.inputs}

    def sizes_of(self, feed: Mapping[str, np.ndarray]) -> Sizes:
        """The sizes a feed was made at (the inverse of `shapes`), checked for consistency."""
        found: dict[str, int] = {}
        for t in self.inputs:
            shape = np.shape(feed[t.name])
            if len(shape) != len(t.axes):
                raise ValueError(f"{t.name} has shape {shape}; expected {len(t.axes)} axes {t.spec().shape}")
            for a, n in zip(t.axes, shape):
                if isinstance(a, Axis) and found.setdefault(a.name, a.unscaled(n)) != a.unscaled(n):
                    raise ValueError(f"{t.name} axis {a}: {n} disagrees with {a.name} {found[a.name]}")
        return Sizes(**{f.name: found.get(f.name) for f in fields(Sizes)})

    def random_inputs(self, sizes: Sizes, seed: int) -> dict[str, np.ndarray]:
        """Random float32 inputs, drawn in input order from one generator: pixels uniform in [-1, 1],
        noise standard normal."""
        rng = np.random.default_rng(seed)
        shapes = self.shapes(sizes)
        feed = {}
        for t in self.inputs:
            if t.role == IMAGE:
                feed[t.name] = rng.uniform(-1, 1, size=shapes[t.name]).astype(np.float32)
            elif t.role == NOISE:
                feed[t.name] = rng.standard_normal(shapes[t.name]).astype(np.float32)
            else:
                raise ValueError(f"input {t.name}: no rule for drawing a random {t.role!r} input")
        return feed

    def profiles(self, low: Sizes, opt: Sizes, high: Sizes) -> dict[str, dict[str, list[int]]]:
        """TensorRT optimization profile: every input's min/opt/max shape."""
        return {"min": self.input_shapes(low), "opt": self.input_shapes(opt), "max": self.input_shapes(high)}


def diffusion_io(latent_channels: int, feature_channels: int, vae_stride: int, patch_size: int,
                 max_frames: int | None = None, max_grid: int | None = None, frame_stride: int = 1) -> GraphIO:
    """The DiTF graph of a diffusion transformer: image [B, 3, H, W] in [-1, 1] and noise
    [B, E, c, H/vae_stride, W/vae_stride] -> features [B, C, H/stride, W/stride], stride = vae_stride *
    patch_size, which H and W must be multiples of. Video (max_frames set): a frames axis after the
    batch axis (image, features) or the ensemble axis (noise). max_grid: the most tokens per side the
    model's position tables cover (None: no limit); the geometry records it in pixels (max_size).
    frame_stride > 1 (a causal 3-D VAE, Wan and CogVideoX: 4): noise and features have 1 + (F - 1) / frame_stride
    frames, F = 1 + frame_stride * k."""
    stride = vae_stride * patch_size
    f = () if max_frames is None else (Axis(FRAMES),)
    lf = () if max_frames is None else (Axis(FRAMES, frame_stride, causal=True) if frame_stride > 1 else Axis(FRAMES),)
    batch, ensemble = Axis(BATCH), Axis(ENSEMBLE)
    return GraphIO(
        inputs=(
            TensorIO(IMAGE_INPUT, (batch, *f, 3, Axis(HEIGHT), Axis(WIDTH)), role=IMAGE),
            TensorIO(NOISE_INPUT, (batch, ensemble, *lf, latent_channels, Axis(HEIGHT, vae_stride),
                                   Axis(WIDTH, vae_stride)), role=NOISE),
        ),
        outputs=(TensorIO(FEATURES_OUTPUT, (batch, *lf, feature_channels, Axis(HEIGHT, stride), Axis(WIDTH, stride))),),
        geometry=Geometry(latent_channels=latent_channels, feature_channels=feature_channels, vae_stride=vae_stride,
                          feature_stride=stride, size_multiple=stride, frame_axis=None if max_frames is None else 1,
                          frame_stride=frame_stride,
                          max_size=None if max_grid is None else max_grid * stride),
        max_frames=max_frames,
    )


def image_io(feature_channels: int, stride: int, max_size: int | None = None) -> GraphIO:
    """A graph without noise (DINOv2): image [B, 3, H, W] in [-1, 1] -> features [B, C, H/stride, W/stride],
    H and W multiples of `stride`, at most `max_size` pixels (None: no limit). No latent: the geometry's
    latent_channels and vae_stride are 0."""
    batch = Axis(BATCH)
    return GraphIO(
        inputs=(TensorIO(IMAGE_INPUT, (batch, 3, Axis(HEIGHT), Axis(WIDTH)), role=IMAGE),),
        outputs=(TensorIO(FEATURES_OUTPUT, (batch, feature_channels, Axis(HEIGHT, stride), Axis(WIDTH, stride))),),
        geometry=Geometry(latent_channels=0, feature_channels=feature_channels, vae_stride=0, feature_stride=stride,
                          size_multiple=stride, max_size=max_size),
    )

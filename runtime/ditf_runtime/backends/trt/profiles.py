"""Optimisation profiles: from the command line or the manifest, checked against the export, chosen per request.

A profile gives every graph input a (min, opt, max) shape. Image exports take `image` [B, 3, H, W]
and `noise` [B, E, c, H/8, W/8] (DINOv2 exports the image alone); video exports put the frame axis F after B (image) and after E
(noise), as the manifest's geometry.frame_axis says. On the command line a size is BxHxW
(BxFxHxW for video); E comes from --ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ...errors import InputError
from ...manifest import IMAGE_INPUT, NOISE_INPUT, Manifest, latent_frames

Shape = tuple[int, ...]
LABELS = ("min", "opt", "max")


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: input name -> (min, opt, max) shapes."""

    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def to_record(self) -> dict[str, dict[str, list[int]]]:
        return {name: dict(zip(LABELS, (list(s) for s in triple))) for name, triple in self.shapes.items()}

    @classmethod
    def from_record(cls, data: dict[str, dict[str, list[int]]]) -> "Profile":
        return cls({name: tuple(tuple(int(d) for d in data[name][k]) for k in LABELS) for name in data})

    def describe(self) -> str:
        return "; ".join(
            f"{name} {'x'.join(map(str, low))} .. {'x'.join(map(str, high))}"
            for name, (low, _, high) in self.shapes.items()
        )


def is_video(manifest: Manifest) -> bool:
    return manifest.geometry.frame_axis is not None


def size_format(manifest: Manifest) -> str:
    return "BATCHxFRAMESxHEIGHTxWIDTH" if is_video(manifest) else "BATCHxHEIGHTxWIDTH"


def parse_size(text: str, manifest: Manifest) -> Shape:
    """'2x640x480' -> (2, 640, 480); video exports take '1x8x256x256' (batch, frames, height, width)."""
    parts = text.lower().split("x")
    count = 4 if is_video(manifest) else 3
    if len(parts) != count or not all(p.strip().isdigit() for p in parts):
        example = "1x8x256x256" if count == 4 else "1x640x480"
        raise InputError(f"shape {text!r} must be {size_format(manifest)}, e.g. {example}")
    return tuple(int(p) for p in parts)


def has_noise(manifest: Manifest) -> bool:
    """Diffusion graphs take noise; DINOv2 graphs take the image alone (and have no E)."""
    return any(spec.name == NOISE_INPUT for spec in manifest.inputs)


def input_names(manifest: Manifest) -> tuple[str, ...]:
    return (IMAGE_INPUT, NOISE_INPUT) if has_noise(manifest) else (IMAGE_INPUT,)


def input_shapes(manifest: Manifest, size: Shape, ensemble: int) -> dict[str, Shape]:
    """(B, H, W) or (B, F, H, W) plus E -> the shapes of `image` and (graphs with noise) `noise`."""
    geometry = manifest.geometry
    batch, *frames, height, width = size
    shapes = {IMAGE_INPUT: (batch, *frames, 3, height, width)}
    if has_noise(manifest):
        stride = geometry.vae_stride
        latent = (geometry.latent_channels, height // stride, width // stride)
        shapes[NOISE_INPUT] = (batch, ensemble, *(latent_frames(geometry, f) for f in frames), *latent)
    return shapes


def cli_profile(manifest: Manifest, low: str, opt: str, high: str, ensemble: int) -> Profile:
    """One profile from --min/--opt/--max and a fixed E, checked against the export."""
    sizes = [parse_size(text, manifest) for text in (low, opt, high)]
    for label, size in zip(LABELS, sizes):
        _check_size(manifest, label, size)
    for axis in range(len(sizes[0])):
        if not sizes[0][axis] <= sizes[1][axis] <= sizes[2][axis]:
            raise InputError(f"profile must satisfy min <= opt <= max on every axis: {low}, {opt}, {high}")
    if ensemble < 1:
        raise InputError(f"ensemble must be >= 1, got {ensemble}")
    shaped = [input_shapes(manifest, size, ensemble) for size in sizes]
    profile = Profile({name: tuple(s[name] for s in shaped) for name in input_names(manifest)})
    check_profile(manifest, profile)
    return profile


def _check_size(manifest: Manifest, label: str, size: Shape) -> None:
    multiple = manifest.geometry.size_multiple
    text = "x".join(map(str, size))
    if any(d < 1 for d in size):
        raise InputError(f"--{label} {text}: every size must be >= 1")
    height, width = size[-2:]
    if height % multiple or width % multiple:
        raise InputError(
            f"--{label} {text}: height and width must be multiples of {multiple} (the model's size multiple)"
        )


def manifest_profiles(manifest: Manifest) -> list[Profile]:
    """The export's own profile (manifest tensorrt_profiles), used when --min/--opt/--max are omitted."""
    data = manifest.tensorrt_profiles or {}
    try:
        profile = Profile({name: tuple(tuple(int(d) for d in data[k][name]) for k in LABELS)
                           for name in input_names(manifest)})  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise InputError(
            "the manifest has no usable tensorrt_profiles (older export?): give --min, --opt and --max"
        ) from None
    try:
        check_profile(manifest, profile)
    except InputError as exc:  # e.g. an export whose --image-size is below the profile's 256 minimum
        raise InputError(
            f"the manifest's tensorrt_profiles cannot be built ({exc}): give --min, --opt and --max"
        ) from None
    return [profile]


def _limits(manifest: Manifest) -> dict[str, Any]:
    """What the export allows beyond the graph's own rules: E and frame ranges of its tensorrt_profiles."""
    data = manifest.tensorrt_profiles or {}
    limits: dict[str, Any] = {}
    try:
        if has_noise(manifest):
            limits["max_ensemble"] = int(data["max"][NOISE_INPUT][1])
        if is_video(manifest):
            axis = manifest.geometry.frame_axis
            limits["frames"] = (int(data["min"][IMAGE_INPUT][axis]), int(data["max"][IMAGE_INPUT][axis]))
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    return limits


def check_profile(manifest: Manifest, profile: Profile) -> None:
    """Refuse a profile the export cannot run: ranks, min <= opt <= max, sizes, E and frames."""
    if set(profile.shapes) != set(input_names(manifest)):
        raise InputError(f"profile {profile.describe()}: gives {sorted(profile.shapes)}, the graph takes "
                         f"{list(input_names(manifest))}")
    image, noise = profile.shapes[IMAGE_INPUT], profile.shapes.get(NOISE_INPUT, ())
    rank = 5 if is_video(manifest) else 4
    if any(len(s) != rank for s in image) or any(len(s) != rank + 1 for s in noise):
        raise InputError(f"profile {profile.describe()}: image needs rank {rank}, noise rank {rank + 1}")
    for name, triple in profile.shapes.items():
        for axis in range(len(triple[0])):
            if not 1 <= triple[0][axis] <= triple[1][axis] <= triple[2][axis]:
                raise InputError(f"profile {name}: min <= opt <= max must hold on every axis, got {triple}")
    for label, shape in zip(LABELS, image):
        _check_size(manifest, label, (shape[0], *shape[1:-3], *shape[-2:]))
    limits = _limits(manifest)
    largest_e = noise[2][1] if noise else 0
    if "max_ensemble" in limits and largest_e > limits["max_ensemble"]:
        raise InputError(
            f"ensemble E = {largest_e} exceeds what this export allows ({limits['max_ensemble']}, "
            "manifest tensorrt_profiles); use a smaller --ensemble"
        )
    if "frames" in limits:
        axis = manifest.geometry.frame_axis
        low, high = limits["frames"]
        if image[0][axis] < low or image[2][axis] > high:
            raise InputError(
                f"frames {image[0][axis]}..{image[2][axis]} are outside what this export takes ({low}..{high})"
            )


def choose_profile(ranges: Sequence[dict[str, tuple[Shape, Shape]]], shapes: dict[str, Shape],
                   prefer: int | None = None) -> int:  # fmt: skip
    """Index of a profile whose (min, max) ranges hold every input shape; `prefer` first if it does."""

    def holds(index: int) -> bool:
        for name, shape in shapes.items():
            low, high = ranges[index][name]
            if len(shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
                return False
        return True

    order = ([prefer] if prefer is not None else []) + [i for i in range(len(ranges)) if i != prefer]
    for index in order:
        if holds(index):
            return index
    described = " | ".join(
        f"profile {i}: " + ", ".join(f"{name} {tuple(low)}..{tuple(high)}" for name, (low, high) in r.items())
        for i, r in enumerate(ranges)
    )
    got = ", ".join(f"{name} {tuple(shape)}" for name, shape in shapes.items())
    raise InputError(
        f"no optimisation profile of this engine holds {got} ({described}); "
        "rebuild the engine with a profile that covers it (`ditf build-engine --min/--opt/--max`)"
    )

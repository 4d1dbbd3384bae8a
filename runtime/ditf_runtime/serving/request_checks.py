"""One request's checks, on its own: a served request in, the rows it makes (one image as one model sees
it, prepared and with its noise) or an InputError that names the problem; nothing runs here.

`RequestChecks` knows what a pipeline accepts (its exports, fused or not, the pixel limit); the pipeline
(pipeline.py) groups the valid requests' rows and runs them. Requests are untrusted: MAX_ENSEMBLE bounds the
noise one of them may make the server draw, and `check_call` (the server's memory budget) refuses an image
size before the image is resized to it. The size limits are the export's own (preprocess.prepare,
geometry.max_size), the same as `ditf extract --size` and the other commands take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..cpu_variant import GraphChoice
from ..errors import InputError
from ..manifest import NOISE_INPUT, Manifest
from ..noise import DEFAULT_SEED, check_image_noise, default_noise
from ..preprocess import check_size_limit, prepare
from .protocol import DEFAULT_MAX_MATCHES, Feed, batch_size, read_array, read_option

MAX_ENSEMBLE = 64

Run = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]
# (member, model (H, W), E): refuses (MemoryBudgetError) one image's graph call that could not fit
CallCheck = Callable[["Member", tuple[int, int], int], None]


@dataclass
class Row:
    """One image as one model sees it (a fused request has one row per model for each image)."""

    request: int
    pixels: np.ndarray  # float32 [3, H, W]
    noise: np.ndarray | None  # float32 [E, c, H/vs, W/vs]; None for a graph without noise
    image_size: tuple[int, int]
    model: int = 0  # which member runs it
    features: np.ndarray | None = None

    @property
    def key(self) -> tuple:
        return (self.model, self.pixels.shape[1:], 0 if self.noise is None else self.noise.shape[0])


@dataclass(frozen=True)
class Member:
    """One export the pipeline runs: its manifest, `run(image, noise)`, the one E its engine takes, its graph."""

    manifest: Manifest
    run: Run
    fixed_ensemble: int | None = None
    graph: GraphChoice | None = None  # Extractor.graph: whether attention is fused, for the memory check

    @property
    def has_noise(self) -> bool:
        return any(spec.name == NOISE_INPUT for spec in self.manifest.inputs)


@dataclass(frozen=True)
class MatchRows:
    """A match request's rows: the source's and the target's (one per model each), points, max_matches."""

    source: list[Row]
    target: list[Row]
    points: np.ndarray | None
    max_matches: int


@dataclass(frozen=True)
class RequestChecks:
    """What a pipeline accepts: its members (two when it fuses) and the pixel limit of a decoded image."""

    members: tuple[Member, ...]
    fused: bool
    max_pixels: int | None
    check_call: CallCheck | None = None

    def extract_rows(self, index: int, feed: Feed) -> list[Row]:
        """An extract request's rows, image by image (one row per model for each image)."""
        has_image, has_pixels = feed.get("image") is not None, feed.get("pixels") is not None
        if self.fused and (has_pixels or feed.get("noise") is not None):
            raise InputError("this server fuses two models, each preparing its own input: send the uint8 'image' "
                             "(no 'pixels' or 'noise')")
        if has_image == has_pixels:
            raise InputError("send exactly one of 'image' (uint8 [B, H, W, 3]) or 'pixels' (float32 [B, 3, H, W])")
        batch = batch_size(feed)
        seeds, ensembles, sizes = (read_option(feed, name, batch) for name in ("seed", "ensemble", "size"))
        if not has_image:
            if any(size is not None for size in sizes):
                raise InputError("'size' resizes an 'image'; 'pixels' are already the model input")
            pixels = read_array(feed, "pixels", np.float32, 4)
            noise = feed.get("noise")
            if noise is not None:
                noise = read_array(feed, "noise", np.float32, 5)
            return [
                Row(index, self._check_pixels(pixels[i]), self._noise(self.members[0], pixels[i], noise, i, seeds[i],
                                                                      ensembles[i]), tuple(pixels.shape[2:]))
                for i in range(batch)
            ]
        images = read_array(feed, "image", np.uint8, 4)
        noise = feed.get("noise")
        if noise is not None:
            noise = read_array(feed, "noise", np.float32, 5)
        rows = []
        for i in range(batch):
            for k, member in enumerate(self.members):
                pixels, image_size = self._prepare(member, images[i], sizes[i], _ensemble(member, noise, i, ensembles[i]))
                rows.append(Row(index, pixels, self._noise(member, pixels, noise, i, seeds[i], ensembles[i]),
                                image_size, model=k))
        return rows

    def match_rows(self, index: int, feed: Feed) -> MatchRows:
        for name in ("source", "target"):
            if feed.get(name) is None:
                raise InputError(f"a match request needs 'source' and 'target' (uint8 [1, H, W, 3]); {name!r} is missing")
        batch = batch_size(feed)
        if batch != 1:
            raise InputError(f"send one pair per match request (batch 1), got {batch}; the server batches requests")
        seed, ensemble, size = (read_option(feed, name, 1)[0] for name in ("seed", "ensemble", "size"))
        max_matches = read_option(feed, "max_matches", 1)[0]
        max_matches = DEFAULT_MAX_MATCHES if max_matches is None else max_matches
        if max_matches < 1:
            raise InputError(f"max_matches must be >= 1, got {max_matches}")
        points = feed.get("points")
        if points is not None:
            points = read_array(feed, "points", np.int64, 3)[0]
        rows = []
        for name in ("source", "target"):
            image = read_array(feed, name, np.uint8, 4)[0]
            image_rows = []
            for k, member in enumerate(self.members):
                pixels, image_size = self._prepare(member, image, size, _ensemble(member, None, 0, ensemble))
                image_rows.append(Row(index, pixels, self._noise(member, pixels, None, 0, seed, ensemble), image_size,
                                      model=k))
            rows.append(image_rows)
        return MatchRows(rows[0], rows[1], points, max_matches)

    def _prepare(self, member: Member, image: np.ndarray, size: int | None,
                 ensemble: int) -> tuple[np.ndarray, tuple[int, int]]:
        geometry = member.manifest.geometry
        if size is not None and self.fused:
            raise InputError("'size': each fused model keeps its own input size; leave it out")
        check = None
        if self.check_call is not None:
            check = lambda hw: self.check_call(member, hw, ensemble)  # noqa: E731
        item = prepare(
            image,
            member.manifest.preprocess,
            geometry,
            long_side=size,
            exif_transpose=False,  # arrays carry no EXIF; clients apply it when they read files
            max_pixels=self.max_pixels,
            check_size=check,  # before the resize, which alone can take gigabytes at an absurd size
            option="size",
        )
        return item.pixels, item.image_size

    def _check_pixels(self, pixels: np.ndarray) -> np.ndarray:
        multiple = self.members[0].manifest.geometry.size_multiple
        _, height, width = pixels.shape
        if pixels.shape[0] != 3:
            raise InputError(f"pixels must be [B, 3, H, W] RGB, got a row of shape {pixels.shape}")
        if height < multiple or width < multiple or height % multiple or width % multiple:
            raise InputError(
                f"pixels are {height}x{width}: height and width must be positive multiples of {multiple} "
                "(send the uint8 'image' instead to have the server resize it)"
            )
        check_size_limit(self.members[0].manifest.geometry, height, width, what="pixels", option="size")
        if not np.isfinite(pixels).all():
            raise InputError("pixels hold NaN or infinite values")
        return np.ascontiguousarray(pixels)

    def _noise(self, member: Member, pixels, noise, row, seed, ensemble) -> np.ndarray | None:
        if not member.has_noise:
            if noise is not None or (ensemble is not None and not self.fused):
                raise InputError(f"{member.manifest.model_name} takes no noise: leave out 'noise' and 'ensemble'")
            return None  # (a fused server's E is for the model that has noise)
        input_size = (pixels.shape[1], pixels.shape[2])
        geometry = member.manifest.geometry
        if noise is not None:
            if seed is not None:
                raise InputError("send either 'noise' or 'seed', not both (seed only draws the default noise)")
            checked = check_image_noise(noise[row], geometry, input_size, f"row {row}")
            if ensemble is not None and checked.shape[0] != ensemble:
                raise InputError(f"ensemble={ensemble} disagrees with the E={checked.shape[0]} of the given noise")
            _check_ensemble(member, checked.shape[0])
            return np.ascontiguousarray(checked)
        default = member.fixed_ensemble or member.manifest.feature.ensemble
        ensemble = default if ensemble is None else ensemble
        _check_ensemble(member, ensemble)
        return default_noise(pixels, geometry, ensemble, DEFAULT_SEED if seed is None else seed)


def _ensemble(member: Member, noise: np.ndarray | None, row: int, ensemble: int | None) -> int:
    """The E an image's call will have (for the memory check before its resize); checked later, in _noise."""
    if not member.has_noise:
        return 1
    if noise is not None and noise.ndim == 5:
        return int(noise.shape[1])
    if ensemble is None:
        ensemble = member.fixed_ensemble or member.manifest.feature.ensemble
    return min(max(int(ensemble), 1), MAX_ENSEMBLE)


def _check_ensemble(member: Member, ensemble: int) -> None:
    if not 1 <= ensemble <= MAX_ENSEMBLE:
        raise InputError(f"ensemble must be between 1 and {MAX_ENSEMBLE}, got {ensemble}")
    if member.fixed_ensemble is not None and ensemble != member.fixed_ensemble:
        raise InputError(f"this server's engine was built for ensemble E={member.fixed_ensemble}, got E={ensemble}")

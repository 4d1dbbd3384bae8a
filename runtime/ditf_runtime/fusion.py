"""Two exports, one feature map: DiTF + DINOv2 fusion (after "A Tale of Two Features", Zhang et al. 2023).

Per image:
1. the image is decoded once (EXIF orientation, RGB), then each export prepares it its own way (long
   side, size multiple, resampling, value range) and draws its own noise;
2. both maps are resampled bilinearly (align_corners=False, PyTorch's rule) to the finer of the two grids
   (more cells; a tie goes to the first), a map already on it staying as it is;
3. each token is L2-normalised per model, multiplied by its model's weight (default 0.5 / 0.5), and the
   two are concatenated along channels, the first model's first.

The result is an ordinary FeatureMap (its stride and input_size are the finer member's, its image_size
the shared original size), so matching, PCK and pictures treat it like any map. The exact matcher
(matching.py) applies unchanged because it only relies on bilinear upsampling being linear per channel:
the upsampled fused map *is* the concatenation of the upsampled normalised, weighted parts. Two things do
not carry over from the single maps, and tests/test_fusion.py shows both: an interpolated vector between
unit tokens is shorter than 1, so the fused cosine is not the weighted mean of the per-model cosines; and
weights (1, 0) reproduce the first model's matches on its *normalised* map, which equal its raw map's
only where neighbouring tokens have equal norms (normalising before upsampling reweights the cells).

Exactly two models: the recipe, its one weight and the paper's number are for a pair.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from . import memory
from .errors import InputError
from .extractor import Extractor
from .features import FeatureMap, bilinear_stencil
from .preprocess import ImageSource, as_image_list, frame_files, open_image

MODELS = 2  # exactly two exports are fused
DEFAULT_WEIGHTS = (0.5, 0.5)
_NORM_EPS = 1e-12  # F.normalize's: a zero token stays zero
RECIPE = ("bilinear (align_corners=False) to the finer grid, tokens L2-normalised per model, "
          "weighted, concatenated along channels")


def check_weights(weights: Sequence[float] | None, count: int = MODELS) -> tuple[float, ...]:
    """Weights in [0, 1], one per model, summing to 1 (cosine ignores the scale; the sum keeps them readable)."""
    if weights is None:
        return DEFAULT_WEIGHTS
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise InputError(f"fusion weights must be numbers, got {weights!r}") from None
    if len(values) != count:
        raise InputError(f"give one fusion weight per model: {count} models, {len(values)} weights")
    if not all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in values):
        raise InputError(f"fusion weights must lie in [0, 1], got {list(values)} (--fuse-weight W gives W and 1 - W)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise InputError(f"fusion weights must sum to 1, got {list(values)} (sum {sum(values):g})")
    return values


def resize_bilinear(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[C, h, w] -> float64 [C, H, W], PyTorch's bilinear with align_corners=False (no antialiasing)."""
    channels, h, w = chw.shape
    height, width = size
    if (h, w) == (height, width):
        return np.asarray(chw, dtype=np.float64)
    i0, a0, a1 = bilinear_stencil(h, height)
    j0, b0, b1 = bilinear_stencil(w, width)
    i1, j1 = np.minimum(i0 + 1, h - 1), np.minimum(j0 + 1, w - 1)
    x = np.asarray(chw, dtype=np.float64)
    rows = a0[None, :, None] * x[:, i0, :] + a1[None, :, None] * x[:, i1, :]  # [C, H, w]
    return b0[None, None, :] * rows[:, :, j0] + b1[None, None, :] * rows[:, :, j1]


def finer_index(grids: Sequence[tuple[int, int]]) -> int:
    """Which grid is the fused one: the most cells, then the most rows; ties go to the first."""
    return max(range(len(grids)), key=lambda k: (grids[k][0] * grids[k][1], grids[k][0], -k))


def fuse_arrays(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> tuple[np.ndarray, int]:
    """The recipe on [C_k, h_k, w_k] arrays of one image: float32 [sum C_k, H, W] and the finer array's index."""
    arrays = [np.asarray(a)[0] if np.ndim(a) == 4 else np.asarray(a) for a in arrays]
    if any(a.ndim != 3 for a in arrays):
        raise InputError(f"fusion takes [C, h, w] maps, got shapes {[a.shape for a in arrays]}")
    finer = finer_index([a.shape[1:] for a in arrays])
    grid = arrays[finer].shape[1:]
    parts = []
    for array, weight in zip(arrays, weights):
        resized = resize_bilinear(array, grid)
        norms = np.maximum(np.sqrt(np.einsum("chw,chw->hw", resized, resized)), _NORM_EPS)
        parts.append(resized * (weight / norms)[None])
    return np.concatenate(parts).astype(np.float32), finer


def fuse_maps(maps: Sequence[FeatureMap], weights: Sequence[float]) -> FeatureMap:
    """One image's fused FeatureMap from its per-model maps (same image_size), with the finer map's geometry."""
    if len({tuple(m.image_size) for m in maps}) != 1:
        raise InputError(f"fused maps must describe one image; image sizes differ: {[m.image_size for m in maps]}")
    array, finer = fuse_arrays([m.array for m in maps], check_weights(weights, len(maps)))
    base = maps[finer]
    return FeatureMap(array, base.image_size, base.input_size, base.stride, base.name)


@dataclass(frozen=True)
class FusedParts:
    """One image's per-model maps and the weights: what batch extraction stores (storage.py), so the
    weights can change later without running the models again. `fused()` is the fused map."""

    maps: tuple[FeatureMap, ...]
    weights: tuple[float, ...]

    def fused(self, weights: Sequence[float] | None = None) -> FeatureMap:
        return fuse_maps(self.maps, self.weights if weights is None else weights)

    @property
    def name(self) -> str | None:
        return self.maps[0].name


def check_fusable(members: Sequence[Extractor]) -> None:
    """Two exports whose images can share one decode, of the same kind (images or clips)."""
    names = [f"{m.manifest.model_name} ({m.export_dir})" for m in members]
    if len(members) != MODELS:
        raise InputError(f"fusion takes exactly {MODELS} exports, got {len(members)}: {', '.join(names)}")
    kinds = ["video" if m.is_video else "image" for m in members]
    if kinds[0] != kinds[1]:
        raise InputError(f"cannot fuse a {kinds[0]} export ({names[0]}) with a {kinds[1]} export ({names[1]}): "
                         "fuse two image exports (extract, match) or two video exports (extract_video, track)")
    exif = [m.exif_transpose for m in members]
    if exif[0] != exif[1]:
        raise InputError(
            f"{names[0]} {'applies' if exif[0] else 'does not apply'} EXIF orientation and {names[1]} "
            f"{'does' if exif[1] else 'does not'}: the two maps would describe differently rotated images. "
            "Choose one for both: load(..., exif_transpose=True/False) (ditf: --no-exif, or the default)"
        )
    colors = [m.manifest.preprocess.color for m in members]
    if colors[0] != colors[1]:
        raise InputError(f"{names[0]} reads {colors[0]} images, {names[1]} {colors[1]}: one decode cannot serve both")


class FusedExtractor:
    """Two loaded exports behind the Extractor API: `extract`, `extract_video` and `run` return fused maps.

    Each member keeps its own input size, preprocessing and noise; images are decoded once. With
    `parallel` (default) the two graphs run on two threads (onnxruntime and TensorRT release the GIL), so
    they overlap where the hardware has room; bench/bench_fusion.py measures both ways.
    """

    def __init__(self, members: Sequence[Extractor], weights: Sequence[float] | None = None, *,
                 parallel: bool = True) -> None:
        members = tuple(members)
        check_fusable(members)
        self.members = members
        self.weights = check_weights(weights)
        self.parallel = bool(parallel)
        self._pool = ThreadPoolExecutor(MODELS, thread_name_prefix="ditf-fuse") if parallel else None

    # -- what the Extractor API offers -------------------------------------------------------------
    @property
    def backend(self) -> str:
        return " + ".join(m.backend for m in self.members)

    @property
    def manifests(self):
        return tuple(m.manifest for m in self.members)

    @property
    def feature_channels(self) -> int:
        return sum(m.geometry.feature_channels for m in self.members)

    @property
    def exif_transpose(self) -> bool:
        return self.members[0].exif_transpose

    @property
    def max_pixels(self):
        return self.members[0].max_pixels

    @property
    def batch_size(self) -> int:
        return min(m.batch_size for m in self.members)

    @property
    def device(self) -> str:
        """"cuda" when either graph runs on the GPU (the memory budget that binds), else "cpu"."""
        return "cuda" if any(m.device == "cuda" for m in self.members) else "cpu"

    @property
    def max_memory(self) -> int | None:
        return self.members[0].max_memory

    @property
    def has_noise(self) -> bool:
        return any(m.has_noise for m in self.members)

    @property
    def is_video(self) -> bool:
        return self.members[0].is_video

    @property
    def frame_range(self) -> tuple[int, int | None] | None:
        """The frames both members take (video exports)."""
        if not self.is_video:
            return None
        lows, highs = zip(*(m.frame_range for m in self.members))
        known = [h for h in highs if h is not None]
        return max(lows), (min(known) if known else None)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for member in self.members:
            member.close()

    def __enter__(self) -> "FusedExtractor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        models = ", ".join(repr(m.manifest.model_name) for m in self.members)
        return f"FusedExtractor([{models}], weights={self.weights}, backend={self.backend!r})"

    # -- extraction ----------------------------------------------------------------------------------
    def extract(self, images: ImageSource | Sequence[ImageSource], size=None, ensemble: int | None = None,
                seed: int | None = None, noise=None, *, exif_transpose: bool | None = None) -> list[FeatureMap]:
        """Fused maps of one image or a list (paths, PIL images, uint8 HxWx3 arrays).

        `size`: None (each manifest's long side), one long side for both (each model rounds it to its own
        size multiple) or one per model; `ensemble` applies to the members with noise; `seed` to every
        member's default noise; `noise`: one entry per model (None for a model without noise), each as
        Extractor.extract takes it.
        """
        return [parts.fused() for parts in self.extract_parts(images, size, ensemble, seed, noise,
                                                              exif_transpose=exif_transpose)]

    def extract_parts(self, images, size=None, ensemble: int | None = None, seed: int | None = None, noise=None,
                      *, exif_transpose: bool | None = None) -> list[FusedParts]:
        """Per image, both members' own maps and the weights (FusedParts): `extract` before the fusion."""
        decoded = self.decode(as_image_list(images), exif_transpose)
        if not decoded:
            return []
        sizes, noises, ensembles = self._per_member(size, noise, ensemble)
        self._check_memory([image for image, _ in decoded], sizes, ensemble, min(self.batch_size, len(decoded)))

        def member_maps(k: int, member: Extractor) -> list[FeatureMap]:
            prepared = [replace(member.prepare(image, sizes[k], exif_transpose=False), name=name)
                        for image, name in decoded]
            return member.extract_prepared(prepared, ensembles[k], None if noises[k] is not None else seed, noises[k])

        per_member = self._each(member_maps)
        return [FusedParts(tuple(maps), self.weights) for maps in zip(*per_member)]

    def extract_video(self, frames, size=None, ensemble: int | None = None, seed: int | None = None, noise=None,
                      *, exif_transpose: bool | None = None) -> list[FeatureMap]:
        """Fused per-frame maps of one clip (two video exports): frames decoded once, each member runs the
        clip its own way (Extractor.extract_video), the maps are fused frame by frame."""
        sources = frame_files(frames) if isinstance(frames, (str, os.PathLike)) else as_image_list(frames)
        decoded = self.decode(sources, exif_transpose)
        images, names = [image for image, _ in decoded], [name for _, name in decoded]
        sizes, noises, ensembles = self._per_member(size, noise, ensemble)
        self._check_memory(images[:1], sizes, ensemble, 1, frames=len(images))

        def member_maps(k: int, member: Extractor) -> list[FeatureMap]:
            return member.extract_video(images, sizes[k], ensembles[k], None if noises[k] is not None else seed,
                                        noises[k], exif_transpose=False)

        per_member = self._each(member_maps)
        return [replace_name(fuse_maps(maps, self.weights), name) for maps, name in zip(zip(*per_member), names)]

    def run(self, images: Sequence[np.ndarray], noise: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """Fused features [B, C_a + C_b, H, W] of one batch: each member's preprocessed input and noise
        (None for a member without noise), as Extractor.run takes them."""
        if len(images) != MODELS:
            raise InputError(f"run() takes one image batch per model ({MODELS}), got {len(images)}")
        noise = [None] * MODELS if noise is None else list(noise)
        self._check_run_memory(images, noise)
        outputs = self._each(lambda k, member: member.run(images[k], noise[k]))
        batch = {o.shape[0] for o in outputs}
        if len(batch) != 1:
            raise InputError(f"the members' batches differ in size: {[o.shape[0] for o in outputs]}")
        return np.stack([fuse_arrays([o[i] for o in outputs], self.weights)[0] for i in range(outputs[0].shape[0])])

    # -- helpers -------------------------------------------------------------------------------------
    def decode(self, sources: Sequence[ImageSource], exif_transpose: bool | None = None) -> list[tuple[Any, str]]:
        """Each source read once: (RGB PIL image, name), with the members' shared EXIF choice."""
        from .preprocess import describe

        exif = self.exif_transpose if exif_transpose is None else exif_transpose
        return [(open_image(s, exif_transpose=exif, max_pixels=self.max_pixels), describe(s)) for s in sources]

    def _per_member(self, size, noise, ensemble) -> tuple[list, list, list]:
        if size is None or isinstance(size, (int, np.integer)):
            sizes = [size] * MODELS  # one long side for both, each rounded to its own size multiple
        else:
            sizes = list(size)
            if len(sizes) != MODELS:
                raise InputError(f"give one size per model ({MODELS}), got {len(sizes)}")
        noises = [None] * MODELS if noise is None else list(noise)
        if len(noises) != MODELS:
            raise InputError(f"noise: give one entry per model ({MODELS}; None for a model without noise)")
        if ensemble is not None and not self.has_noise:
            raise InputError("ensemble: neither fused model takes noise")
        ensembles = [ensemble if m.has_noise else None for m in self.members]
        return sizes, noises, ensembles

    def _check_memory(self, images: Sequence[Any], sizes: list, ensemble: int | None, batch: int,
                      frames: int = 1) -> None:
        """Both graphs run at once: their calls for the largest image must fit the budget together (each
        member then checks its own call as well), before anything is resized or run."""
        fused_attention = memory.fused_attention_of(self)  # each member's own graph
        candidates = [memory.runs_at(self.manifests, sizes, image_size=hw, batch=batch, ensemble=ensemble,
                                     frames=frames, fused_attention=fused_attention)
                      for hw in {(image.height, image.width) for image in images}]
        worst = max(candidates, key=lambda runs: sum(memory.estimate(m, shape).total for m, shape in runs))
        memory.check_runs(worst, max_memory=self.max_memory, device=self.device, engines=memory.engines_of(self))

    def _check_run_memory(self, images: Sequence[Any], noise: Sequence[Any]) -> None:
        """`run`'s arrays give each call's shape: check both together (malformed arrays: the members say so)."""
        try:
            runs = []
            for member, image, member_noise in zip(self.members, images, noise):
                frames = image.shape[1] if member.is_video else 1
                ensemble = member_noise.shape[1] if member_noise is not None else 1
                shape = memory.RunShape(image.shape[0], ensemble, image.shape[-2], image.shape[-1], frames)
                runs.append((member.manifest, shape.for_graph(member.graph)))
        except (AttributeError, IndexError, TypeError):
            return
        memory.check_runs(runs, max_memory=self.max_memory, device=self.device, engines=memory.engines_of(self))

    def _each(self, work: Callable[[int, Extractor], Any]) -> list:
        """`work(k, member)` for both members: on two threads when parallel, in order otherwise."""
        if self._pool is None:
            return [work(k, m) for k, m in enumerate(self.members)]
        futures = [self._pool.submit(work, k, m) for k, m in enumerate(self.members)]
        return [f.result() for f in futures]


def replace_name(fm: FeatureMap, name: str | None) -> FeatureMap:
    return FeatureMap(fm.array, fm.image_size, fm.input_size, fm.stride, name)

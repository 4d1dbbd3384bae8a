"""Extractor: images (or, for video exports, clips of frames) in, FeatureMaps out.

It owns a started runner (backends/) and the manifest; `loading.load()` chooses and starts both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Sequence

import numpy as np

from . import memory
from .backends.base import BaseRunner
from .errors import BackendError, InputError
from .features import FeatureMap
from .manifest import (FEATURES_OUTPUT, IMAGE_INPUT, NOISE_INPUT, REFERENCE_FILE, Manifest, ManifestError,
                       frame_of_latent, latent_frames)
from .noise import DEFAULT_SEED, check_clip_noise, check_image_noise, default_clip_noise, default_noise
from .parity import ParityResult, Tolerance, compare
from .preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    PreparedImage,
    as_image_list,
    check_size_limit,
    frame_files,
    prepare,
)


class Extractor:
    """A loaded export: `extract` for images, `extract_video` for video exports, `run` for preprocessed arrays."""

    def __init__(
        self,
        export_dir: str | os.PathLike,
        manifest: Manifest,
        runner: BaseRunner,
        *,
        exif_transpose: bool | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 1,
        max_memory: int | None = None,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.runner = runner
        self.exif_transpose = manifest.preprocess.exif_transpose if exif_transpose is None else exif_transpose
        self.max_pixels = max_pixels
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.max_memory = max_memory  # bytes per run; None: what is available when the run starts
        self.runner.activate()

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def graph(self):
        """onnxruntime: which graph file runs and why (a cpu_variant.GraphChoice); None for TensorRT."""
        return getattr(self.runner, "graph", None)

    @property
    def device(self) -> str:
        """Where the graph runs: "cuda" for TensorRT or an onnxruntime CUDA/TensorRT provider, else "cpu"."""
        providers = getattr(self.runner, "providers", [])
        on_gpu = self.backend == "tensorrt" or any(p != "CPUExecutionProvider" for p in providers)
        return "cuda" if on_gpu else "cpu"

    @property
    def geometry(self):
        return self.manifest.geometry

    @property
    def has_noise(self) -> bool:
        """The graph takes ensemble noise (diffusion models); DINOv2 graphs take the image only."""
        return any(spec.name == NOISE_INPUT for spec in self.manifest.inputs)

    @property
    def is_video(self) -> bool:
        """A video export (manifest geometry.frame_axis set): clips in through `extract_video`."""
        return self.geometry.frame_axis is not None

    @property
    def frame_range(self) -> tuple[int, int | None] | None:
        """(min, max) frames per clip, from the manifest's tensorrt_profiles (max None if absent); None for images."""
        if not self.is_video:
            return None
        axis, profiles = self.geometry.frame_axis, self.manifest.tensorrt_profiles or {}

        def frames(key: str, default):
            try:
                return int(profiles[key][IMAGE_INPUT][axis])
            except (KeyError, IndexError, TypeError, ValueError):
                return default

        if self.geometry.frame_stride > 1:  # any length: extract_video pads the clip to 1 + s*k frames
            return 1, frames("max", None)
        return frames("min", 2), frames("max", None)

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self) -> "Extractor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Extractor({str(self.export_dir)!r}, backend={self.backend!r}, model={self.manifest.model_name!r})"

    # -- low level -----------------------------------------------------------------------------
    def run(self, image: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Features [B, C, H/fs, W/fs] for preprocessed image [B, 3, H, W] and noise [B, E, c, H/vs, W/vs]
        (graphs without noise, DINOv2: the image alone, noise None).

        Video exports: image [B, F, 3, H, W], noise [B, E, F, c, H/vs, W/vs] -> [B, F, C, H/fs, W/fs].
        """
        geometry = self.geometry
        video = self.is_video
        checks = [(IMAGE_INPUT, image, 4 + video, "[B, F, 3, H, W] (video)" if video else "[B, 3, H, W]")]
        if self.has_noise:
            checks.append(
                (NOISE_INPUT, noise, 5 + video, "[B, E, F, c, H/8, W/8] (video)" if video else "[B, E, c, H/8, W/8]")
            )
        elif noise is not None:
            raise InputError(f"{self.manifest.model_name} takes no noise (its graph has only an image input)")
        for name, array, rank, layout in checks:
            if not isinstance(array, np.ndarray):
                raise InputError(f"{name} must be a numpy array, got {type(array).__name__}")
            if array.dtype != np.float32:
                raise InputError(f"{name} must be float32, got {array.dtype}")
            if array.ndim != rank:
                raise InputError(f"{name} must have {rank} axes {layout}, got shape {array.shape}")
        batch, channels, height, width = image.shape[0], image.shape[-3], image.shape[-2], image.shape[-1]
        frames = image.shape[1:2] if video else ()  # () or (F,)
        if channels != 3:
            raise InputError(f"image must be [B, {'F, ' if video else ''}3, H, W] RGB, got {image.shape}")
        if video:
            self._check_frames(frames[0])
        multiple = geometry.size_multiple
        if batch < 1 or height < multiple or width < multiple or height % multiple or width % multiple:
            raise InputError(
                f"image height and width must be positive multiples of {multiple}, got {height}x{width} "
                f"(use extract() to resize, or preprocess.model_size())"
            )
        check_size_limit(geometry, height, width, what="image")
        feed = {IMAGE_INPUT: image}
        latent = tuple(latent_frames(geometry, f) for f in frames)  # causal 3-D VAEs: 1 + (F - 1) / s
        if self.has_noise:
            vs = geometry.vae_stride
            expected_noise = (batch, *latent, geometry.latent_channels, height // vs, width // vs)
            got_noise = (noise.shape[0],) + tuple(noise.shape[2:])
            if got_noise != expected_noise or noise.shape[1] < 1:
                wanted = ", ".join(map(str, expected_noise[1:]))
                raise InputError(
                    f"noise has shape {noise.shape}; expected [B={batch}, E>=1, {wanted}] for image {image.shape} "
                    f"(latent_channels={geometry.latent_channels}, vae_stride={geometry.vae_stride})"
                )
            feed[NOISE_INPUT] = noise
        ensemble = noise.shape[1] if self.has_noise else 1
        self._check_memory(memory.RunShape(batch, ensemble, height, width, frames[0] if video else 1))
        outputs = self.runner.infer(feed)
        features = outputs.get(FEATURES_OUTPUT)
        stride = geometry.feature_stride
        expected = (batch, *latent, geometry.feature_channels, height // stride, width // stride)
        if features is None or tuple(features.shape) != expected:
            got = None if features is None else features.shape
            raise BackendError(f"graph returned features {got}, the manifest promises {expected}: re-export the model")
        return np.asarray(features, dtype=np.float32)

    # -- images --------------------------------------------------------------------------------
    def prepare(
        self,
        source: ImageSource,
        size: int | None = None,
        exif_transpose: bool | None = None,
        *,
        input_size: tuple[int, int] | None = None,
        run: tuple[int, int, int] | None = None,
    ) -> PreparedImage:
        """Read and preprocess one image (what `extract` feeds the graph); `input_size` forces the model (H, W).

        `run` (batch, E, frames): the run this image is for, checked against the memory budget at the
        model size before the image is resized.
        """
        check = None
        if run is not None:
            batch, ensemble, frames = run
            check = lambda hw: self._check_memory(memory.RunShape(batch, ensemble, hw[0], hw[1], frames))  # noqa: E731
        return prepare(
            source,
            self.manifest.preprocess,
            self.geometry,
            long_side=size,
            exif_transpose=self.exif_transpose if exif_transpose is None else exif_transpose,
            max_pixels=self.max_pixels,
            input_size=input_size,
            check_size=check,
        )

    def _check_memory(self, shape: memory.RunShape) -> None:
        # A TensorRT engine reports its own memory (memory_need); onnxruntime graphs are estimated.
        memory.check(self.manifest, shape.for_graph(self.graph), max_memory=self.max_memory, device=self.device,
                     engine=getattr(self.runner, "memory_need", None))

    def extract(
        self,
        images: ImageSource | Sequence[ImageSource],
        size: int | None = None,
        ensemble: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | Sequence[np.ndarray] | None = None,
        *,
        exif_transpose: bool | None = None,
    ) -> list[FeatureMap]:
        """Features of one image or a list of images (paths, PIL images, uint8 HxWx3 arrays).

        `size` overrides the manifest's long side, `ensemble` its E. Default noise is drawn per
        image from default_rng([seed, crc32(pixels)]) (seed 0 unless given); `noise=` is
        [B, E, c, H/8, W/8] for same-size images or a list of per-image [E, c, H/8, W/8].
        Images are run in groups of the same model size, `batch_size` at a time.
        """
        if self.is_video:
            raise InputError(
                f"{self.manifest.model_name} is a video export ({self.manifest.family}: clips of "
                f"{self._frames_text()} frames): use extract_video(frames)"
            )
        sources = as_image_list(images)
        if not sources:
            return []
        run = (min(self.batch_size, len(sources)), self._ensemble_of(ensemble, noise), 1)
        prepared = [self.prepare(s, size, exif_transpose, run=run) for s in sources]
        return self.extract_prepared(prepared, ensemble, seed, noise)

    def extract_prepared(
        self,
        prepared: Sequence[PreparedImage],
        ensemble: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | Sequence[np.ndarray] | None = None,
    ) -> list[FeatureMap]:
        """`extract` for images already read and preprocessed (`prepare`): draws the noise, runs, wraps."""
        noises = self._noise_for(prepared, ensemble, seed, noise)
        results: list[FeatureMap | None] = [None] * len(prepared)
        for indices in self._batches(prepared, noises):
            image = np.stack([prepared[i].pixels for i in indices])
            batch_noise = np.stack([noises[i] for i in indices]) if self.has_noise else None
            features = self.run(image, batch_noise)
            for row, i in enumerate(indices):
                results[i] = FeatureMap(
                    features[row : row + 1],
                    prepared[i].image_size,
                    prepared[i].input_size,
                    self.geometry.feature_stride,
                    prepared[i].name,
                )
        return results  # type: ignore[return-value]

    # -- video ---------------------------------------------------------------------------------
    def extract_video(
        self,
        frames: str | os.PathLike | Sequence[ImageSource],
        size: int | None = None,
        ensemble: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        *,
        exif_transpose: bool | None = None,
    ) -> list[FeatureMap]:
        """Per-frame features of one clip (video exports only): a list of F FeatureMaps.

        `frames` is a list of paths / PIL images / uint8 HxWx3 arrays, or a folder whose image files
        (sorted by name) are the frames. Every frame is resized to the model size of the first one
        (`size` overrides the manifest's long side); each map's `image_size` is its own frame's, so
        `transfer_keypoints` / `matching.track_points` work on them as on images. F must lie in the
        export's `frame_range`. Default noise is one [E, F, c, H/8, W/8] draw per clip from
        default_rng([seed, crc32(all preprocessed frames)]) (seed 0 unless given); `noise=` gives
        that array instead.
        """
        if not self.is_video:
            raise InputError(
                f"{self.manifest.model_name} is an image export ({self.manifest.family}): use extract(images); "
                "extract_video needs a video export (manifest geometry.frame_axis)"
            )
        sources = frame_files(frames) if isinstance(frames, (str, os.PathLike)) else as_image_list(frames)
        self._check_frames(len(sources))
        run = (1, self._ensemble_of(ensemble, noise, video=True), len(sources))
        first = self.prepare(sources[0], size, exif_transpose, run=run)
        prepared = [first] + [self.prepare(s, size, exif_transpose, input_size=first.input_size) for s in sources[1:]]
        pixels = np.stack([p.pixels for p in prepared])  # [F, 3, H, W]
        stride = self.geometry.frame_stride
        if stride > 1 and (len(prepared) - 1) % stride:
            # a causal 3-D VAE takes 1 + s*k frames: repeat the last frame up to the next such length (the extra
            # frames only fill the last latent frame's group; their maps are not returned)
            extra = stride - (len(prepared) - 1) % stride
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], extra, axis=0)])
        if noise is None:
            ensemble = self.manifest.feature.ensemble if ensemble is None else int(ensemble)
            if ensemble < 1:
                raise InputError(f"ensemble must be >= 1, got {ensemble}")
            noise = default_clip_noise(pixels, self.geometry, ensemble, DEFAULT_SEED if seed is None else int(seed))
        else:
            if seed is not None:
                raise InputError("pass either noise= or seed=, not both (seed only draws default noise)")
            noise = check_clip_noise(noise, self.geometry, len(pixels), first.input_size)
            if ensemble is not None and noise.shape[0] != ensemble:
                raise InputError(f"ensemble={ensemble} disagrees with the E of the given noise ({noise.shape[0]})")
        features = self.run(pixels[None], noise[None])[0]  # [F', C, h, w]: F' = F, or the latent frames
        return [
            FeatureMap(features[frame_of_latent(self.geometry, f) : frame_of_latent(self.geometry, f) + 1],
                       p.image_size, p.input_size, self.geometry.feature_stride, p.name)
            for f, p in enumerate(prepared)
        ]

    def _frames_text(self) -> str:
        low, high = self.frame_range
        return f"{low}..{high}" if high is not None else f">= {low}"

    def _check_frames(self, count: int) -> None:
        low, high = self.frame_range
        if count < low or (high is not None and count > high):
            raise InputError(
                f"got {count} frame(s); {self.manifest.model_name} takes clips of {self._frames_text()} frames "
                "(manifest tensorrt_profiles min/max); pass a clip in that range, splitting longer videos"
            )

    def _ensemble_of(self, ensemble: int | None, noise, video: bool = False) -> int:
        """The E a call will run with, for the memory check before preprocessing (noise is validated later)."""
        if not self.has_noise:  # one pass per image (noise or an ensemble given are refused later)
            return 1
        if ensemble is not None:
            return max(1, int(ensemble))
        try:
            if noise is None:
                return self.manifest.feature.ensemble
            if isinstance(noise, np.ndarray):  # images: [B, E, c, h, w]; a clip: [E, F, c, h, w]
                return int(noise.shape[0] if video else noise.shape[1])
            return int(np.shape(noise[0])[0])  # per-image [E, c, h, w]
        except (IndexError, TypeError):
            return self.manifest.feature.ensemble

    def _noise_for(self, prepared, ensemble, seed, noise) -> list[np.ndarray | None]:
        if not self.has_noise:  # the seed has nothing to draw; noise and E are refused, not ignored
            if noise is not None or ensemble is not None:
                raise InputError(
                    f"{self.manifest.model_name} ({self.manifest.family}) takes no noise: drop "
                    f"{'noise=' if noise is not None else 'ensemble='}"
                )
            return [None] * len(prepared)
        if noise is None:
            ensemble = self.manifest.feature.ensemble if ensemble is None else int(ensemble)
            if ensemble < 1:
                raise InputError(f"ensemble must be >= 1, got {ensemble}")
            seed = DEFAULT_SEED if seed is None else int(seed)
            return [default_noise(p.pixels, self.geometry, ensemble, seed) for p in prepared]
        if seed is not None:
            raise InputError("pass either noise= or seed=, not both (seed only draws default noise)")
        if isinstance(noise, np.ndarray):
            sizes = {p.input_size for p in prepared}
            if len(sizes) > 1:
                raise InputError(
                    f"one noise array [B, E, c, h, w] needs same-size images, these preprocess to {sorted(sizes)}; "
                    "pass a list of per-image [E, c, h, w] noise instead"
                )
            if noise.ndim != 5 or noise.shape[0] != len(prepared):
                raise InputError(
                    f"noise has shape {noise.shape}; expected [B={len(prepared)}, E, c, h, w] "
                    f"for {len(prepared)} image(s)"
                )
            per_image = list(noise)
        else:
            per_image = list(noise)
            if len(per_image) != len(prepared):
                raise InputError(f"got {len(per_image)} noise arrays for {len(prepared)} image(s)")
        checked = [check_image_noise(n, self.geometry, p.input_size, p.name) for n, p in zip(per_image, prepared)]
        if ensemble is not None and any(n.shape[0] != ensemble for n in checked):
            raise InputError(
                f"ensemble={ensemble} disagrees with the E of the given noise {[n.shape[0] for n in checked]}"
            )
        return checked

    def _batches(self, prepared, noises) -> Iterable[list[int]]:
        """Indices grouped by (input size, E), in first-seen order, at most batch_size each."""
        groups: dict[tuple, list[int]] = {}
        for i, (p, n) in enumerate(zip(prepared, noises)):
            groups.setdefault((p.input_size, 0 if n is None else n.shape[0]), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                yield indices[start : start + self.batch_size]

    # -- parity --------------------------------------------------------------------------------
    def verify_reference(self, tolerance: Tolerance | str | None = None) -> ParityResult:
        """Run the export's reference.safetensors inputs and compare with its PyTorch features.

        Judged by ditf_runtime.parity (the exporter's own numbers), at the manifest's precision
        unless `tolerance` says otherwise. Truthy on pass.
        """
        from safetensors.numpy import load_file

        path = self.export_dir / REFERENCE_FILE
        if not path.is_file():
            raise ManifestError(f"{path} not found: this export carries no reference outputs")
        self.manifest.verify_files(self.export_dir, names=(REFERENCE_FILE,))  # recorded, and unchanged
        reference = load_file(str(path))
        missing = ({spec.name for spec in self.manifest.inputs} | {FEATURES_OUTPUT}) - set(reference)
        if missing:
            raise ManifestError(f"{path} lacks tensors {sorted(missing)}")
        features = self.run(reference[IMAGE_INPUT], reference.get(NOISE_INPUT) if self.has_noise else None)
        expected = reference[FEATURES_OUTPUT]
        if self.is_video:  # [B, F, C, h, w] -> [B*F, C, h, w]: parity is judged per frame map
            features, expected = (a.reshape(-1, *a.shape[-3:]) for a in (features, expected))
        return compare(features, expected, tolerance or self.manifest.precision)

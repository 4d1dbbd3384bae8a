"""Ensemble noise (docs/DESIGN.md, "Preprocessing and noise"): drawn per image, so features never depend
on batch-mates.

Images: [E, c, H/8, W/8] from default_rng([seed, crc32(the image's preprocessed float32 pixels)]).
Video clips (exports with geometry.frame_axis): one draw per clip, [E, F, c, H/8, W/8] from
default_rng([seed, crc32(the clip's preprocessed float32 frames [F, 3, H, W], in frame order)]), so a
clip's noise depends on every frame and their order, and on nothing else.
"""

from __future__ import annotations

import zlib

import numpy as np

from .errors import InputError
from .manifest import Geometry, latent_frames

DEFAULT_SEED = 0


def noise_shape(geometry: Geometry, ensemble: int, input_size: tuple[int, int]) -> tuple[int, ...]:
    """[E, latent_channels, H / vae_stride, W / vae_stride] for one image."""
    height, width = input_size
    return (ensemble, geometry.latent_channels, height // geometry.vae_stride, width // geometry.vae_stride)


def default_noise(pixels: np.ndarray, geometry: Geometry, ensemble: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Standard normal float32 from default_rng([seed, crc32(preprocessed float32 pixel bytes)]).

    Keyed by the image content, so the same image gets the same noise whatever else is in
    its batch, whichever process or server runs it.
    """
    if pixels.dtype != np.float32 or pixels.ndim != 3:
        raise InputError(f"default noise is keyed by float32 [3, H, W] pixels, got {pixels.dtype} {pixels.shape}")
    content = zlib.crc32(np.ascontiguousarray(pixels).tobytes())
    rng = np.random.default_rng([int(seed), content])
    shape = noise_shape(geometry, ensemble, (pixels.shape[1], pixels.shape[2]))
    return rng.standard_normal(shape, dtype=np.float32)


def check_image_noise(noise: np.ndarray, geometry: Geometry, input_size: tuple[int, int], name: str) -> np.ndarray:
    """Validate one image's [E, c, H/8, W/8] noise; returns it as a float32 array."""
    noise = np.asarray(noise)
    if noise.dtype != np.float32:
        raise InputError(f"noise for {name} must be float32, got {noise.dtype}")
    expected = noise_shape(geometry, 1, input_size)[1:]
    if noise.ndim != 4 or tuple(noise.shape[1:]) != expected or noise.shape[0] < 1:
        raise InputError(
            f"noise for {name} has shape {tuple(noise.shape)}; expected [E, {expected[0]}, {expected[1]}, "
            f"{expected[2]}] (E >= 1, latent_channels, H/{geometry.vae_stride}, W/{geometry.vae_stride} "
            f"for its {input_size[0]}x{input_size[1]} model input)"
        )
    return noise


def clip_noise_shape(geometry: Geometry, ensemble: int, frames: int, input_size: tuple[int, int]) -> tuple[int, ...]:
    """[E, F', latent_channels, H / vae_stride, W / vae_stride] for one video clip of F frames: F' = F, or for a
    causal 3-D VAE (geometry.frame_stride s > 1) the 1 + (F - 1) / s latent frames."""
    shape = noise_shape(geometry, ensemble, input_size)
    return (shape[0], latent_frames(geometry, int(frames)), *shape[1:])


def default_clip_noise(pixels: np.ndarray, geometry: Geometry, ensemble: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Standard normal float32 [E, F, c, H/8, W/8] from default_rng([seed, crc32(float32 [F, 3, H, W] bytes)])."""
    if pixels.dtype != np.float32 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise InputError(f"clip noise is keyed by float32 [F, 3, H, W] frames, got {pixels.dtype} {pixels.shape}")
    content = zlib.crc32(np.ascontiguousarray(pixels).tobytes())
    rng = np.random.default_rng([int(seed), content])
    shape = clip_noise_shape(geometry, ensemble, pixels.shape[0], (pixels.shape[2], pixels.shape[3]))
    return rng.standard_normal(shape, dtype=np.float32)


def check_clip_noise(noise: np.ndarray, geometry: Geometry, frames: int, input_size: tuple[int, int]) -> np.ndarray:
    """Validate one clip's [E, F, c, H/8, W/8] noise; returns it as a float32 array."""
    noise = np.asarray(noise)
    if noise.dtype != np.float32:
        raise InputError(f"clip noise must be float32, got {noise.dtype}")
    expected = clip_noise_shape(geometry, 1, frames, input_size)[1:]
    if noise.ndim != 5 or tuple(noise.shape[1:]) != expected or noise.shape[0] < 1:
        raise InputError(
            f"clip noise has shape {tuple(noise.shape)}; expected [E, F={frames}, {expected[1]}, {expected[2]}, "
            f"{expected[3]}] (E >= 1, frames, latent_channels, H/{geometry.vae_stride}, W/{geometry.vae_stride} "
            f"for the {input_size[0]}x{input_size[1]} model input)"
        )
    return noise

"""The served models' inputs and outputs, declared once for the PyTriton server, the Triton
python-backend model written by `ditf triton-repo`, and the client.

Shapes are per request row (Triton prepends the batch axis; -1 marks a dynamic axis):

extract   in   image      uint8   [H, W, 3]          an RGB image, preprocessed on the server
               pixels     float32 [3, H, W]          or an already preprocessed model input
               noise      float32 [E, c, H/8, W/8]   optional: explicit ensemble noise (graphs with noise)
               seed       int64   [1]                optional: seed of the default noise (0)
               ensemble   int64   [1]                optional: E of the default noise
               size       int64   [1]                optional: long side (image input only)
          out  features   float32 [C, h, w]
               image_size int64   [2]                (height, width) the features describe
               input_size int64   [2]                (H, W) the model saw
               error      bytes   [1]                "" on success (see below)

match     in   source, target uint8 [H, W, 3]        one pair per request row
               points     int64   [N, 2]             optional: source pixels (x, y);
                                                     default: mutual nearest neighbours
               max_matches int64  [1]                optional (40), without points
               seed, ensemble, size                  as for extract
          out  source_points, target_points int64 [N, 2], scores float32 [N], error bytes [1]

A fused server (two exports) serves the fused map: uint8 images only, one seed and E for the model with
noise. A request the server refuses gets a Triton error with the reason. One exception: PyTriton can
only fail a whole dynamic batch, so when a malformed request shares a batch with good ones,
they get their results and it gets empty outputs with the reason in `error`. The client
(client.py) raises ServerError in both cases; raw Triton clients should check `error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..manifest import Geometry

Feed = Mapping[str, np.ndarray]  # one request: input name -> array, batch axis first

EXTRACT_MODEL = "extract"
MATCH_MODEL = "match"

DEFAULT_MAX_MATCHES = 40  # what `ditf match` keeps

# numpy dtype -> Triton's name in requests ("FP32") and in config.pbtxt ("TYPE_FP32")
_TRITON_NAMES = {
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.float32): "FP32",
    np.dtype(np.int64): "INT64",
    np.dtype(object): "BYTES",
}
ERROR_OUTPUT = "error"


@dataclass(frozen=True)
class Port:
    """One model input or output, without the batch axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    optional: bool = False

    @property
    def triton_dtype(self) -> str:
        return _TRITON_NAMES[np.dtype(self.dtype)]

    @property
    def config_dtype(self) -> str:
        return "TYPE_STRING" if self.triton_dtype == "BYTES" else "TYPE_" + self.triton_dtype


def triton_dtype(dtype) -> str:
    return _TRITON_NAMES[np.dtype(dtype)]


def _options() -> tuple[Port, ...]:
    return (
        Port("seed", np.dtype(np.int64), (1,), optional=True),
        Port("ensemble", np.dtype(np.int64), (1,), optional=True),
        Port("size", np.dtype(np.int64), (1,), optional=True),
    )


def served_geometry(manifests) -> Geometry:
    """What the served models' ports are declared from: the export's geometry, or for two fused exports
    their summed channels and no noise input (each fused model draws its own)."""
    if len(manifests) == 1:
        return manifests[0].geometry
    return Geometry(latent_channels=0, feature_channels=sum(m.geometry.feature_channels for m in manifests),
                    vae_stride=0, feature_stride=0, size_multiple=0)


def extract_ports(geometry: Geometry) -> tuple[tuple[Port, ...], tuple[Port, ...]]:
    """A graph without noise (latent_channels 0: DINOv2, or a fused pair) has no 'noise' input."""
    noise = (Port("noise", np.dtype(np.float32), (-1, geometry.latent_channels, -1, -1), optional=True),)
    inputs = (
        Port("image", np.dtype(np.uint8), (-1, -1, 3), optional=True),
        Port("pixels", np.dtype(np.float32), (3, -1, -1), optional=True),
        *(noise if geometry.latent_channels else ()),
        *_options(),
    )
    outputs = (
        Port("features", np.dtype(np.float32), (geometry.feature_channels, -1, -1)),
        Port("image_size", np.dtype(np.int64), (2,)),
        Port("input_size", np.dtype(np.int64), (2,)),
        Port(ERROR_OUTPUT, np.dtype(object), (1,)),
    )
    return inputs, outputs


def match_ports(geometry: Geometry) -> tuple[tuple[Port, ...], tuple[Port, ...]]:
    inputs = (
        Port("source", np.dtype(np.uint8), (-1, -1, 3)),
        Port("target", np.dtype(np.uint8), (-1, -1, 3)),
        Port("points", np.dtype(np.int64), (-1, 2), optional=True),
        Port("max_matches", np.dtype(np.int64), (1,), optional=True),
        *_options(),
    )
    outputs = (
        Port("source_points", np.dtype(np.int64), (-1, 2)),
        Port("target_points", np.dtype(np.int64), (-1, 2)),
        Port("scores", np.dtype(np.float32), (-1,)),
        Port(ERROR_OUTPUT, np.dtype(object), (1,)),
    )
    return inputs, outputs


def ports(task: str, geometry: Geometry) -> tuple[tuple[Port, ...], tuple[Port, ...]]:
    if task == EXTRACT_MODEL:
        return extract_ports(geometry)
    if task == MATCH_MODEL:
        return match_ports(geometry)
    raise ValueError(f"unknown task {task!r}: {EXTRACT_MODEL!r} or {MATCH_MODEL!r}")


# Reading a request: every field checked, named in the error (requests are untrusted).


def error_column(batch: int, message: str = "") -> np.ndarray:
    return np.full((batch, 1), message.encode(), dtype=object)


def batch_size(feed: Feed) -> int:
    sizes = {name: int(np.shape(array)[0]) for name, array in feed.items() if array is not None and np.ndim(array)}
    if len(set(sizes.values())) > 1:
        raise InputError(f"inputs disagree on the batch size: {sizes}")
    batch = next(iter(sizes.values()), 0)
    if batch < 1:
        raise InputError("empty batch: the request holds 0 rows")
    return batch


def read_array(feed: Feed, name: str, dtype, ndim: int) -> np.ndarray:
    array = feed[name]
    if not isinstance(array, np.ndarray) or array.dtype != np.dtype(dtype):
        got = getattr(array, "dtype", type(array).__name__)
        raise InputError(f"{name!r} must be {np.dtype(dtype).name}, got {got}")
    if array.ndim != ndim:
        raise InputError(f"{name!r} must have {ndim} axes (batch first), got shape {array.shape}")
    return array


def read_option(feed: Feed, name: str, batch: int) -> list[int | None]:
    """A per-row int64 [B, 1] option as a list of ints (None when absent)."""
    array = feed.get(name)
    if array is None:
        return [None] * batch
    array = read_array(feed, name, np.int64, 2)
    if array.shape != (batch, 1):
        raise InputError(f"{name!r} must be int64 [B={batch}, 1], got shape {array.shape}")
    return [int(v) for v in array[:, 0]]

"""Feature files: safetensors with the geometry in its metadata, or .npy plus a .json sidecar.

Writes are atomic (temp file + rename), so an existing output is always a complete one: batch
extraction resumes by skipping what exists.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .features import FeatureMap
from .manifest import write_bytes_atomic, write_text_atomic

FORMATS = ("safetensors", "npy")
TENSOR_NAME = "features"


def feature_metadata(fm: FeatureMap, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """String-valued metadata (safetensors allows only str -> str)."""
    metadata = {
        "image_size": json.dumps(list(fm.image_size)),
        "input_size": json.dumps(list(fm.input_size)),
        "stride": str(fm.stride),
    }
    if fm.name is not None:
        metadata["source"] = fm.name
    for key, value in (extra or {}).items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata


def output_suffix(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InputError(f"unknown feature format {fmt!r}: use one of {FORMATS}")
    return "." + fmt


def save_features(
    path: str | os.PathLike, fm: FeatureMap, *, fmt: str = "safetensors", extra: dict[str, Any] | None = None
) -> Path:
    path = Path(path)
    output_suffix(fmt)
    metadata = feature_metadata(fm, extra)
    if fmt == "safetensors":
        from safetensors.numpy import save

        return write_bytes_atomic(path, save({TENSOR_NAME: np.ascontiguousarray(fm.array)}, metadata=metadata))
    # npy: sidecar first, array last -- the .npy's presence marks a finished output.
    write_text_atomic(path.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")
    buffer = io.BytesIO()
    np.save(buffer, fm.array, allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue())


def load_features(path: str | os.PathLike) -> FeatureMap:
    """Read a file written by save_features (or `ditf extract`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such feature file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                array = handle.get_tensor(TENSOR_NAME)
        elif path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            sidecar = path.with_suffix(".json")
            metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        else:
            raise InputError(f"{path}: feature files are .safetensors or .npy")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors/numpy raise assorted types on bad files
        raise InputError(f"{path}: not a readable feature file ({exc})") from exc
    array = np.asarray(array, dtype=np.float32)
    grid = array.shape[-2:]
    stride = int(metadata.get("stride", 16))
    input_size = (
        tuple(json.loads(metadata["input_size"])) if "input_size" in metadata else (grid[0] * stride, grid[1] * stride)
    )
    image_size = tuple(json.loads(metadata["image_size"])) if "image_size" in metadata else input_size
    return FeatureMap(array, image_size, input_size, stride, metadata.get("source", path.name))

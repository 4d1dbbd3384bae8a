"""Feature files: safetensors with the geometry in its metadata, or .npy plus a .json sidecar.

Writes are atomic (temp file + rename), so an existing output is always a complete one: batch
extraction resumes by skipping what exists.

Fused extraction (two exports, fusion.py) stores both models' own maps and the weights, not the fused
map: tensors `features.0` and `features.1`, each part's geometry and the weights in the metadata
(safetensors only). The models are the expensive part and the fusion is cheap and exact, so the weights
can change later without running the models again (`load_features(path, weights=...)`), each part stays
usable on its own (`load_parts`), and the file is smaller than the fused map, which holds the coarser
model's map upsampled to the finer grid. `load_features` returns the fused map, so every reader of
feature files (matching, `ditf show`) takes fused files unchanged.
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
from .fusion import RECIPE, FusedParts, check_weights
from .manifest import write_bytes_atomic, write_text_atomic

FORMATS = ("safetensors", "npy")
TENSOR_NAME = "features"
FUSION_KEY = "fusion"  # metadata of fused files: {"weights", "recipe", "parts": [geometry, ...]}


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


def _part_name(index: int) -> str:
    return f"{TENSOR_NAME}.{index}"


def save_features(
    path: str | os.PathLike,
    fm: FeatureMap | FusedParts,
    *,
    fmt: str = "safetensors",
    extra: dict[str, Any] | None = None,
) -> Path:
    path = Path(path)
    output_suffix(fmt)
    if isinstance(fm, FusedParts):
        return _save_parts(path, fm, fmt, extra)
    metadata = feature_metadata(fm, extra)
    if fmt == "safetensors":
        return write_bytes_atomic(path, safetensors_bytes({TENSOR_NAME: fm.array}, metadata))
    # npy: sidecar first, array last -- the .npy's presence marks a finished output.
    write_text_atomic(path.with_suffix(".json"), json.dumps(metadata, indent=2) + "\n")
    buffer = io.BytesIO()
    np.save(buffer, fm.array, allow_pickle=False)
    return write_bytes_atomic(path, buffer.getvalue())


def _save_parts(path: Path, parts: FusedParts, fmt: str, extra: dict[str, Any] | None) -> Path:
    if fmt != "safetensors":
        raise InputError("fused features are stored as safetensors (both maps and their weights in one file); "
                         "use --format safetensors")
    geometry = [{"image_size": list(m.image_size), "input_size": list(m.input_size), "stride": m.stride,
                 "channels": m.channels} for m in parts.maps]
    metadata = feature_metadata(parts.maps[0], extra)
    for key in ("input_size", "stride"):  # per part, in "fusion"
        metadata.pop(key)
    metadata[FUSION_KEY] = json.dumps({"weights": list(parts.weights), "recipe": RECIPE, "parts": geometry})
    tensors = {_part_name(k): np.ascontiguousarray(m.array) for k, m in enumerate(parts.maps)}
    return write_bytes_atomic(path, safetensors_bytes(tensors, metadata))


_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """A safetensors file with its header in a fixed order (keys sorted, tensors by name): the same features
    give the same bytes on every run. safetensors' own writer orders the metadata as a hash map does, so two
    runs of the same extraction differed, and a resumed folder could not be checked against a fresh one byte
    for byte. The layout is the format's own: u64 header size, JSON header padded with spaces to 8 bytes, data."""
    import json as _json

    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset, blobs = 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = _json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def load_parts(path: str | os.PathLike) -> FusedParts:
    """The per-model maps and weights of a fused feature file (written by a fused `ditf extract`)."""
    path = Path(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if FUSION_KEY not in metadata:
                raise InputError(f"{path}: not a fused feature file (one model's features: use load_features)")
            fusion = json.loads(metadata[FUSION_KEY])
            arrays = [handle.get_tensor(_part_name(k)) for k in range(len(fusion["parts"]))]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises assorted types on bad files
        raise InputError(f"{path}: not a readable feature file ({exc})") from exc
    name = metadata.get("source", path.name)
    maps = tuple(FeatureMap(a, g["image_size"], g["input_size"], g["stride"], name)
                 for a, g in zip(arrays, fusion["parts"]))
    return FusedParts(maps, check_weights(fusion["weights"], len(maps)))


def load_features(path: str | os.PathLike, *, weights: Any = None) -> FeatureMap:
    """Read a file written by save_features (or `ditf extract`); a fused file gives its fused map, with its
    stored weights unless `weights` (one per model, summing to 1) says otherwise."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file() and _is_fused(path):
        return load_parts(path).fused(weights)
    if weights is not None:
        raise InputError(f"{path}: weights= re-fuses a fused feature file; this one holds one model's features")
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


def _is_fused(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return FUSION_KEY in (handle.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: load_features reports it
        return False


def feature_file_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata `save_features` wrote (model_name, layer, precision, ... for `ditf extract` files)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                return dict(handle.metadata() or {})
        sidecar = path.with_suffix(".json")
        return json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except Exception:  # noqa: BLE001 - load_features reports unreadable files; a caption can do without
        return {}

"""The export folder's contract: manifest.json, written once by ditf-export, read by everything else.

Torch-free on purpose: the exporter writes through this module and the runtime reads through it,
so the two cannot drift. Layout of an export folder (DESIGN.md §6):

    DIR/model.onnx            graph, float32 I/O at every precision
    DIR/model.onnx.data       external weights (always external, so hashes are cheap to compare)
    DIR/reference.safetensors PyTorch reference inputs/outputs (image, noise, features)
    DIR/manifest.json         this contract; never rewritten after export
    DIR/engines/<gpu>-trt<version>/model.plan + engine.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .precision import PRECISIONS

SCHEMA_VERSION = 1

MODEL_FILE = "model.onnx"
MODEL_DATA_FILE = "model.onnx.data"
REFERENCE_FILE = "reference.safetensors"
MANIFEST_FILE = "manifest.json"
ENGINES_DIR = "engines"

# Graph I/O names (DESIGN.md §6): image [B, 3, H, W], noise [B, E, c, H/8, W/8] -> features [B, C, H/16, W/16]
IMAGE_INPUT = "image"
NOISE_INPUT = "noise"
FEATURES_OUTPUT = "features"


class ManifestError(ValueError):
    """The export folder or its manifest is missing, malformed or does not match its files."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    # ints for static axes, strings for named dynamic axes ("batch", "height/8", ...)
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Geometry:
    """What the runtime needs to map pixels to latents and feature cells.

    Graphs without a noise input (DINOv2) have no latent: latent_channels and vae_stride are 0.
    """

    latent_channels: int
    feature_channels: int
    vae_stride: int = 8
    feature_stride: int = 16
    size_multiple: int = 16
    frame_axis: int | None = None  # video families: index of the frame axis in `image`
    # the largest image height or width (pixels) the graph was verified for (DINOv2: its position-embedding
    # tables); None: no limit recorded
    max_size: int | None = None


@dataclass(frozen=True)
class Preprocess:
    """The authors' preprocessing (DESIGN.md §2 step 1), rebuilt by the runtime with PIL + numpy."""

    long_side: int = 640
    resample: str = "bicubic"
    # each side -> round(side * long_side / max(h, w) / size_multiple) * size_multiple, Python round()
    rounding: str = "python-round"
    color: str = "RGB"
    value_range: tuple[float, float] = (-1.0, 1.0)
    exif_transpose: bool = True


@dataclass(frozen=True)
class Feature:
    """Which feature the graph computes and with which baked conditioning."""

    layer: int
    block: str  # e.g. "transformer_blocks.18" or "single_transformer_blocks.9"
    timestep: float | None  # in [0, 1000]; None for graphs without noise (DINOv2)
    discard: tuple[int, ...]
    discard_source: str  # "registry" | "user" | "auto" | "none"
    ensemble: int  # default E for the runtime
    prompt: str | None = None  # None when --prompt-embeds was given
    prompt_embeds_sha256: str | None = None
    guidance: float | None = None
    class_label: int | None = None
    latent: str = "mean"  # we encode the VAE mean; the authors sample (deliberate deviation); "none": no VAE
    noising: str = "flow-matching"  # or "variance-preserving"; "none" for graphs without noise
    massive_channel_ratios: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    family: str
    model_name: str
    model_source: str
    precision: str
    opset: int
    feature: Feature
    geometry: Geometry
    preprocess: Preprocess
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: dict[str, dict[str, Any]]  # name -> {"sha256": ..., "bytes": ...}
    source_weights: dict[str, str] = field(default_factory=dict)  # weight file -> sha256
    parity: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    tensorrt_profiles: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError("manifest.json must hold a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {version!r} is not supported by this runtime "
                f"(expects {SCHEMA_VERSION}); re-export with a matching ditf-export or upgrade ditf-runtime"
            )
        try:
            d = dict(data)
            d["feature"] = Feature(**_tuples(d["feature"], ("discard", "notes")))
            d["geometry"] = Geometry(**d["geometry"])
            d["preprocess"] = Preprocess(**_tuples(d["preprocess"], ("value_range",)))
            d["inputs"] = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["inputs"])
            d["outputs"] = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["outputs"])
            m = cls(**d)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest.json is malformed ({exc}); re-export the model") from exc
        if m.precision not in PRECISIONS:
            raise ManifestError(f"unknown precision {m.precision!r}; expected one of {PRECISIONS}")
        return m

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> "Manifest":
        path = Path(export_dir) / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(
                f"{path} not found: {export_dir} is not a finished ditf export "
                "(run `ditf-export --model ... --out DIR` first; an interrupted export leaves no manifest)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); re-export the model") from exc
        return cls.from_dict(data)

    def save(self, export_dir: str | os.PathLike) -> Path:
        return write_text_atomic(Path(export_dir) / MANIFEST_FILE, self.to_json())

    # -- checks --------------------------------------------------------------------------------
    def verify_files(self, export_dir: str | os.PathLike, names: tuple[str, ...] | None = None) -> None:
        """Refuse files whose size or sha256 differ from what the export recorded."""
        export_dir = Path(export_dir)
        for name, meta in self.files.items():
            if names is not None and name not in names:
                continue
            path = export_dir / name
            if not path.is_file():
                raise ManifestError(f"{path} is missing; the export folder is incomplete, re-export it")
            size = path.stat().st_size
            if "bytes" in meta and size != meta["bytes"]:
                raise ManifestError(
                    f"{path} has {size} bytes but the manifest records {meta['bytes']}: "
                    "the file was changed or truncated after export; re-export it"
                )
            digest = sha256_file(path)
            if digest != meta["sha256"]:
                raise ManifestError(
                    f"{path} sha256 {digest[:12]}… does not match the manifest ({meta['sha256'][:12]}…): "
                    "the file was changed after export; re-export it"
                )

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def _tuples(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    d = dict(d)
    for k in keys:
        if k in d and d[k] is not None:
            d[k] = tuple(d[k])
    return d


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj

"""The export folder's contract: manifest.json, written once by ditf-export, read by everything else.

Torch-free on purpose: the exporter writes through this module and the runtime reads through it,
so the two cannot drift. Layout of an export folder (docs/DESIGN.md, "The export folder"):

    DIR/model.onnx            graph, float32 I/O at every precision
    DIR/model.onnx.data       external weights (always external, so hashes are cheap to compare)
    DIR/reference.safetensors PyTorch reference inputs/outputs (image, noise, features)
    DIR/manifest.json         this contract; never rewritten after export
    DIR/engines/<gpu>-trt<version>/model.plan + engine.json
    DIR/.ditf-verified.json   which files were hashed and matched (verification.py; a cache, not the contract)

The manifest is sealed by `digest`, the sha256 of its own canonical JSON (every other field, sorted keys,
no whitespace): a manifest edited by hand no longer matches it and is refused on load, because it
describes the graph (layer, discard, preprocessing, limits) and a lie about the graph gives wrong
features silently. Run-time choices are options (--size, --ensemble), not edits; to change what the
graph bakes, re-export.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ManifestError and the file helpers are imported from here by the exporter and the runtime (re-exported)
from .errors import ManifestError
from .files import file_record, sha256_file, write_bytes_atomic, write_text_atomic  # noqa: F401
from .precision import PRECISIONS

SCHEMA_VERSION = 2  # 2: digest, defaults

MODEL_FILE = "model.onnx"
MODEL_DATA_FILE = "model.onnx.data"
REFERENCE_FILE = "reference.safetensors"
MANIFEST_FILE = "manifest.json"
ENGINES_DIR = "engines"

# Graph I/O names (docs/DESIGN.md): image [B, 3, H, W], noise [B, E, c, H/8, W/8] -> features [B, C, H/16, W/16]
IMAGE_INPUT = "image"
NOISE_INPUT = "noise"
FEATURES_OUTPUT = "features"

FEATURE_HEADS = ("adaln", "raw", "none")  # Feature.head


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
    # video families with a causal 3-D VAE (Wan, CogVideoX): frames per latent frame after the first, so a clip
    # of F = 1 + frame_stride * k frames has 1 + k latent frames (noise) and feature maps; 1: one latent per frame
    frame_stride: int = 1
    # the largest image height or width (pixels) the graph was verified for (DINOv2: its position-embedding
    # tables); None: no limit recorded
    max_size: int | None = None


def latent_frames(geometry: Geometry, frames: int) -> int:
    """Latent (and feature) frames of a clip of `frames` frames: 1 + (F - 1) / frame_stride for a causal 3-D VAE
    (F must be 1 + frame_stride * k), F itself otherwise."""
    s = int(geometry.frame_stride)
    if s == 1:
        return int(frames)
    if frames < 1 or (frames - 1) % s:
        raise ValueError(f"{frames} frames: this export's VAE takes clips of 1 + {s}k frames")
    return 1 + (int(frames) - 1) // s


def frame_of_latent(geometry: Geometry, frame: int) -> int:
    """The latent frame that holds clip frame `frame` (0-based): frame 0 alone, then groups of frame_stride."""
    s = int(geometry.frame_stride)
    return int(frame) if s == 1 else (int(frame) + s - 1) // s


@dataclass(frozen=True)
class Preprocess:
    """The authors' preprocessing (docs/DESIGN.md, "The feature" step 1), rebuilt by the runtime with PIL + numpy."""

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
    # "adaln": discard -> LayerNorm -> block K's AdaLN modulation (DiTF's feature); "raw": the ensemble mean of
    # h_K after discard only (the paper's ablation baseline); "none": a graph without an AdaLN head (DINOv2).
    # Manifests written before the field existed describe AdaLN graphs: the default keeps them loading as such.
    head: str = "adaln"


@dataclass(frozen=True)
class Workload:
    """What a run's peak memory depends on besides the input size (memory.py reads it); written at export.

    Older manifests lack it: memory.py then assumes conservative values and says the estimate is rough.
    """

    heads: int
    head_dim: int
    text_tokens: int = 0  # prompt tokens baked into the graph
    text_attention: str = "joint"  # "joint": attended together with the image tokens (FLUX, SD3); "cross"; "none"
    ffn_dim: int = 0  # width of the blocks' MLP
    vae_channels: tuple[int, ...] = ()  # the VAE encoder's block widths, full resolution first; () without a VAE
    vae_attention: bool = True  # the VAE encoder's mid-block self-attention over every latent cell
    attention: str = "dense"  # "dense": the graph materialises every [heads, N, N] score matrix
    extra_tokens: int = 0  # non-image tokens attended with the image tokens (DINOv2's class and register tokens)
    # video: True when every block attends over all tokens of the clip at once (Wan); False: per frame, plus
    # temporal blocks across frames at one position (Latte)
    spacetime_attention: bool = False


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
    # which registry model's defaults applied, and the rule that picked it ({"model": None} when none did)
    defaults: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # Built-in test models (flux-tiny, latte-tiny, dinov2-tiny) have random weights: their pictures say so.
    random_weights: bool = False
    # A built-in model trained by ditf (flux-mini): what its weights learned from, said in its pictures.
    trained_on: str | None = None
    workload: Workload | None = None  # what a run's memory depends on (memory.py); sealed like every field
    digest: str = ""  # sha256 of the canonical JSON of every other field; set by to_dict, checked by from_dict

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data, sealed: `digest` is computed from the other fields."""
        d = _plain(dataclasses.asdict(self))
        d["digest"] = content_digest(d)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def sealed(self) -> "Manifest":
        """This manifest with its digest filled in (what save() writes and load() returns)."""
        return dataclasses.replace(self, digest=self.to_dict()["digest"])

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
        if data.get("digest") != content_digest(data):
            raise ManifestError(
                "manifest.json was changed after export: its content no longer matches its digest. A hand-edited "
                "manifest is refused (it describes the graph: a wrong layer or size gives wrong features "
                "silently). Undo the edit; pass run-time choices as options (--size, --ensemble); to change what "
                "the graph bakes, re-export with ditf-export"
            )
        try:
            d = dict(data)
            d["feature"] = Feature(**_tuples(d["feature"], ("discard", "notes")))
            d["geometry"] = Geometry(**d["geometry"])
            d["preprocess"] = Preprocess(**_tuples(d["preprocess"], ("value_range",)))
            d["inputs"] = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["inputs"])
            d["outputs"] = tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in d["outputs"])
            if d.get("workload") is not None:
                d["workload"] = Workload(**_tuples(d["workload"], ("vae_channels",)))
            m = cls(**d)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest.json is malformed ({exc}); re-export the model") from exc
        if m.feature.head not in FEATURE_HEADS:
            raise ManifestError(f"unknown feature head {m.feature.head!r}; expected one of {FEATURE_HEADS}; "
                                "re-export with a matching ditf-export or upgrade ditf-runtime")
        if m.precision not in PRECISIONS:
            raise ManifestError(f"unknown precision {m.precision!r}; expected one of {PRECISIONS}")
        return m

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> "Manifest":
        """Read DIR/manifest.json and check its digest (refused if edited by hand)."""
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
        """Refuse files (default: every recorded one) that are unrecorded, missing, or whose size or sha256
        differ from what the export recorded. A file hashed before and unchanged since (same size, mtime,
        ctime, inode) is trusted without re-hashing: see verification.py."""
        from .verification import check_files

        check_files(export_dir, self, names)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


def graph_metadata(manifest: Manifest) -> dict[str, str]:
    """The static fields ditf-export also writes into model.onnx's metadata (never run-time results): the
    runtime compares them with the manifest, so a graph and a manifest from different exports are refused."""
    return {
        "schema_version": str(manifest.schema_version),
        "ditf.family": manifest.family,
        "ditf.model": manifest.model_name,
        "ditf.layer": str(manifest.feature.layer),
        "ditf.block": manifest.feature.block,
        "ditf.timestep": str(manifest.feature.timestep),
        "ditf.discard": ",".join(map(str, manifest.feature.discard)),
        "ditf.head": manifest.feature.head,
        "ditf.precision": manifest.precision,
        "ditf.feature_channels": str(manifest.geometry.feature_channels),
        "ditf.latent_channels": str(manifest.geometry.latent_channels),
    }


def content_digest(data: dict[str, Any]) -> str:
    """sha256 of a manifest's canonical JSON: every field but `digest`, keys sorted, no whitespace."""
    body = {k: v for k, v in data.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


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

"""`ditf triton-repo EXPORT_DIR REPO_DIR`: a Triton model repository for an exported graph.

    REPO/<name>/config.pbtxt                 backend "onnxruntime", or platform "tensorrt_plan"
    REPO/<name>/1/model.onnx/model.onnx      external data: Triton's directory form of an ONNX
    REPO/<name>/1/model.onnx/model.onnx.data    model (the file inside keeps its name)
    REPO/<name>/1/model.plan                 (tensorrt: the engine from EXPORT/engines/<gpu>-trt<v>/;
                                             TensorRT-RTX engines only with --pipeline local, no graph model)
    REPO/<name>/manifest.json                the export's contract, for the record
    REPO/extract/, REPO/match/               optional python-backend models running the whole
                                             pipeline (triton_model.py as 1/model.py + manifest.json)

Two exports (DiTF + DINOv2 fusion): both graph models (named after their manifests), and pipeline
models that call both (BLS, or run both in-process) and fuse the maps (fusion.py); their
1/members/<k>/manifest.json are the members' contracts, the parameter ditf_fusion the weights.

Dims come from the manifest: named axes become -1, and with max_batch_size > 0 the batch axis is
Triton's implicit one. The repository is built in a temporary folder beside REPO_DIR and renamed
into place, so Triton (or a reader) never sees half a repository.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError
from ..files import staged_folder
from ..fusion import MODELS, check_weights
from ..jobs import as_export_dirs
from ..manifest import (
    ENGINES_DIR,
    IMAGE_INPUT,
    MANIFEST_FILE,
    MODEL_DATA_FILE,
    MODEL_FILE,
    Manifest,
)
from .protocol import EXTRACT_MODEL, MATCH_MODEL, ports, served_geometry
from .triton_config import DEFAULT_QUEUE_DELAY_US, INSTANCE_KINDS, graph_tensors, port_tensor, render_config

VERSION = "1"
BACKENDS = ("onnxruntime", "tensorrt")
PIPELINE_MODES = ("bls", "local")
DEFAULT_MAX_BATCH_SIZE = 8
MEMBERS_DIR = "members"  # fused pipeline models: 1/members/<k>/manifest.json
def _model_name(manifest: Manifest) -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in manifest.model_name).strip("._-")
    return name or "ditf"


def _engine_folder(export_dir: Path, engine: str | None) -> Path:
    from ..backends.trt import engine_folders

    root = export_dir / ENGINES_DIR
    found = [p.name for p in engine_folders(export_dir)]
    if engine is None:
        if len(found) != 1:
            raise InputError(
                f"{root}: {'no engines' if not found else 'several engines: ' + ', '.join(found)}; "
                + ("build one with `ditf build-engine` on the GPU that will serve it" if not found else "pick one with --engine")
            )
        engine = found[0]
    if engine not in found:
        raise InputError(f"no engine {engine!r} in {root} (found: {', '.join(found) or 'none'})")
    return root / engine


def _engine_limits(folder: Path, manifest: Manifest, graph: bool) -> tuple[int, int | None]:
    """(largest batch of any profile, the E the engine fixes or None), after checking its record.

    A TensorRT-RTX engine is refused for the graph model (tensorrt_plan runs TensorRT engines only);
    without a graph model, the python models load it themselves through ditf_runtime.
    """
    from ..backends.trt import ENTERPRISE, RTX, read_engine_record, record_flavor

    record = read_engine_record(folder)
    flavor = record_flavor(record)
    if flavor is RTX and graph:
        raise InputError(
            f"{folder.name} is a TensorRT-RTX engine, and Triton's tensorrt_plan platform loads only TensorRT "
            f"engines: build one on the serving GPU (`ditf build-engine EXPORT --tensorrt enterprise`), or serve "
            "this one with `ditf serve EXPORT --backend tensorrt --device cuda`"
        )
    if flavor not in (ENTERPRISE, RTX):
        raise InputError(f"{folder}/engine.json was written by another ditf version; rebuild the engine")
    recorded = record.get("onnx_sha256") or {}
    for name in (MODEL_FILE, MODEL_DATA_FILE):
        model_sha = manifest.files.get(name, {}).get("sha256")
        if model_sha and recorded.get(name) != model_sha:
            raise InputError(f"engine in {folder} was built from another {name} than this export's; rebuild it")
    try:
        max_batch = max(int(p[IMAGE_INPUT]["max"][0]) for p in record["profiles"])
        ensemble = record["ensemble"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{folder}/engine.json lacks profiles or ensemble ({exc}); rebuild the engine") from None
    return max_batch, None if ensemble is None else int(ensemble)


@dataclass(frozen=True)
class TritonOptions:
    """What `ditf triton-repo` writes for an export: the graph model and the pipeline models.

    backend "onnxruntime" (the export's model.onnx) or "tensorrt" (an engine built by
    `ditf build-engine`; `engine` names its folder under engines/ when there are several).
    pipeline: also write the python-backend `extract` and `match` models, "bls" (graph in the
    graph model) or "local" (the runtime in the python model; needs only Triton's python
    backend); None for the graph model alone. graph=False leaves the graph model out ("local").
    """

    name: str | None = None  # graph model name (default: from the manifest's model name)
    backend: str = "onnxruntime"
    engine: str | None = None
    max_batch_size: int | None = None  # default 8, capped by a TensorRT engine's profiles; 0: no batching
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instance_kind: str | None = None  # default cpu, gpu for tensorrt
    instance_count: int = 1
    threads: int | None = None  # onnxruntime intra-op threads per instance
    pipeline: str | None = "bls"
    graph: bool = True
    pipeline_instance_count: int = 1
    weights: tuple[float, ...] | None = None  # two exports: their fusion weights (default 0.5 / 0.5)

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"unknown backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise InputError(f"unknown instance kind {self.instance_kind!r}: cpu or gpu")
        if self.backend == "tensorrt" and self.instance_kind != "gpu":
            raise InputError("TensorRT engines run on GPU instances: use --instance-kind gpu")
        if self.pipeline is not None and self.pipeline not in PIPELINE_MODES:
            raise InputError(f"unknown pipeline mode {self.pipeline!r}: use one of {', '.join(PIPELINE_MODES)}")
        if not self.graph and self.pipeline != "local":
            raise InputError("without the graph model, the pipeline models must run it themselves: pipeline='local'")
        if self.instance_count < 1 or self.pipeline_instance_count < 1:
            raise InputError("instance counts must be >= 1")
        if self.queue_delay_us < 0:
            raise InputError(f"queue delay must be >= 0 microseconds, got {self.queue_delay_us}")


@dataclass(frozen=True)
class _GraphSource:
    """What the graph model serves: the export's ONNX, or an engine file with the E it was built for."""

    plan: Path | None = None  # the TensorRT engine (None: the ONNX)
    ensemble: int | None = None  # an engine's fixed E


@dataclass(frozen=True)
class _Member:
    """One export in the repository: its folder, manifest, graph model name and what that model serves."""

    export_dir: Path
    manifest: Manifest
    options: TritonOptions  # with this member's graph model name and max batch size settled
    source: _GraphSource


def write_model_repository(
    export_dir: str | os.PathLike | Sequence[str | os.PathLike],
    repo_dir: str | os.PathLike,
    options: TritonOptions = TritonOptions(),
    *,
    overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Write a Triton model repository for EXPORT_DIR into REPO_DIR (atomically); returns REPO_DIR.

    Two export folders (DiTF + DINOv2 fusion) give two graph models, named after their manifests, and
    pipeline models that run both (BLS, or in-process) and fuse the maps with `options.weights`.
    `overwrite` replaces an existing REPO_DIR once the new one is complete; `verify` checks the
    model files' sha256 against the manifest first.
    """
    export_dirs, repo_dir = as_export_dirs(export_dir), Path(repo_dir)
    if len(export_dirs) > MODELS:
        raise InputError(f"a repository serves one export or two fused ones, got {len(export_dirs)}")
    manifests = [Manifest.load(d) for d in export_dirs]
    default_kind = "gpu" if options.backend == "tensorrt" else "cpu"
    options = replace(options, instance_kind=options.instance_kind or default_kind)
    options.check()
    if len(export_dirs) > 1:
        if options.name is not None:
            raise InputError("--name names the graph model of one export; fused graph models take their manifests' "
                             "model names")
        options = replace(options, weights=check_weights(options.weights))
    elif options.weights is not None:
        raise InputError("fusion weights need two exports")
    if repo_dir.exists() and not overwrite:
        raise InputError(f"{repo_dir} exists: choose another folder or overwrite it (--force)")
    members = _members(export_dirs, manifests, options, verify)
    options = replace(options, max_batch_size=min(m.options.max_batch_size for m in members))
    with staged_folder(repo_dir) as tmp:
        if options.graph:
            for member in members:
                _write_graph_model(tmp / member.options.name, member.manifest, member.export_dir, member.options,
                                   member.source)
        if options.pipeline is not None:
            for task in (EXTRACT_MODEL, MATCH_MODEL):
                _write_pipeline_model(tmp / task, task, members, options)
    return repo_dir


def _members(export_dirs, manifests, options: TritonOptions, verify: bool) -> list[_Member]:
    members, names = [], set()
    for export_dir, manifest in zip(export_dirs, manifests):
        name = options.name or _model_name(manifest)
        if name in names:  # the same model twice (e.g. two layers of one model)
            name = f"{name}-{len(members)}"
        names.add(name)
        if name in (EXTRACT_MODEL, MATCH_MODEL) or not all(c.isalnum() or c in "._-" for c in name):
            raise InputError(f"model name {name!r}: use letters, digits, '.', '_', '-', and not extract/match")
        member_options, source = _graph_source(replace(options, name=name), export_dir, manifest, verify)
        members.append(_Member(export_dir, manifest, member_options, source))
    return members


def _graph_source(
    options: TritonOptions, export_dir: Path, manifest: Manifest, verify: bool
) -> tuple[TritonOptions, _GraphSource]:
    """The engine (or verified ONNX) to serve, and the options with the max batch size settled."""
    max_batch_size, source = options.max_batch_size, _GraphSource()
    if options.backend == "tensorrt":
        folder = _engine_folder(export_dir, options.engine)
        engine_batch, ensemble = _engine_limits(folder, manifest, options.graph)
        if max_batch_size is None:
            max_batch_size = min(engine_batch, DEFAULT_MAX_BATCH_SIZE)
        elif max_batch_size > engine_batch:
            raise InputError(f"max batch size {max_batch_size} exceeds the engine's largest profile batch {engine_batch}")
        source = _GraphSource(folder / "model.plan", ensemble)
    elif verify:
        manifest.verify_files(export_dir, names=(MODEL_FILE, MODEL_DATA_FILE))
    max_batch_size = DEFAULT_MAX_BATCH_SIZE if max_batch_size is None else int(max_batch_size)
    if max_batch_size < 0:
        raise InputError(f"max batch size must be >= 0, got {max_batch_size}")
    if options.pipeline is not None and max_batch_size == 0:
        raise InputError("the pipeline models batch their requests: use max batch size >= 1")
    return replace(options, max_batch_size=max_batch_size), source


def _write_graph_model(
    model_dir: Path, manifest: Manifest, export_dir: Path, options: TritonOptions, source: _GraphSource
) -> None:
    inputs, outputs = graph_tensors(manifest, options.max_batch_size, source.ensemble)
    (model_dir / VERSION).mkdir(parents=True)
    common = dict(
        inputs=inputs,
        outputs=outputs,
        max_batch_size=options.max_batch_size,
        instance_kind=options.instance_kind,
        instance_count=options.instance_count,
        queue_delay_us=options.queue_delay_us,
    )
    if source.plan is None:
        onnx_dir = model_dir / VERSION / MODEL_FILE
        onnx_dir.mkdir()
        for file in (MODEL_FILE, MODEL_DATA_FILE):
            shutil.copyfile(export_dir / file, onnx_dir / file)
        parameters = {"intra_op_thread_count": str(options.threads)} if options.threads else None
        text = render_config(
            options.name, backend="onnxruntime", default_model_filename=MODEL_FILE, parameters=parameters, **common
        )
    else:
        shutil.copyfile(source.plan, model_dir / VERSION / "model.plan")
        text = render_config(options.name, platform="tensorrt_plan", default_model_filename="model.plan", **common)
    (model_dir / "config.pbtxt").write_text(text)
    shutil.copyfile(export_dir / MANIFEST_FILE, model_dir / MANIFEST_FILE)


def _write_pipeline_model(model_dir: Path, task: str, members: list[_Member], options: TritonOptions) -> None:
    """The python-backend `extract` / `match` model; for two members it runs both graphs and fuses
    (parameter ditf_fusion: graph models, weights, export folders and engine E per member)."""
    first = members[0]
    inputs, outputs = ports(task, served_geometry([m.manifest for m in members]))
    parameters = {
        "ditf_task": task,
        "ditf_mode": options.pipeline,
        "ditf_ensemble": "" if first.source.ensemble is None else str(first.source.ensemble),
    }
    if options.pipeline == "bls":
        parameters["ditf_graph_model"] = first.options.name
    else:
        parameters.update(
            ditf_export_dir=str(first.export_dir.resolve()),
            ditf_device="cuda" if options.instance_kind == "gpu" else "cpu",
            ditf_threads=str(options.threads or ""),
        )
    version = model_dir / VERSION
    version.mkdir(parents=True)
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), version / "model.py")
    shutil.copyfile(first.export_dir / MANIFEST_FILE, version / MANIFEST_FILE)
    if len(members) > 1:
        for k, member in enumerate(members):  # each member's contract: 1/members/<k>/manifest.json
            (version / MEMBERS_DIR / str(k)).mkdir(parents=True)
            shutil.copyfile(member.export_dir / MANIFEST_FILE, version / MEMBERS_DIR / str(k) / MANIFEST_FILE)
        parameters["ditf_fusion"] = json.dumps({
            "weights": list(options.weights),
            "graph_models": [m.options.name for m in members],
            "export_dirs": [str(m.export_dir.resolve()) for m in members],
            "ensembles": [m.source.ensemble for m in members],
        })
    text = render_config(
        task,
        backend="python",
        inputs=[port_tensor(p) for p in inputs],
        outputs=[port_tensor(p) for p in outputs],
        max_batch_size=options.max_batch_size,
        instance_kind="cpu",  # preprocessing and matching; the graph runs where its model runs
        instance_count=options.pipeline_instance_count,
        queue_delay_us=options.queue_delay_us,
        parameters=parameters,
    )
    (model_dir / "config.pbtxt").write_text(text)

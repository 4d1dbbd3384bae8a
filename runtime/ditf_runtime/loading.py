"""`load(export_dir)` -> Extractor: check the export's contract, choose the backend, start its runner.
`load(dir_a, dir_b, weights=...)` -> FusedExtractor (fusion.py): two exports, fused maps.

LoadOptions is the same choice as one value (what `load()` takes besides the folders), for code
that passes it on: batch extraction, Ray actors, the feature server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .backends.base import BaseRunner
from .cpu_variant import GraphChoice, choose_graph
from .errors import BackendError, InputError
from .extractor import Extractor
from .manifest import (
    FEATURES_OUTPUT,
    IMAGE_INPUT,
    MODEL_DATA_FILE,
    MODEL_FILE,
    NOISE_INPUT,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    graph_metadata,
)
from .preprocess import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from .fusion import FusedExtractor

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class LoadOptions:
    """Everything `load()` takes besides the export folder; `options.load(folder)` loads it."""

    backend: str = "auto"
    device: str | None = None
    providers: Sequence[Any] | None = None
    threads: int | None = None
    verify: bool = True
    exif_transpose: bool | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    batch_size: int = 1
    max_memory: int | None = None  # bytes a run may take; None: what the machine has available (memory.py)
    cpu_variant: str = "auto"

    @property
    def uses_gpu(self) -> bool:
        return str(self.device or "").startswith("cuda") or self.backend == "tensorrt"

    def load(self, path: str | os.PathLike, *more_paths: str | os.PathLike,
             weights: Sequence[float] | None = None) -> Extractor | FusedExtractor:
        return load(path, *more_paths, weights=weights, **{f.name: getattr(self, f.name) for f in fields(self)})

    def check(self, path: str | os.PathLike) -> tuple[Manifest, GraphChoice | None]:
        """What `load` refuses before it starts anything (folder, manifest, backend, device), without
        loading the graph or hashing its files: for a driver whose workers load it (Ray). Returns the
        manifest and the graph onnxruntime would open (None for TensorRT), for the memory check."""
        export_dir = _export_folder(path)
        manifest = Manifest.load(export_dir)
        _check_contract(manifest)
        runner = _start_runner(export_dir, manifest, replace(self, verify=False))
        loader = getattr(runner, "session_loader", None)
        if loader is not None:  # onnxruntime: every provider asked for must be available here
            from .backends.onnxrt import check_providers

            check_providers(loader.providers)
        return manifest, getattr(runner, "graph", None)


def load(
    path: str | os.PathLike,
    *more_paths: str | os.PathLike,
    backend: str = "auto",
    device: str | None = None,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
    verify: bool = True,
    exif_transpose: bool | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    batch_size: int = 1,
    max_memory: int | None = None,
    weights: Sequence[float] | None = None,
    parallel: bool = True,
    cpu_variant: str = "auto",
) -> Extractor | FusedExtractor:
    """Load an export folder written by ditf-export; two folders give their fused features.

    backend: "onnxruntime", "tensorrt" (an engine built by `ditf build-engine`: TensorRT for this GPU
    and version, or TensorRT-RTX for this compute capability), or "auto": TensorRT when
    device="cuda", a TensorRT flavour is installed and such an engine exists, otherwise
    onnxruntime on the requested device. device: "cpu" (default, except
    for tensorrt) or "cuda"; nothing falls back silently: CUDA requested but unavailable is an
    error. `verify` checks the files' sha256 against the manifest first (seconds per GB).
    cpu_variant: "auto" (default) runs the export's CPU variant (model.cpu.onnx, made by `ditf
    optimize-cpu`) when onnxruntime runs on the CPU and the variant exists, "on" requires it, "off"
    runs model.onnx; a variant that does not match its record is refused (ditf_runtime.cpu_variant).
    `Extractor.graph` says which graph runs and why.

    `load(dir_a, dir_b, weights=(0.5, 0.5))`: a FusedExtractor (fusion.py) whose maps are the two
    exports' maps fused (each keeps its own preprocessing and noise; the options apply to both);
    `parallel` runs the two graphs on two threads. `weights` without a second folder is an error.
    `max_memory` (bytes) is the budget every run is checked against before it starts (memory.py; a fused
    run's two graphs together); None: the memory available at that moment.
    """
    if more_paths:
        from .fusion import MODELS, FusedExtractor, check_weights

        if len(more_paths) + 1 != MODELS:
            raise InputError(f"fusion takes exactly {MODELS} exports, got {len(more_paths) + 1}")
        weights = check_weights(weights)  # before loading anything
        options = dict(backend=backend, device=device, providers=providers, threads=threads, verify=verify,
                       exif_transpose=exif_transpose, max_pixels=max_pixels, batch_size=batch_size,
                       max_memory=max_memory, cpu_variant=cpu_variant)
        members: list[Extractor] = []
        try:
            for folder in (path, *more_paths):
                members.append(load(folder, **options))
            return FusedExtractor(members, weights, parallel=parallel)
        except BaseException:
            for member in members:
                member.close()
            raise
    if weights is not None:
        raise InputError("weights= fuse two exports: pass a second export folder (load(dir_a, dir_b, weights=...))")
    export_dir = _export_folder(path)
    manifest = Manifest.load(export_dir)
    _check_contract(manifest)
    options = LoadOptions(backend, device, providers, threads, verify, exif_transpose, max_pixels, batch_size,
                          max_memory, cpu_variant)
    runner = _start_runner(export_dir, manifest, options)
    extractor = Extractor(
        export_dir, manifest, runner, exif_transpose=exif_transpose, max_pixels=max_pixels, batch_size=batch_size,
        max_memory=max_memory,
    )
    _check_graph(extractor)
    if options.verify:
        _check_integer_kernels(extractor)
    return extractor


def _check_integer_kernels(extractor: Extractor) -> None:
    """An INT8 export on the CPU: once per machine, its reference must still pass here (int8_check.py)."""
    from .int8_check import check_this_machine, needs_check

    if needs_check(extractor):
        try:
            check_this_machine(extractor)
        except BaseException:
            extractor.close()
            raise


def _export_folder(path: str | os.PathLike) -> Path:
    export_dir = Path(path)
    if not export_dir.is_dir():
        raise ManifestError(f"{export_dir} is not a folder: pass an export folder written by ditf-export")
    return export_dir


def _start_runner(export_dir: Path, manifest: Manifest, options: LoadOptions) -> BaseRunner:
    """The backend's runner (not yet activated); never a silent fallback to another device."""
    backend, device = options.backend, options.device
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if device is not None and device not in DEVICES:
        from .backends.trt.flavors import parse_device

        try:  # 'cuda:N': the N-th GPU this process sees (after CUDA_VISIBLE_DEVICES)
            parse_device(device)
        except BackendError:
            raise BackendError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from None
    if backend == "tensorrt" and device == "cpu":
        raise BackendError("the tensorrt backend runs on a GPU: use device='cuda' or backend='onnxruntime'")
    if backend == "auto":
        on_gpu = device is not None and device.startswith("cuda")
        backend = "tensorrt" if on_gpu and _engine_ready(export_dir, manifest, device) else "onnxruntime"
    if backend == "tensorrt":
        if options.providers is not None or options.threads is not None:
            raise BackendError("providers= and threads= are onnxruntime options; the tensorrt backend takes neither")
        if options.cpu_variant == "on":
            raise BackendError("cpu_variant='on' is for onnxruntime on the CPU; "
                               "the tensorrt backend builds from model.onnx")
        from .backends.trt import EngineFromPath, TrtRunner
        from .backends.trt.flavors import parse_device

        return TrtRunner(EngineFromPath(export_dir, manifest, verify=options.verify, device_index=parse_device(device)))
    from .backends.onnxrt import OnnxrtRunner, SessionFromOnnx, cpu_only

    on_cpu = (device or "cpu") == "cpu" and (options.providers is None or cpu_only(options.providers))
    graph = choose_graph(export_dir, manifest, on_cpu=on_cpu, choice=options.cpu_variant)
    if options.verify:
        manifest.verify_files(export_dir, names=(MODEL_FILE, MODEL_DATA_FILE))
    loader = SessionFromOnnx(
        graph.path, device=device or "cpu", providers=options.providers, threads=options.threads
    )
    return OnnxrtRunner(loader, graph)


# What a graph may take: image + noise (diffusion models) or the image alone (DINOv2).
GRAPH_INPUTS = ({IMAGE_INPUT, NOISE_INPUT}, {IMAGE_INPUT})


def _check_contract(manifest: Manifest) -> None:
    inputs = [spec.name for spec in manifest.inputs]
    outputs = [spec.name for spec in manifest.outputs]
    if set(inputs) not in GRAPH_INPUTS or len(set(inputs)) != len(inputs) or outputs != [FEATURES_OUTPUT]:
        raise ManifestError(
            f"manifest declares inputs {inputs} and outputs {outputs}; this runtime expects inputs "
            f"{[IMAGE_INPUT, NOISE_INPUT]} (or {[IMAGE_INPUT]}) and output [{FEATURES_OUTPUT!r}]"
        )


def _check_graph(extractor: Extractor) -> None:
    """The graph's own inputs and metadata must agree with its manifest."""
    graph_inputs = extractor.runner.input_metadata()
    if set(graph_inputs) != {spec.name for spec in extractor.manifest.inputs}:
        extractor.close()
        raise ManifestError(f"graph inputs {sorted(graph_inputs)} differ from the manifest's; re-export the model")
    metadata = getattr(extractor.runner, "custom_metadata", None)
    meta = metadata() if metadata else {}
    version = meta.get("schema_version")
    if version is not None and str(version) != str(SCHEMA_VERSION):
        extractor.close()
        raise ManifestError(
            f"model.onnx metadata schema_version {version} differs from this runtime's {SCHEMA_VERSION}"
        )
    disagree = [f"{key} {meta[key]!r} in the graph, {want!r} in the manifest"
                for key, want in graph_metadata(extractor.manifest).items() if key in meta and meta[key] != want]
    if disagree:
        extractor.close()
        raise ManifestError("model.onnx and manifest.json describe different graphs: " + "; ".join(disagree)
                            + ". The folder mixes two exports; re-export it")


def _engine_ready(export_dir: Path, manifest: Manifest, device: str = "cuda") -> bool:
    """An engine of an installed TensorRT flavour in EXPORT/engines/ that fits this GPU and this export."""
    from .backends import trt

    if not trt.tensorrt_available():
        return False
    try:
        device = trt.current_device(trt.flavors.parse_device(device))
    except BackendError:
        device = None
    return device is not None and trt.find_engine(export_dir, manifest, device)[0] is not None

"""TensorRT backend: build an engine from the export's ONNX, load it, run it.

Written against the real `tensorrt` Python API (10.x and 11.x) and cuda-python's runtime
bindings for memory and streams. Both are imported only when an engine is built or loaded, so
this module imports fine where neither exists (and where TensorRT cannot be installed at all).

Engines live in DIR/engines/<gpu>-trt<version>/ as model.plan + engine.json. A plan only runs
on the GPU model and TensorRT version it was built with, so engine.json records both and the
loader refuses a mismatch instead of failing deep inside deserialisation.

Precision lives in the ONNX (typed tensors, Q/DQ): networks are built strongly typed and no
FP16/INT8 builder flag is ever set (TensorRT 11 removed them, DESIGN.md §4).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BackendError, InputError
from ..manifest import (
    ENGINES_DIR,
    IMAGE_INPUT,
    MODEL_DATA_FILE,
    MODEL_FILE,
    NOISE_INPUT,
    Manifest,
    sha256_file,
    write_bytes_atomic,
    write_text_atomic,
)
from .base import BaseRunner, TensorMeta

ENGINE_FILE = "model.plan"
ENGINE_RECORD_FILE = "engine.json"
TIMING_CACHE_FILE = "timing.cache"
ENGINE_RECORD_VERSION = 1

NOT_INSTALLED = (
    "TensorRT is not installed here: build and run engines on the GPU machine that will serve them "
    "(pip install 'ditf-runtime[tensorrt]' there), or use --backend onnxruntime"
)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(NOT_INSTALLED) from exc
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except BackendError:
        return False
    return True


def import_cudart():
    """cuda-python's runtime bindings; the module moved to cuda.bindings in cuda-python 12.6."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise BackendError(
                "cuda-python is not installed: TensorRT engines need it for device memory "
                "(pip install 'ditf-runtime[tensorrt]')"
            ) from exc
    return cudart


def _cuda_call(cudart, result):
    """cuda-python returns (error, *values); raise on error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA call failed: {error}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


# -- engine folders and records ----------------------------------------------------------------


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': a folder name."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"


def engine_dir(export_dir: str | os.PathLike, gpu_name: str, trt_version: str) -> Path:
    return Path(export_dir) / ENGINES_DIR / f"{gpu_slug(gpu_name)}-trt{trt_version}"


@dataclass(frozen=True)
class DeviceInfo:
    gpu_name: str
    compute_capability: str
    trt_version: str


def current_device(device_index: int = 0) -> DeviceInfo:
    trt = import_tensorrt()
    cudart = import_cudart()
    props = _cuda_call(cudart, cudart.cudaGetDeviceProperties(device_index))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    name = name.rstrip("\x00").strip()
    return DeviceInfo(name, f"{props.major}.{props.minor}", trt.__version__)


def check_engine_record(record: dict[str, Any], device: DeviceInfo, manifest: Manifest, where: Path) -> None:
    """Refuse an engine built for another GPU, TensorRT version or export."""
    problems = []
    if record.get("gpu") != device.gpu_name:
        problems.append(f"built for GPU {record.get('gpu')!r}, this machine has {device.gpu_name!r}")
    if record.get("tensorrt") != device.trt_version:
        problems.append(f"built with TensorRT {record.get('tensorrt')}, this machine has {device.trt_version}")
    model_sha = manifest.files.get(MODEL_FILE, {}).get("sha256")
    if model_sha and record.get("model_sha256") != model_sha:
        problems.append("built from a different model.onnx than this export's manifest records")
    if problems:
        raise BackendError(
            f"engine in {where} cannot be used: "
            + "; ".join(problems)
            + ". Rebuild it here with `ditf build-engine EXPORT_DIR`."
        )


def read_engine_record(folder: Path) -> dict[str, Any]:
    path = folder / ENGINE_RECORD_FILE
    if not path.is_file() or not (folder / ENGINE_FILE).is_file():
        raise BackendError(f"{folder} holds no finished engine ({ENGINE_FILE} + {ENGINE_RECORD_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BackendError(f"{path} is not valid JSON ({exc}); rebuild the engine") from exc


def find_engine(export_dir: str | os.PathLike, device: DeviceInfo) -> Path | None:
    folder = engine_dir(export_dir, device.gpu_name, device.trt_version)
    return folder if (folder / ENGINE_FILE).is_file() and (folder / ENGINE_RECORD_FILE).is_file() else None


def available_engines(export_dir: str | os.PathLike) -> list[str]:
    root = Path(export_dir) / ENGINES_DIR
    return sorted(p.name for p in root.iterdir() if (p / ENGINE_FILE).is_file()) if root.is_dir() else []


# -- loading and running -----------------------------------------------------------------------


class EngineFromPath:
    """Lazy loader: finds this machine's engine in the export, checks its record, deserialises it."""

    def __init__(self, export_dir: str | os.PathLike, manifest: Manifest, *, verify: bool = True) -> None:
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.verify = verify
        self.folder: Path | None = None

    def __call__(self):
        trt = import_tensorrt()
        device = current_device()
        folder = find_engine(self.export_dir, device)
        if folder is None:
            built = available_engines(self.export_dir) or ["none"]
            raise BackendError(
                f"no TensorRT engine for {device.gpu_name} / TensorRT {device.trt_version} in "
                f"{self.export_dir / ENGINES_DIR} (found: {', '.join(built)}); "
                f"build one with `ditf build-engine {self.export_dir}`"
            )
        record = read_engine_record(folder)
        check_engine_record(record, device, self.manifest, folder)
        plan_path = folder / ENGINE_FILE
        if self.verify and record.get("plan_sha256") and sha256_file(plan_path) != record["plan_sha256"]:
            raise BackendError(f"{plan_path} does not match the sha256 in {ENGINE_RECORD_FILE}; rebuild the engine")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise BackendError(f"TensorRT could not deserialise {plan_path}; rebuild the engine")
        self.folder = folder
        # The runtime must outlive the engine it made.
        return runtime, engine


@dataclass
class _DeviceBuffer:
    pointer: int
    nbytes: int


class TrtRunner(BaseRunner):
    """Runs one engine: shapes set per call, device buffers grown on demand, one CUDA stream."""

    backend = "tensorrt"

    def __init__(self, engine_loader: EngineFromPath) -> None:
        super().__init__()
        self.engine_loader = engine_loader
        self._trt = None
        self._cudart = None
        self._runtime = None
        self.engine = None
        self.context = None
        self._stream = None
        self._buffers: dict[str, _DeviceBuffer] = {}

    def _activate(self) -> None:
        self._trt = import_tensorrt()
        self._cudart = import_cudart()
        self._runtime, self.engine = self.engine_loader()
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = _cuda_call(self._cudart, self._cudart.cudaStreamCreate())

    def _deactivate(self) -> None:
        cudart = self._cudart
        for buffer in self._buffers.values():
            cudart.cudaFree(buffer.pointer)
        self._buffers.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self.context = None
        self.engine = None
        self._runtime = None

    def _io_names(self, mode) -> list[str]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def _input_metadata(self) -> dict[str, TensorMeta]:
        trt = self._trt
        metas = {}
        for name in self._io_names(trt.TensorIOMode.INPUT):
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
            metas[name] = TensorMeta(name, dtype, shape)
        return metas

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
            raise InputError(
                f"input {name!r} shape {shape} is outside the engine's profile "
                f"(min {tuple(low)}, max {tuple(high)}); rebuild with `ditf build-engine --min/--max`"
            )

    def _buffer(self, name: str, nbytes: int) -> int:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            if buffer is not None:
                _cuda_call(self._cudart, self._cudart.cudaFree(buffer.pointer))
            pointer = _cuda_call(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1)))
            buffer = self._buffers[name] = _DeviceBuffer(int(pointer), nbytes)
        return buffer.pointer

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cudart = self._trt, self._cudart
        kind = cudart.cudaMemcpyKind
        for name, array in feed.items():
            self._check_profile(name, array.shape)
            if not self.context.set_input_shape(name, array.shape):
                raise InputError(f"TensorRT refused shape {array.shape} for input {name!r}")
        host_inputs = {name: np.ascontiguousarray(array) for name, array in feed.items()}
        for name, array in host_inputs.items():
            pointer = self._buffer(name, array.nbytes)
            _cuda_call(
                cudart,
                cudart.cudaMemcpyAsync(
                    pointer, array.ctypes.data, array.nbytes, kind.cudaMemcpyHostToDevice, self._stream
                ),
            )
            self.context.set_tensor_address(name, pointer)
        outputs = {}
        for name in self._io_names(trt.TensorIOMode.OUTPUT):
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            outputs[name] = np.empty(shape, dtype=dtype)
            self.context.set_tensor_address(name, self._buffer(name, outputs[name].nbytes))
        if not self.context.execute_async_v3(int(self._stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for name, array in outputs.items():
            _cuda_call(
                cudart,
                cudart.cudaMemcpyAsync(
                    array.ctypes.data,
                    self._buffers[name].pointer,
                    array.nbytes,
                    kind.cudaMemcpyDeviceToHost,
                    self._stream,
                ),
            )
        _cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream))
        return outputs


# -- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max (batch, height, width) of one optimisation profile."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]


def parse_bhw(text: str) -> tuple[int, int, int]:
    """'2x640x480' -> (2, 640, 480)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"shape {text!r} must be BATCHxHEIGHTxWIDTH, e.g. 1x640x480")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def profile_shapes(manifest: Manifest, shapes: ShapeRange, ensemble: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shapes of each graph input, from (B, H, W) and the manifest's geometry."""
    geometry = manifest.geometry
    for label, (batch, height, width) in (("min", shapes.min), ("opt", shapes.opt), ("max", shapes.max)):
        if batch < 1 or height < 1 or width < 1:
            raise InputError(f"--{label} {batch}x{height}x{width}: every size must be >= 1")
        if height % geometry.size_multiple or width % geometry.size_multiple:
            raise InputError(
                f"--{label} {batch}x{height}x{width}: height and width must be multiples of "
                f"{geometry.size_multiple} (the model's size multiple)"
            )
    for axis in range(3):
        if not shapes.min[axis] <= shapes.opt[axis] <= shapes.max[axis]:
            raise InputError(f"profile must satisfy min <= opt <= max on every axis: {shapes}")
    if ensemble < 1:
        raise InputError(f"ensemble must be >= 1, got {ensemble}")

    def image(bhw):
        return (bhw[0], 3, bhw[1], bhw[2])

    def noise(bhw):
        stride = geometry.vae_stride
        return (bhw[0], ensemble, geometry.latent_channels, bhw[1] // stride, bhw[2] // stride)

    return {
        IMAGE_INPUT: tuple(image(s) for s in (shapes.min, shapes.opt, shapes.max)),
        NOISE_INPUT: tuple(noise(s) for s in (shapes.min, shapes.opt, shapes.max)),
    }


def build_engine(
    export_dir: str | os.PathLike,
    manifest: Manifest,
    shapes: list[ShapeRange],
    *,
    ensemble: int | None = None,
    workspace_gib: float | None = None,
    timing_cache: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Build DIR/engines/<gpu>-trt<version>/model.plan (+ engine.json) from DIR/model.onnx."""
    trt = import_tensorrt()
    device = current_device()
    export_dir = Path(export_dir)
    manifest.verify_files(export_dir, names=(MODEL_FILE, MODEL_DATA_FILE))
    ensemble = manifest.feature.ensemble if ensemble is None else int(ensemble)
    profiles = [profile_shapes(manifest, s, ensemble) for s in shapes]
    if not profiles:
        raise InputError("give at least one profile (--min/--opt/--max)")
    folder = engine_dir(export_dir, device.gpu_name, device.trt_version)
    cache_path = Path(timing_cache) if timing_cache else folder / TIMING_CACHE_FILE

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Ignored (always on) in TensorRT 11, required for typed/QDQ graphs in 10.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {export_dir / MODEL_FILE}")
    # parse_from_file resolves model.onnx.data relative to the model, unlike parse(bytes).
    if not parser.parse_from_file(str(export_dir / MODEL_FILE)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT's ONNX parser rejected {export_dir / MODEL_FILE}: {errors}")

    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for shape_set in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shape_set.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building for {device.gpu_name} with TensorRT {device.trt_version} (strongly typed)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError("TensorRT failed to build the engine (see its log above)")
    plan_bytes = bytes(plan)
    write_bytes_atomic(folder / ENGINE_FILE, plan_bytes)
    write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    record = {
        "schema_version": ENGINE_RECORD_VERSION,
        "gpu": device.gpu_name,
        "compute_capability": device.compute_capability,
        "tensorrt": device.trt_version,
        "model_sha256": manifest.files.get(MODEL_FILE, {}).get("sha256"),
        "plan_sha256": sha256_file(folder / ENGINE_FILE),
        "plan_bytes": len(plan_bytes),
        "precision": manifest.precision,
        "strongly_typed": True,
        "ensemble": ensemble,
        "profiles": [{name: {"min": s[0], "opt": s[1], "max": s[2]} for name, s in p.items()} for p in profiles],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # engine.json last: its presence marks a finished engine.
    write_text_atomic(folder / ENGINE_RECORD_FILE, json.dumps(record, indent=2) + "\n")
    log(f"wrote {folder / ENGINE_FILE} ({len(plan_bytes) / 2**20:.1f} MiB)")
    return folder

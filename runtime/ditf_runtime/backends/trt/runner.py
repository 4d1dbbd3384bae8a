"""Load an engine (either flavour) and run it: profile choice, one context behind a lock, device buffers.

Written against the real `tensorrt` / `tensorrt_rtx` runtime API and cuda-python; it runs only on
a CUDA GPU (not on the machines this project is developed and tested on, which have none: there
the host-side logic is tested against a stand-in of these calls, tests/trt_standin.py).

Threads: PyTriton calls `extract` and `match` on different threads over one Extractor. TensorRT
execution contexts are not thread-safe, and contexts running at once may not share an optimisation
profile, so a runner has one context and one stream behind a lock: a request holds it from
choosing its profile to copying its outputs back, after the stream is synchronised. Device
buffers grow only under that lock, so no buffer is ever freed while a request still uses it.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np

from ...errors import BackendError, ManifestError
from ...manifest import Manifest, write_bytes_atomic
from ...verification import check_recorded
from ..base import BaseRunner, TensorMeta
from .flavors import (
    ENTERPRISE,
    NOT_INSTALLED,
    RTX,
    DeviceInfo,
    collecting_logger,
    cuda_call,
    current_device,
    import_cudart,
    import_flavor,
    installed,
    library_version,
)
from .profiles import choose_profile
from .records import (
    ENGINE_FILE,
    ENGINE_RECORD_FILE,
    check_engine_record,
    engine_folders,
    engine_problems,
    read_engine_record,
    rebuild_hint,
    record_flavor,
)

RUNTIME_CACHE = "runtime-{sm}.cache"  # TensorRT-RTX: JIT-compiled kernels for one GPU architecture


def installed_versions() -> dict:
    """{flavour: library version} for the flavours that import here."""
    return {f: library_version(import_flavor(f)) for f in (ENTERPRISE, RTX) if installed(f)}


def find_engine(export_dir: str | os.PathLike, manifest: Manifest, device: DeviceInfo,
                versions: dict | None = None) -> tuple[Path | None, list[str]]:  # fmt: skip
    """The first usable engine folder (TensorRT before TensorRT-RTX), and why each other one is not."""
    versions = installed_versions() if versions is None else versions
    usable, refused = [], []
    for folder in engine_folders(export_dir):
        try:
            record = read_engine_record(folder)
        except BackendError as exc:
            refused.append(f"{folder.name}: {exc}")
            continue
        flavor = record_flavor(record)
        if flavor is not None and flavor not in versions:
            refused.append(f"{folder.name}: built with {flavor.label}, not installed here ({flavor.install_hint()})")
            continue
        problems = engine_problems(record, flavor or RTX, versions.get(flavor, ""), device, manifest)
        if problems:
            refused.append(f"{folder.name}: " + "; ".join(problems))
        else:
            usable.append((flavor is not ENTERPRISE, folder))
    return (min(usable)[1] if usable else None), refused


class EngineFromPath:
    """Lazy loader: picks this machine's engine in the export, checks its record, then deserialises it.

    engine: a folder name under EXPORT/engines/ (default: the first usable one). device: the GPU to
    check against (default: the current CUDA device).
    """

    def __init__(self, export_dir: str | os.PathLike, manifest: Manifest, *, verify: bool = True,
                 engine: str | None = None, device: DeviceInfo | None = None) -> None:  # fmt: skip
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.verify = verify
        self.engine = engine
        self.device = device
        self.folder: Path | None = None
        self.record: dict | None = None
        self.flavor = None

    def locate(self) -> tuple[Path, dict]:
        """The engine folder and its record, after every check that needs no deserialising."""
        if not installed(ENTERPRISE) and not installed(RTX):
            raise BackendError(NOT_INSTALLED)
        try:
            device = self.device or current_device()
        except BackendError as exc:
            raise BackendError(f"TensorRT engines run on a CUDA GPU, and this machine has none ({exc})") from None
        if self.engine is not None:
            folder = self.export_dir / "engines" / self.engine
            record = read_engine_record(folder)
            flavor = record_flavor(record) or RTX  # an unknown flavour fails the record check below
            version = library_version(import_flavor(flavor))
            check_engine_record(record, flavor, version, device, self.manifest, folder)
            return folder, record
        folder, refused = find_engine(self.export_dir, self.manifest, device)
        if folder is None:
            found = "; ".join(refused) if refused else "none"
            raise BackendError(
                f"no usable TensorRT engine for {device.gpu_name} (compute capability {device.compute_capability}) "
                f"in {self.export_dir / 'engines'} (found: {found}); "
                f"build one with `ditf build-engine {self.export_dir} --tensorrt rtx` (portable) or "
                "`--tensorrt enterprise` on this GPU"
            )
        return folder, read_engine_record(folder)

    def __call__(self):
        folder, record = self.locate()
        flavor = record_flavor(record)
        trt = import_flavor(flavor)
        plan_path = folder / ENGINE_FILE
        if self.verify:
            self._check_plan(plan_path, record, flavor)
        plan = plan_path.read_bytes()
        logger = collecting_logger(trt)
        runtime = trt.Runtime(logger)
        if hasattr(runtime, "get_engine_validity"):  # TensorRT-RTX: its own header check, before loading
            validity, diagnostics = runtime.get_engine_validity(plan)
            if validity == trt.EngineValidity.INVALID:
                flags = trt.EngineInvalidityDiagnostics.__members__.items()
                reasons = ", ".join(n for n, v in flags if int(diagnostics) & int(v)) or "no diagnostics"
                raise BackendError(
                    f"{flavor.label} reports the engine in {folder} invalid on this machine "
                    f"({reasons}{_said(logger)}); {rebuild_hint(self.export_dir, flavor)}"
                )
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendError(f"{flavor.label} could not deserialise {plan_path}{_said(logger)}; "
                               f"{rebuild_hint(self.export_dir, flavor)}")  # fmt: skip
        self.folder, self.record, self.flavor = folder, record, flavor
        # The runtime must outlive the engine it made.
        return runtime, engine, trt


    def _check_plan(self, plan_path: Path, record: dict, flavor) -> None:
        """The plan against the sha256 its engine.json records, through the export's stamp: hashed once,
        then trusted while its size, mtime, ctime and inode are unchanged (a plan is GBs for a big model)."""
        hint = rebuild_hint(self.export_dir, flavor)
        sha = record.get("plan_sha256")
        if not isinstance(sha, str):
            raise BackendError(f"{plan_path.parent / ENGINE_RECORD_FILE} records no plan_sha256: every file the "
                               f"runtime opens needs a recorded sha256; {hint}")
        name = plan_path.relative_to(self.export_dir).as_posix()
        try:
            check_recorded(self.export_dir, self.manifest, {name: {"sha256": sha, "bytes": record.get("plan_bytes")}},
                           recorded_in=f"its {ENGINE_RECORD_FILE}", fix=hint)
        except ManifestError as exc:
            raise BackendError(str(exc)) from None


def _said(logger) -> str:
    return (": " + " | ".join(logger.errors)) if logger.errors else ""


class DeviceBufferPool:
    """Device buffers by tensor name, grown on demand; the caller guarantees nothing is in flight when one grows."""

    def __init__(self, cudart) -> None:
        self._cudart = cudart
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def get(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, -1))
        if size < nbytes:
            if size >= 0:
                cuda_call(self._cudart, self._cudart.cudaFree(pointer))
            pointer = int(cuda_call(self._cudart, self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def pointer(self, name: str) -> int:
        return self._buffers[name][0]

    def free_all(self) -> None:
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()


class TrtRunner(BaseRunner):
    """Runs one engine: a profile chosen per request, one context and stream behind a lock, pooled buffers."""

    backend = "tensorrt"

    def __init__(self, engine_loader) -> None:
        super().__init__()
        self.engine_loader = engine_loader
        self._lock = threading.Lock()
        self._trt = self._cudart = self._runtime = None
        self.engine = self.context = self._stream = None
        self._pool: DeviceBufferPool | None = None
        self._ranges: list[dict] = []
        self._active_profile = 0
        self._runtime_cache = None

    def _activate(self) -> None:
        self._runtime, self.engine, self._trt = self.engine_loader()
        self._cudart = import_cudart()
        self.context = self._create_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        self._stream = cuda_call(self._cudart, self._cudart.cudaStreamCreate())
        self._pool = DeviceBufferPool(self._cudart)
        inputs = self._io_names(self._trt.TensorIOMode.INPUT)
        self._ranges = []
        for index in range(self.engine.num_optimization_profiles):
            shapes = {name: self.engine.get_tensor_profile_shape(name, index) for name in inputs}
            self._ranges.append({name: (tuple(s[0]), tuple(s[2])) for name, s in shapes.items()})
        self._active_profile = 0  # a new context starts on profile 0

    def _create_context(self):
        """TensorRT-RTX: a context with a runtime cache of JIT-compiled kernels, kept beside the plan."""
        make_config = getattr(self.engine, "create_runtime_config", None)
        config = make_config() if make_config is not None else None
        if config is None or not hasattr(config, "create_runtime_cache"):  # TensorRT: no runtime cache
            return self.engine.create_execution_context()
        self._runtime_cache = config.create_runtime_cache()
        path = self._runtime_cache_path()
        if path is not None and path.is_file():
            self._runtime_cache.deserialize(path.read_bytes())
        config.set_runtime_cache(self._runtime_cache)
        return self.engine.create_execution_context(config)

    def _runtime_cache_path(self) -> Path | None:
        folder = getattr(self.engine_loader, "folder", None)
        if folder is None:
            return None
        return Path(folder) / RUNTIME_CACHE.format(sm=current_device().sm)

    def _save_runtime_cache(self) -> None:
        path = self._runtime_cache_path() if self._runtime_cache is not None else None
        if path is None:
            return
        try:
            write_bytes_atomic(path, bytes(self._runtime_cache.serialize()))
        except OSError as exc:  # a read-only export still runs; only the next start is slower
            warnings.warn(f"could not save the TensorRT-RTX runtime cache to {path}: {exc}", stacklevel=2)

    def _deactivate(self) -> None:
        with self._lock:  # waits for a request in flight
            self._save_runtime_cache()
            if self._pool is not None:
                self._pool.free_all()
            if self._stream is not None:
                self._cudart.cudaStreamDestroy(self._stream)
            self._stream = self.context = self.engine = self._runtime = self._runtime_cache = None

    def _io_names(self, mode) -> list[str]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def _input_metadata(self) -> dict[str, TensorMeta]:
        metas = {}
        for name in self._io_names(self._trt.TensorIOMode.INPUT):
            dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
            metas[name] = TensorMeta(name, dtype, shape)
        return metas

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            if self.context is None:
                raise BackendError("the TensorRT runner was closed")
            try:
                return self._run(feed)
            finally:  # never leave work in flight on the stream when the lock is released
                self._cudart.cudaStreamSynchronize(self._stream)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cudart, context, stream = self._trt, self._cudart, self.context, self._stream
        kind = cudart.cudaMemcpyKind
        index = choose_profile(self._ranges, {n: a.shape for n, a in feed.items()}, prefer=self._active_profile)
        if index != self._active_profile:
            if not context.set_optimization_profile_async(index, int(stream)):
                raise BackendError(f"TensorRT refused to switch to optimisation profile {index}")
            self._active_profile = index
        for name, array in feed.items():
            if not context.set_input_shape(name, array.shape):
                raise BackendError(f"TensorRT refused shape {array.shape} for input {name!r} (profile {index})")
        host_inputs = {name: np.ascontiguousarray(array) for name, array in feed.items()}  # alive until the sync
        for name, array in host_inputs.items():
            pointer = self._pool.get(name, array.nbytes)
            cuda_call(cudart, cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                                     kind.cudaMemcpyHostToDevice, stream))  # fmt: skip
            context.set_tensor_address(name, pointer)
        outputs = {}
        for name in self._io_names(trt.TensorIOMode.OUTPUT):
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))))
            context.set_tensor_address(name, self._pool.get(name, outputs[name].nbytes))
        if not context.execute_async_v3(int(stream)):
            raise BackendError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        for name, array in outputs.items():
            cuda_call(cudart, cudart.cudaMemcpyAsync(array.ctypes.data, self._pool.pointer(name), array.nbytes,
                                                     kind.cudaMemcpyDeviceToHost, stream))  # fmt: skip
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream))
        return outputs

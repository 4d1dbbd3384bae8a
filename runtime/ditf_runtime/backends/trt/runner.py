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

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from ...errors import BackendError, ManifestError
from ...manifest import (FEATURES_OUTPUT, IMAGE_INPUT, NOISE_INPUT, Manifest, latent_frames, write_bytes_atomic,
                         write_text_atomic)
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
RUNTIME_CACHE_RECORD_SUFFIX = ".json"  # beside it: the sha256 it was written with (checked before it is read)


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
                 engine: str | None = None, device: DeviceInfo | None = None,
                 device_index: int | None = None) -> None:  # fmt: skip
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.verify = verify
        self.engine = engine
        self.device = device  # resolved by locate(): the GPU the engine is checked against and runs on
        self.device_index = device_index if device is None else device.index  # None: the current CUDA device
        self.folder: Path | None = None
        self.record: dict | None = None
        self.flavor = None

    def locate(self) -> tuple[Path, dict]:
        """The engine folder and its record, after every check that needs no deserialising."""
        if not installed(ENTERPRISE) and not installed(RTX):
            raise BackendError(NOT_INSTALLED)
        try:
            device = self.device or current_device(self.device_index)
        except BackendError as exc:
            raise BackendError(f"TensorRT engines run on a CUDA GPU, and this machine has none ({exc})") from None
        self.device = device
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
        cudart = import_cudart()
        cuda_call(cudart, cudart.cudaSetDevice(self.device.index))  # deserialise onto the GPU that was checked
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

    def new_bytes(self, name: str, nbytes: int) -> int:
        """Bytes `get(name, nbytes)` would allocate now (0 when the buffer is already big enough)."""
        return nbytes if self._buffers.get(name, (0, -1))[1] < nbytes else 0

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
        # TensorRT-RTX: the context keeps raw pointers to the runtime config and its cache; both must live
        # as long as the context, and go before the engine that made them (_deactivate's order).
        self._runtime_config = self._runtime_cache = None
        self._device_index = 0

    @property
    def device(self) -> DeviceInfo | None:
        """The GPU the engine runs on (the loader's, once it located the engine)."""
        return getattr(self.engine_loader, "device", None)

    def _activate(self) -> None:
        self._runtime, self.engine, self._trt = self.engine_loader()
        self._cudart = import_cudart()
        self._device_index = self.device.index if self.device is not None else 0
        self._set_device()
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

    def _set_device(self) -> None:
        """The CUDA device is per host thread: every thread that touches the engine sets it first."""
        cuda_call(self._cudart, self._cudart.cudaSetDevice(self._device_index))

    def _create_context(self):
        """TensorRT-RTX: a context with a runtime cache of JIT-compiled kernels, kept beside the plan."""
        make_config = getattr(self.engine, "create_runtime_config", None)
        if make_config is None:  # TensorRT: no runtime config, no runtime cache
            return self.engine.create_execution_context()
        config = make_config()
        cache = config.create_runtime_cache()
        blob = self._read_runtime_cache()
        if blob is not None and not cache.deserialize(blob):
            warnings.warn(f"TensorRT-RTX refused the runtime cache {self._runtime_cache_path()} (another GPU, driver "
                          "or TensorRT-RTX version): kernels are compiled again and the cache is rewritten at close",
                          stacklevel=3)  # fmt: skip
        config.set_runtime_cache(cache)
        self._runtime_config, self._runtime_cache = config, cache
        return self.engine.create_execution_context(config)

    def _runtime_cache_path(self) -> Path | None:
        folder = getattr(self.engine_loader, "folder", None)
        if folder is None or self.device is None:
            return None
        return Path(folder) / RUNTIME_CACHE.format(sm=self.device.sm)

    def _read_runtime_cache(self) -> bytes | None:
        """The cache file's bytes when they match the sha256 recorded when it was written, else None (a cache
        is only ever a speed-up: a missing, unrecorded or changed one is compiled again, with a warning)."""
        path = self._runtime_cache_path()
        if path is None or not path.is_file():
            return None
        record_path = path.with_name(path.name + RUNTIME_CACHE_RECORD_SUFFIX)
        try:
            record = json.loads(record_path.read_text())
            blob = path.read_bytes()
        except (OSError, ValueError):
            record, blob = None, b""
        if not isinstance(record, dict) or record.get("sha256") != hashlib.sha256(blob).hexdigest():
            warnings.warn(f"ignoring the TensorRT-RTX runtime cache {path}: it does not match the sha256 recorded in "
                          f"{record_path.name} (changed, or written by something else); it is rebuilt at close",
                          stacklevel=4)  # fmt: skip
            return None
        return blob

    def _save_runtime_cache(self) -> None:
        path = self._runtime_cache_path() if self._runtime_cache is not None else None
        if path is None:
            return
        try:
            blob = bytes(self._runtime_cache.serialize())
            # the record first: a crash between the two leaves a cache that fails its check, never one trusted
            record = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "gpu": self.device.gpu_name,
                      "compute_capability": self.device.compute_capability,
                      "library": library_version(self._trt) if hasattr(self._trt, "__version__") else None}
            write_text_atomic(path.with_name(path.name + RUNTIME_CACHE_RECORD_SUFFIX), json.dumps(record) + "\n")
            write_bytes_atomic(path, blob)
        except OSError as exc:  # a read-only export still runs; only the next start is slower
            warnings.warn(f"could not save the TensorRT-RTX runtime cache to {path}: {exc}", stacklevel=2)

    def _deactivate(self) -> None:
        with self._lock:  # waits for a request in flight
            self._set_device()
            self._save_runtime_cache()
            if self._pool is not None:
                self._pool.free_all()
            if self._stream is not None:
                self._cudart.cudaStreamDestroy(self._stream)
            # Release in reverse order of creation: what was made from an object goes before it.
            self._stream = None
            self.context = None
            self._runtime_config = None
            self._runtime_cache = None
            self.engine = None
            self._runtime = None

    def memory_need(self, manifest: Manifest, shape) -> "EngineMemory":
        """What this engine takes for one call at `shape` (a memory.RunShape), as the engine reports it: its
        weights and its context's activation memory (allocated when the runner started, for the largest
        profile), and the call's input and output buffers (of which `io_new` not yet in the buffer pool)."""
        from ...memory import EngineMemory

        geometry = manifest.geometry
        frames = (shape.frames,) if geometry.frame_axis is not None else ()
        latent = tuple(latent_frames(geometry, f) for f in frames)  # causal 3-D VAEs: 1 + (F - 1) / frame_stride
        shapes = {IMAGE_INPUT: (shape.batch, *frames, 3, shape.height, shape.width),
                  FEATURES_OUTPUT: (shape.batch, *latent, geometry.feature_channels,
                                    shape.height // geometry.feature_stride, shape.width // geometry.feature_stride)}
        if NOISE_INPUT in self._io_names(self._trt.TensorIOMode.INPUT):
            vs = geometry.vae_stride
            shapes[NOISE_INPUT] = (shape.batch, shape.ensemble, *latent, geometry.latent_channels,
                                   shape.height // vs, shape.width // vs)
        io = {name: int(np.prod(dims)) * np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name))).itemsize
              for name, dims in shapes.items()}
        return EngineMemory(weights=self._weight_bytes(), activations=int(self.engine.device_memory_size_v2),
                            io=sum(io.values()), io_new=sum(self._pool.new_bytes(n, b) for n, b in io.items()))

    def _weight_bytes(self) -> int:
        """The engine's own count (EngineStat.TOTAL_WEIGHTS_SIZE); older TensorRT: the plan's size, an upper bound."""
        stat = getattr(self._trt, "EngineStat", None)
        if stat is not None and hasattr(self.engine, "get_engine_stat"):
            return int(self.engine.get_engine_stat(stat.TOTAL_WEIGHTS_SIZE))
        record = getattr(self.engine_loader, "record", None) or {}
        return int(record.get("plan_bytes") or 0)

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
            self._set_device()  # this thread may not have run CUDA on the engine's GPU yet
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

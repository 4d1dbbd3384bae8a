"""A STAND-IN for the TensorRT runtime and cuda-python, for testing OUR host-side logic only.

It is not TensorRT and claims nothing about TensorRT: no engine is deserialised and no kernel runs.
It models just enough of the real call sequence for the runner's own logic to be checked on a
machine without a GPU, and offers only names the real `tensorrt_rtx` bindings have
(tests/test_trt_api_conformance.py checks that, by introspecting the installed module):

* optimisation profiles: an engine with several profiles; `set_input_shape` refuses a shape outside
  the active profile (as TensorRT does) and `set_optimization_profile_async` switches it;
* threads: work is queued on the stream and runs only at `cudaStreamSynchronize`, reading the input
  shapes and addresses captured at `execute_async_v3`, as a GPU would; small sleeps widen the
  windows in which an unlocked runner would mix two requests up;
* buffers: device memory is host memory behind integer "pointers"; `cudaFree` of memory still used
  by queued work is recorded as a violation; every allocation is tracked so leaks show;
* dtypes per tensor: `get_tensor_dtype` answers a `DataType` member per tensor and `nptype` maps it
  (and refuses anything else, as the real one does);
* static device memory: the engine reports `device_memory_size_v2` (the largest profile's), per
  profile `get_device_memory_size_for_profile_v2`, and its weights (`get_engine_stat`);
* TensorRT-RTX's runtime config and runtime cache (`rtx=True`): the context keeps only a weak
  reference to its config and the config to its cache, as the C++ objects hold raw pointers, so a
  config freed while its context lives, or objects released in the wrong order, are recorded;
* CUDA devices: `cudaGetDevice` / `cudaSetDevice` per host thread, several GPUs, and a launch on a
  thread whose current device is not the engine's is recorded as a violation;
* the stream is an opaque handle, as cuda-python's `cudaStream_t`: TensorRT calls take `int(stream)`.

The computation itself is the tiny test graph in numpy (tests/runtime_graphs.py), so answers can
be compared with the single-threaded ones and with the reference.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import time
import types
import weakref

import numpy as np
from runtime_graphs import tiny_features, tiny_weights


class _Error(enum.Enum):
    cudaSuccess = 0
    cudaErrorInvalidDevice = 101


class StreamHandle:
    """cuda-python's cudaStream_t: an object, whose int() is the raw handle TensorRT takes."""

    def __init__(self, value: int) -> None:
        self._value = value

    def __int__(self) -> int:
        return self._value


class StandInCuda:
    """cuda.bindings.runtime, as far as the runner uses it."""

    cudaError_t = _Error
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, gpus=(("NVIDIA GeForce RTX 4090", 8, 9),)) -> None:
        self.allocations: dict[int, ctypes.Array] = {}
        self.queue: list[tuple[set[int], object]] = []  # (pointers the op touches, op)
        self.violations: list[str] = []
        self.gpus = list(gpus)  # (name, major, minor) per device ordinal
        self._current = threading.local()  # the current device is per host thread, 0 until set
        self.free_bytes = 80 << 30
        self._lock = threading.Lock()

    # -- devices ------------------------------------------------------------------------------
    def cudaGetDeviceCount(self):
        return _Error.cudaSuccess, len(self.gpus)

    def cudaGetDevice(self):
        return _Error.cudaSuccess, getattr(self._current, "device", 0)

    def cudaSetDevice(self, device):
        if not 0 <= device < len(self.gpus):
            return (_Error.cudaErrorInvalidDevice,)
        self._current.device = device
        return (_Error.cudaSuccess,)

    def cudaGetDeviceProperties(self, device):
        name, major, minor = self.gpus[device]
        return _Error.cudaSuccess, types.SimpleNamespace(name=name.encode(), major=major, minor=minor)

    def cudaMemGetInfo(self):
        return _Error.cudaSuccess, self.free_bytes, 80 << 30

    def current(self) -> int:
        return getattr(self._current, "device", 0)

    # -- memory and streams -------------------------------------------------------------------
    def cudaMalloc(self, nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        with self._lock:
            self.allocations[ctypes.addressof(buffer)] = buffer
        return _Error.cudaSuccess, ctypes.addressof(buffer)

    def cudaFree(self, pointer):
        with self._lock:
            if any(pointer in touched for touched, _ in self.queue):
                self.violations.append(f"freed {pointer:#x} while queued work still uses it")
            self.allocations.pop(pointer)
        return (_Error.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert isinstance(stream, StreamHandle), "cuda-python calls take the stream handle"
        touched = {dst if kind == 1 else src}
        self._enqueue(touched, lambda: ctypes.memmove(dst, src, nbytes))
        return (_Error.cudaSuccess,)

    def cudaStreamCreate(self):
        return _Error.cudaSuccess, StreamHandle(7)

    def cudaStreamDestroy(self, stream):
        return (_Error.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        while True:
            with self._lock:
                if not self.queue:
                    return (_Error.cudaSuccess,)
                _, op = self.queue.pop(0)
            time.sleep(0.0005)
            op()

    def _enqueue(self, touched, op) -> None:
        with self._lock:
            self.queue.append((touched, op))


class DataType(enum.IntEnum):
    """tensorrt.DataType, the members the runner can meet."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    BF16 = 7
    INT64 = 8


_NPTYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
            DataType.INT32: np.int32, DataType.BOOL: np.bool_, DataType.INT64: np.int64}


class StandInTrt(types.SimpleNamespace):
    """The tensorrt module names the runner uses."""

    TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    DataType = DataType
    EngineStat = enum.Enum("EngineStat", "TOTAL_WEIGHTS_SIZE STRIPPED_WEIGHTS_SIZE")
    __version__ = "0.0.standin"

    @staticmethod
    def nptype(dtype):
        if not isinstance(dtype, DataType) or dtype not in _NPTYPES:  # real: TypeError for a non-DataType
            raise TypeError(f"nptype: not a numpy-representable tensorrt.DataType: {dtype!r}")
        return _NPTYPES[dtype]


class StandInRuntimeCache:
    """TensorRT-RTX's IRuntimeCache: serialise / deserialise (False on a blob it cannot use)."""

    MAGIC = b"standin-runtime-cache:"

    def __init__(self, log: list[str]) -> None:
        self.kernels = 0
        self.loaded: list[bytes] = []
        weakref.finalize(self, log.append, "runtime_cache")

    def serialize(self):
        return memoryview(self.MAGIC + str(self.kernels).encode())

    def deserialize(self, blob) -> bool:
        blob = bytes(blob)
        if not blob.startswith(self.MAGIC):
            return False
        self.loaded.append(blob)
        self.kernels = int(blob[len(self.MAGIC):])
        return True


class StandInRuntimeConfig:
    """TensorRT-RTX's IRuntimeConfig: holds its cache by raw pointer (here: a weak reference)."""

    def __init__(self, log: list[str]) -> None:
        self._log = log
        self._cache = None
        weakref.finalize(self, log.append, "runtime_config")

    def create_runtime_cache(self):
        return StandInRuntimeCache(self._log)

    def set_runtime_cache(self, cache) -> bool:
        self._cache = weakref.ref(cache)
        return True

    def get_runtime_cache(self):
        return self._cache() if self._cache is not None else None


class StandInContext:
    def __init__(self, engine: "StandInEngine", config: StandInRuntimeConfig | None) -> None:
        self.engine = weakref.proxy(engine)  # raw pointer: the engine must outlive it
        self.config = weakref.ref(config) if config is not None else None  # likewise its runtime config
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.switches: list[int] = []
        weakref.finalize(self, engine.released.append, "context")

    def set_optimization_profile_async(self, index, stream) -> bool:
        assert isinstance(stream, int), "TensorRT takes the raw stream handle"
        self.profile = index
        self.switches.append(index)
        return True

    def set_input_shape(self, name, shape) -> bool:
        low, _, high = self.engine.profiles[self.profile][name]
        time.sleep(0.0005)
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
            return False  # TensorRT refuses a shape outside the active profile
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        batch, _, height, width = self.shapes["image"]
        fs = self.engine.geometry.feature_stride
        return (batch, self.engine.geometry.feature_channels, height // fs, width // fs)

    def set_tensor_address(self, name, pointer) -> bool:
        self.addresses[name] = pointer
        return True

    def execute_async_v3(self, stream) -> bool:
        assert isinstance(stream, int), "TensorRT takes the raw stream handle"
        engine, cuda = self.engine, self.engine.cuda
        if self.config is not None:
            config = self.config()
            if config is None or config.get_runtime_cache() is None:
                engine.violations.append("launched after its runtime config or runtime cache was freed")
            else:
                config.get_runtime_cache().kernels += 1  # JIT-compiled kernels land in the cache
        if cuda.current() != engine.device:
            engine.violations.append(f"launched on a thread whose current device is {cuda.current()}, "
                                     f"the engine's is {engine.device}")
        shapes, addresses = dict(self.shapes), dict(self.addresses)  # captured at enqueue, like a GPU launch
        output_shape = self.get_tensor_shape("features")
        compute = engine.compute

        def run() -> None:
            feed = {}
            for name in ("image", "noise"):
                count = int(np.prod(shapes[name]))
                raw = (ctypes.c_float * count).from_address(addresses[name])
                feed[name] = np.frombuffer(raw, dtype=np.float32).reshape(shapes[name]).copy()
            features = np.ascontiguousarray(compute(feed["image"], feed["noise"]))
            assert features.shape == output_shape
            ctypes.memmove(addresses["features"], features.ctypes.data, features.nbytes)

        cuda._enqueue(set(addresses.values()), run)
        engine.executions += 1
        return True


class StandInEngine:
    """An engine of the tiny test graph with the given profiles ({name: (min, opt, max)} each).

    device: the ordinal it was deserialised on."""

    def __init__(self, cuda: StandInCuda, geometry, profiles: list[dict], device: int = 0,
                 weights: int = 3 << 20, activations_per_profile: list[int] | None = None) -> None:
        self.cuda, self.geometry, self.profiles = cuda, geometry, profiles
        self.weight, self.bias = tiny_weights(geometry)
        self.num_io_tensors = 3
        self.num_optimization_profiles = len(profiles)
        self.contexts: list[StandInContext] = []
        self.executions = 0
        self.device = device
        self.violations: list[str] = []
        self.released: list[str] = []  # what was freed, in order (engine objects log here)
        self.dtypes = {"image": DataType.FLOAT, "noise": DataType.FLOAT, "features": DataType.FLOAT}
        self.weights = weights
        self.activations = activations_per_profile or [(i + 1) << 20 for i in range(len(profiles))]
        weakref.finalize(self, self.released.append, "engine")

    def compute(self, image, noise):
        return tiny_features(image, noise, self.weight, self.bias, self.geometry)

    def get_tensor_name(self, index):
        return ("image", "noise", "features")[index]

    def get_tensor_mode(self, name):
        return StandInTrt.TensorIOMode.OUTPUT if name == "features" else StandInTrt.TensorIOMode.INPUT

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_shape(self, name):
        c, channels = self.geometry.latent_channels, self.geometry.feature_channels
        return {"image": (-1, 3, -1, -1), "noise": (-1, -1, c, -1, -1), "features": (-1, channels, -1, -1)}[name]

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profiles[index][name]]

    @property
    def device_memory_size_v2(self) -> int:
        """Static allocation: enough for every profile's largest shapes."""
        return max(self.activations)

    def get_device_memory_size_for_profile_v2(self, profile_index) -> int:
        return self.activations[profile_index]

    def get_engine_stat(self, stat) -> int:
        return self.weights if stat.name == "TOTAL_WEIGHTS_SIZE" else 0

    def create_execution_context(self, runtime_config=None):
        context = StandInContext(self, runtime_config)
        self.contexts.append(weakref.proxy(context))
        return context


class StandInRuntime:
    """trt.Runtime: the engine's deserialiser, which must outlive it."""


class StandInRtxEngine(StandInEngine):
    """TensorRT-RTX's engine: contexts are made with a runtime config (and its runtime cache)."""

    def create_runtime_config(self):
        return StandInRuntimeConfig(self.released)


class StandInLoader:
    """EngineFromPath's part the runner sees: called once, then `folder`, `device` and `record` are set."""

    def __init__(self, engine: StandInEngine, folder=None, device=None, record=None) -> None:
        self._engine = engine
        self.folder, self.device, self.record = folder, device, record or {}

    def __call__(self):
        engine, self._engine = self._engine, None  # the runner holds the only reference from here
        runtime = StandInRuntime()
        weakref.finalize(runtime, engine.released.append, "runtime")
        return runtime, engine, StandInTrt()


def stand_in_runner(monkeypatch, geometry, profiles, *, rtx: bool = False, folder=None, device=None,
                    cuda: StandInCuda | None = None):
    """A TrtRunner over a StandInEngine; cuda-python is replaced for the TensorRT backend modules.

    device: a DeviceInfo (its index is the ordinal the engine lives on); folder: the engine folder (the
    TensorRT-RTX runtime cache is kept there). Returns (runner, engine, cuda)."""
    from ditf_runtime.backends.trt import TrtRunner, flavors, runner

    cuda = cuda or StandInCuda()
    engine = (StandInRtxEngine if rtx else StandInEngine)(cuda, geometry, profiles,
                                                          device=getattr(device, "index", 0))
    monkeypatch.setattr(runner, "import_cudart", lambda: cuda)
    monkeypatch.setattr(flavors, "import_cudart", lambda: cuda)
    return TrtRunner(StandInLoader(engine, folder, device)), engine, cuda

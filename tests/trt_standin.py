"""A STAND-IN for the TensorRT runtime and cuda-python, for testing OUR host-side logic only.

It is not TensorRT and claims nothing about TensorRT: no engine is deserialised and no kernel runs.
It models just enough of the real call sequence for the runner's own logic to be checked on a
machine without a GPU:

* optimisation profiles: an engine with several profiles; `set_input_shape` refuses a shape outside
  the active profile (as TensorRT does) and `set_optimization_profile_async` switches it;
* threads: work is queued on the stream and runs only at `cudaStreamSynchronize`, reading the input
  shapes and addresses captured at `execute_async_v3`, as a GPU would; small sleeps widen the
  windows in which an unlocked runner would mix two requests up;
* buffers: device memory is host memory behind integer "pointers"; `cudaFree` of memory still used
  by queued work is recorded as a violation; every allocation is tracked so leaks show.

The computation itself is the tiny test graph in numpy (tests/runtime_graphs.py), so answers can
be compared with the single-threaded ones and with the reference.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import time
import types

import numpy as np
from runtime_graphs import tiny_features, tiny_weights


class _Error(enum.Enum):
    cudaSuccess = 0


class StandInCuda:
    """cuda.bindings.runtime, as far as the runner uses it."""

    cudaError_t = _Error
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self) -> None:
        self.allocations: dict[int, ctypes.Array] = {}
        self.queue: list[tuple[set[int], object]] = []  # (pointers the op touches, op)
        self.violations: list[str] = []
        self._lock = threading.Lock()

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
        touched = {dst if kind == 1 else src}
        self._enqueue(touched, lambda: ctypes.memmove(dst, src, nbytes))
        return (_Error.cudaSuccess,)

    def cudaStreamCreate(self):
        return _Error.cudaSuccess, 7

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


class StandInTrt(types.SimpleNamespace):
    """The tensorrt module names the runner uses."""

    TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")

    @staticmethod
    def nptype(dtype):
        return np.float32


class StandInContext:
    def __init__(self, engine: "StandInEngine") -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.switches: list[int] = []

    def set_optimization_profile_async(self, index, stream) -> bool:
        assert isinstance(stream, int)
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

    def set_tensor_address(self, name, pointer) -> None:
        self.addresses[name] = pointer

    def execute_async_v3(self, stream) -> bool:
        shapes, addresses = dict(self.shapes), dict(self.addresses)  # captured at enqueue, like a GPU launch
        output_shape = self.get_tensor_shape("features")
        cuda = self.engine.cuda

        def run() -> None:
            feed = {}
            for name in ("image", "noise"):
                count = int(np.prod(shapes[name]))
                raw = (ctypes.c_float * count).from_address(addresses[name])
                feed[name] = np.frombuffer(raw, dtype=np.float32).reshape(shapes[name]).copy()
            features = np.ascontiguousarray(self.engine.compute(feed["image"], feed["noise"]))
            assert features.shape == output_shape
            ctypes.memmove(addresses["features"], features.ctypes.data, features.nbytes)

        cuda._enqueue(set(addresses.values()), run)
        self.engine.executions += 1
        return True


class StandInEngine:
    """An engine of the tiny test graph with the given profiles ({name: (min, opt, max)} each)."""

    def __init__(self, cuda: StandInCuda, geometry, profiles: list[dict]) -> None:
        self.cuda, self.geometry, self.profiles = cuda, geometry, profiles
        self.weight, self.bias = tiny_weights(geometry)
        self.num_io_tensors = 3
        self.num_optimization_profiles = len(profiles)
        self.contexts: list[StandInContext] = []
        self.executions = 0

    def compute(self, image, noise):
        return tiny_features(image, noise, self.weight, self.bias, self.geometry)

    def get_tensor_name(self, index):
        return ("image", "noise", "features")[index]

    def get_tensor_mode(self, name):
        return StandInTrt.TensorIOMode.OUTPUT if name == "features" else StandInTrt.TensorIOMode.INPUT

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_shape(self, name):
        c, channels = self.geometry.latent_channels, self.geometry.feature_channels
        return {"image": (-1, 3, -1, -1), "noise": (-1, -1, c, -1, -1), "features": (-1, channels, -1, -1)}[name]

    def get_tensor_profile_shape(self, name, index):
        return [list(s) for s in self.profiles[index][name]]

    def create_execution_context(self):
        context = StandInContext(self)
        self.contexts.append(context)
        return context


def stand_in_runner(monkeypatch, geometry, profiles):
    """A TrtRunner over a StandInEngine; cuda-python is replaced for the runner module only."""
    from ditf_runtime.backends.trt import TrtRunner, runner

    cuda = StandInCuda()
    engine = StandInEngine(cuda, geometry, profiles)
    monkeypatch.setattr(runner, "import_cudart", lambda: cuda)
    return TrtRunner(lambda: (object(), engine, StandInTrt())), engine, cuda

"""TensorRT backend.

TensorRT cannot be installed on the development machines (DESIGN.md §4), so:
* the real build-and-run test skips with a reason unless `tensorrt` imports and a GPU exists;
* the engine bookkeeping (folders, engine.json checks, profiles) is tested directly;
* the loader/runner/builder code paths run against a small stand-in of the `tensorrt` and
  `cuda.bindings.runtime` APIs (host memory, onnxruntime underneath), which catches mistakes in
  our own call sequence without claiming to test TensorRT itself.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types

import ditf_runtime
import numpy as np
import onnxruntime
import pytest
from click.testing import CliRunner
from ditf_runtime.backends import trt
from ditf_runtime.cli import main
from ditf_runtime.errors import BackendError, InputError
from ditf_runtime.manifest import Manifest
from runtime_graphs import build_tiny_export


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt_export")
    build_tiny_export(folder)
    return folder


# -- bookkeeping, no TensorRT needed -----------------------------------------------------------


def test_engine_folder_names():
    assert trt.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert (
        trt.engine_dir("/x", "NVIDIA H100 80GB HBM3", "10.13.0").as_posix()
        == "/x/engines/nvidia-h100-80gb-hbm3-trt10.13.0"
    )


def test_engine_record_mismatches_are_refused(export_dir, tmp_path):
    manifest = Manifest.load(export_dir)
    device = trt.DeviceInfo("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
    good = {"gpu": device.gpu_name, "tensorrt": "10.13.0", "model_sha256": manifest.files["model.onnx"]["sha256"]}
    trt.check_engine_record(good, device, manifest, tmp_path)
    with pytest.raises(
        BackendError, match="built for GPU 'NVIDIA A100.*this machine has 'NVIDIA H100.*ditf build-engine"
    ):
        trt.check_engine_record({**good, "gpu": "NVIDIA A100-SXM4-80GB"}, device, manifest, tmp_path)
    with pytest.raises(BackendError, match="TensorRT 10.8.0, this machine has 10.13.0"):
        trt.check_engine_record({**good, "tensorrt": "10.8.0"}, device, manifest, tmp_path)
    with pytest.raises(BackendError, match="different model.onnx"):
        trt.check_engine_record({**good, "model_sha256": "0" * 64}, device, manifest, tmp_path)


def test_profiles_follow_the_manifest_geometry(export_dir):
    manifest = Manifest.load(export_dir)
    shapes = trt.ShapeRange(trt.parse_bhw("1x32x32"), trt.parse_bhw("2x48x64"), trt.parse_bhw("4x64x96"))
    profile = trt.profile_shapes(manifest, shapes, ensemble=2)
    assert profile["image"] == ((1, 3, 32, 32), (2, 3, 48, 64), (4, 3, 64, 96))
    assert profile["noise"] == ((1, 2, 4, 4, 4), (2, 2, 4, 6, 8), (4, 2, 4, 8, 12))
    with pytest.raises(InputError, match="min <= opt <= max"):
        trt.profile_shapes(manifest, trt.ShapeRange((2, 32, 32), (1, 32, 32), (4, 64, 64)), 2)
    with pytest.raises(InputError, match="multiples of 16"):
        trt.profile_shapes(manifest, trt.ShapeRange((1, 30, 32), (1, 32, 32), (4, 64, 64)), 2)
    with pytest.raises(InputError, match="BATCHxHEIGHTxWIDTH"):
        trt.parse_bhw("640x480")


# -- a stand-in for the tensorrt and cuda-python APIs ------------------------------------------


class _Success(enum.Enum):
    cudaSuccess = 0


def fake_cudart(gpu_name: str) -> types.ModuleType:
    cudart = types.ModuleType("cuda.bindings.runtime")
    cudart.cudaError_t = _Success
    cudart.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudart.allocations = {}
    ok = _Success.cudaSuccess

    def malloc(nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        cudart.allocations[ctypes.addressof(buffer)] = buffer
        return ok, ctypes.addressof(buffer)

    def free(pointer):
        cudart.allocations.pop(pointer)
        return (ok,)

    def memcpy(dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (ok,)

    class Stream(int):
        pass

    cudart.cudaMalloc = malloc
    cudart.cudaFree = free
    cudart.cudaMemcpyAsync = memcpy
    cudart.cudaStreamCreate = lambda: (ok, Stream(7))
    cudart.cudaStreamSynchronize = lambda stream: (ok,)
    cudart.cudaStreamDestroy = lambda stream: (ok,)
    cudart.cudaGetDeviceProperties = lambda index: (ok, types.SimpleNamespace(name=gpu_name.encode(), major=9, minor=0))
    return cudart


def fake_tensorrt(version: str) -> types.ModuleType:
    """Just the API surface ditf_runtime.backends.trt uses; the 'plan' is JSON naming the ONNX file."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    module.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    module.nptype = lambda dtype: np.float32
    module.built = []

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = [list(low), list(opt), list(high)]

    class Cache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        def __init__(self):
            self.profiles, self.cache, self.workspace = [], None, None

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def set_memory_pool_limit(self, pool, nbytes):
            self.workspace = nbytes

        def create_timing_cache(self, data):
            assert isinstance(data, bytes)
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Network:
        onnx_path = None

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            assert flags == 1, "networks must be created strongly typed"
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            module.built.append(config)
            return json.dumps({"onnx": network.onnx_path, "profile": config.profiles[0].shapes}).encode()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.onnx_path = path
            return True

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            batch, _, height, width = self.shapes["image"]
            return (batch, 32, height // 16, width // 16)

        def set_tensor_address(self, name, pointer):
            self.addresses[name] = pointer

        def execute_async_v3(self, stream):
            assert isinstance(stream, int)
            feed = {}
            for name, shape in self.shapes.items():
                nbytes = int(np.prod(shape)) * 4
                raw = (ctypes.c_char * nbytes).from_address(self.addresses[name])
                feed[name] = np.frombuffer(raw, dtype=np.float32).reshape(shape).copy()
            (features,) = self.engine.session.run(["features"], feed)
            ctypes.memmove(self.addresses["features"], features.ctypes.data, features.nbytes)
            return True

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.session = onnxruntime.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
            self.num_io_tensors = 3

        def get_tensor_name(self, index):
            return ("image", "noise", "features")[index]

        def get_tensor_mode(self, name):
            return module.TensorIOMode.OUTPUT if name == "features" else module.TensorIOMode.INPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            return {"image": (-1, 3, -1, -1), "noise": (-1, -1, 4, -1, -1), "features": (-1, 32, -1, -1)}[name]

        def get_tensor_profile_shape(self, name, profile_index):
            return self.plan["profile"][name]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(json.loads(data))

    module.Builder, module.OnnxParser, module.Runtime = Builder, OnnxParser, Runtime
    return module


@pytest.fixture()
def fake_gpu(monkeypatch):
    """Install the stand-ins; returns a function that swaps the 'machine' (GPU name, TRT version)."""

    def use(gpu_name="NVIDIA H100 80GB HBM3", version="10.13.0"):
        cuda = types.ModuleType("cuda")
        bindings = types.ModuleType("cuda.bindings")
        cudart = fake_cudart(gpu_name)
        bindings.runtime = cudart
        cuda.bindings = bindings
        tensorrt = fake_tensorrt(version)
        for name, module in {
            "tensorrt": tensorrt,
            "cuda": cuda,
            "cuda.bindings": bindings,
            "cuda.bindings.runtime": cudart,
        }.items():
            monkeypatch.setitem(sys.modules, name, module)
        return tensorrt, cudart

    return use


def test_build_load_run_with_stand_in(fake_gpu, export_dir, tmp_path):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    tensorrt, cudart = fake_gpu()
    result = CliRunner().invoke(
        main,
        ["build-engine", str(folder), "--min", "1x32x32", "--opt", "2x48x64", "--max", "2x64x64", "--workspace", "1"],
    )
    assert result.exit_code == 0, result.output
    engine_folder = folder / "engines" / "nvidia-h100-80gb-hbm3-trt10.13.0"
    record = json.loads((engine_folder / "engine.json").read_text())
    assert record["gpu"] == "NVIDIA H100 80GB HBM3" and record["tensorrt"] == "10.13.0" and record["strongly_typed"]
    assert record["profiles"][0]["noise"]["max"] == [2, 2, 4, 8, 8]
    assert (engine_folder / "timing.cache").read_bytes() == b"timing-cache"
    assert tensorrt.built[0].workspace == 1 << 30

    with ditf_runtime.load(folder, backend="auto", device="cuda") as extractor:
        assert extractor.backend == "tensorrt"
        assert extractor.verify_reference()
        fm = extractor.extract(np.zeros((40, 60, 3), np.uint8))[0]
        assert fm.shape == (1, 32, 3, 4)
        with pytest.raises(InputError, match="outside the engine's profile"):
            extractor.run(np.zeros((3, 3, 32, 32), np.float32), np.zeros((3, 2, 4, 4, 4), np.float32))
    assert cudart.allocations == {}  # every device buffer freed on close

    fake_gpu(gpu_name="NVIDIA A100-SXM4-80GB")
    with pytest.raises(
        BackendError, match="no TensorRT engine for NVIDIA A100.*found: nvidia-h100-80gb-hbm3-trt10.13.0"
    ):
        ditf_runtime.load(folder, backend="tensorrt")
    # a plan copied by hand into the folder for another GPU is refused by its record
    shutil.copytree(engine_folder, folder / "engines" / "nvidia-a100-sxm4-80gb-trt10.13.0")
    with pytest.raises(BackendError, match="built for GPU 'NVIDIA H100"):
        ditf_runtime.load(folder, backend="tensorrt")
    with ditf_runtime.load(folder, backend="auto", device="cpu") as extractor:
        assert extractor.backend == "onnxruntime"


# -- the real thing, where it exists -----------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_engine_matches_reference(export_dir, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (GPU runners only, DESIGN.md §4)")
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed here")
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    manifest = Manifest.load(folder)
    trt.build_engine(folder, manifest, [trt.ShapeRange((1, 32, 32), (2, 48, 64), (2, 64, 64))], log=lambda _: None)
    with ditf_runtime.load(folder, backend="tensorrt", device="cuda") as extractor:
        assert extractor.verify_reference()

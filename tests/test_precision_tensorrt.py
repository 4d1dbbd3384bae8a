"""GPU runners only (`make parity-gpu`): the typed / Q-DQ graphs built and run where they are meant to run.

- TensorRT, strongly typed (no precision flags; TensorRT 10 and 11): fp16, bf16 and int8 exports of
  flux-tiny each build an engine and reproduce their reference.safetensors at their precision's
  tolerance (ditf_runtime.parity.TOLERANCES, the same gate the export used on the CPU).
- onnxruntime CUDA: the typed fp16 / bf16 graphs run with real low-precision kernels (on the CPU
  fp16 GEMMs run in FP32 and bf16 has no kernels), and agree with the Cast-emulated twin the CPU
  checked, which validates the emulation itself.

Here (no CUDA, no TensorRT) every test skips with its reason, before any export is built.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ditf_runtime.manifest import Manifest
from ditf_runtime.parity import compare

pytestmark = [pytest.mark.gpu]


def _need_cuda_gpu():
    try:
        from ditf_runtime.backends.trt import import_cudart
        from ditf_runtime.errors import BackendError

        try:
            cudart = import_cudart()
        except BackendError as exc:
            pytest.skip(f"cuda-python is not installed here ({exc})")
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            pytest.skip("no CUDA GPU here")
    except ImportError as exc:  # pragma: no cover - runtime layout changed
        pytest.skip(f"runtime TensorRT backend unavailable: {exc}")


def _need_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (GPU runners only, DESIGN.md §4)")
    _need_cuda_gpu()


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8"])
def test_strongly_typed_engine_matches_reference(request, tmp_path, precision):
    _need_tensorrt()
    import ditf_runtime
    from ditf_runtime.backends import trt

    folder = tmp_path / precision
    shutil.copytree(request.getfixturevalue("flux_tiny_precision_export")(precision), folder)
    manifest = Manifest.load(folder)
    built = trt.build_engine(folder, manifest, [trt.ShapeRange((1, 64, 64), (2, 64, 96), (2, 128, 128))],
                             log=lambda _: None)
    record = trt.read_engine_record(built)
    assert record["strongly_typed"] and record["precision"] == precision
    with ditf_runtime.load(folder, backend="tensorrt", device="cuda") as extractor:
        res = extractor.verify_reference()
    assert res, res


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_typed_graph_on_onnxruntime_cuda_matches_its_cpu_twin(request, precision):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU runner)")
    _need_cuda_gpu()
    from safetensors.numpy import load_file

    from ditf_calib import graph as G
    from ditf_calib.precision import to_low_precision

    folder = request.getfixturevalue("flux_tiny_precision_export")(precision)
    ref = load_file(str(folder / "reference.safetensors"))
    feed = {"image": ref["image"], "noise": ref["noise"]}
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CUDAExecutionProvider"])
    got = sess.run(["features"], feed)[0]
    assert np.isfinite(got).all()
    assert compare(got, ref["features"], precision), "typed graph on CUDA vs the PyTorch reference"
    fp32 = G.load(request.getfixturevalue("flux_tiny_export") / "model.onnx")
    twin, _ = to_low_precision(fp32, precision, emulate=True)
    emulated = G.session(twin).run(["features"], feed)[0]
    assert compare(got, emulated, precision).min_cosine > 0.9995

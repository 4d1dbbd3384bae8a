"""GPU machines only (`make parity-gpu`): engines and typed graphs run where they are meant to run.

- TensorRT engines (TensorRT-RTX, or TensorRT where RTX has no target for this GPU), strongly typed
  (no precision flags): the fp32, fp16, bf16, int8 and fp8 exports of flux-tiny each build an engine whose
  features match onnxruntime on the CPU on the same inputs (fp32: cosine >= 0.99999 with TF32 off)
  and their reference.safetensors at their precision's gate (ditf_runtime.parity.TOLERANCES, the same
  gate the export used on the CPU). One engine is hammered from several threads, and one with two
  optimisation profiles serves requests from both. fp8 needs compute capability >= 8.9 (skipped below).
- TensorRT-RTX's own verdict on a CPU-built engine for this GPU (get_engine_validity), recorded either
  way: its targets are 8.0/8.6/8.9/12.0+ (no 9.0), so an H100/H200 is expected to be refused.
- onnxruntime CUDA: the typed fp16 / bf16 graphs run with real low-precision kernels (on the CPU fp16
  GEMMs run in FP32 and bf16 has no kernels), and agree with the Cast-emulated twin the CPU checked.

Where there is no CUDA GPU (the development machines and CI), every test skips with its reason
before any export is built.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ditf_runtime.backends import trt
from ditf_runtime.manifest import Manifest
from ditf_runtime.parity import compare
from safetensors.numpy import load_file
from trt_helpers import linked_copy

pytestmark = [pytest.mark.gpu]


def _need_gpu() -> trt.DeviceInfo:
    try:
        return trt.current_device()
    except Exception as exc:  # noqa: BLE001 - any reason there is no GPU is a reason to skip
        pytest.skip(f"no CUDA GPU here ({exc})")


def _flavor_for(device: trt.DeviceInfo) -> tuple[str, list[str]]:
    """(--tensorrt value, --compute-capability list) that can build an engine this GPU runs."""
    if trt.installed(trt.RTX):
        offered = {n.lower() for n in trt.import_flavor(trt.RTX).ComputeCapability.__members__}
        if device.sm in offered:
            return "rtx", [device.compute_capability]
    if trt.installed(trt.ENTERPRISE):
        return "enterprise", []
    pytest.skip(f"no TensorRT flavour here builds for compute capability {device.compute_capability}")


def _engine_export(export, tmp_path, device, profiles=None):
    """A linked copy of `export` with an engine for this GPU (default: the manifest's own profile, which holds
    reference.safetensors' inputs); returns (folder, manifest)."""
    folder = linked_copy(export, tmp_path / "export")
    manifest = Manifest.load(folder)
    flavor, targets = _flavor_for(device)
    built = None if profiles is None else [trt.cli_profile(manifest, *p, ensemble=manifest.feature.ensemble)
                                           for p in profiles]
    trt.build_engine(folder, manifest, built, tensorrt=flavor, compute_capabilities=targets, log=lambda _: None)
    return folder, manifest


# onnxruntime's CPU provider runs these graphs as written; it has no bf16 kernels, so a bf16 engine is judged
# against reference.safetensors alone (and, where onnxruntime-gpu is installed, its CUDA provider).
ONNXRUNTIME_CPU_RUNS = ("fp32", "fp16", "int8")


def _onnxruntime_cpu(folder, image, noise):
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["features"], {"image": image, "noise": noise})[0]


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "fp8"])
def test_engine_matches_onnxruntime_and_the_reference(request, tmp_path, precision):
    import ditf_runtime
    from ditf_runtime.precision import Precision

    device = _need_gpu()
    floor = Precision(precision).min_compute_capability
    if floor is not None and tuple(int(v) for v in device.compute_capability.split(".")) < floor:
        pytest.skip(f"{precision} runs on compute capability >= {floor[0]}.{floor[1]}; {device.gpu_name} is "
                    f"{device.compute_capability}")
    export = (request.getfixturevalue("flux_tiny_export") if precision == "fp32"
              else request.getfixturevalue("flux_tiny_precision_export")(precision))  # fmt: skip
    folder, manifest = _engine_export(export, tmp_path, device)
    ref = load_file(str(folder / "reference.safetensors"))
    with ditf_runtime.load(folder, backend="tensorrt", device="cuda") as extractor:
        got = extractor.run(ref["image"], ref["noise"])
        assert extractor.verify_reference(), "verify_reference on the engine of the manifest's profile"
    if precision in ONNXRUNTIME_CPU_RUNS:
        cpu = _onnxruntime_cpu(folder, ref["image"], ref["noise"])
        if precision == "fp32":
            res = compare(got, cpu, "fp32")
            assert res.min_cosine >= 0.99999, res
    assert compare(got, ref["features"], precision), "engine vs the PyTorch reference at the export's gate"


@pytest.mark.tensorrt
def test_engine_hammered_from_threads_and_two_profiles(request, tmp_path):
    import ditf_runtime

    device = _need_gpu()
    folder, _ = _engine_export(request.getfixturevalue("flux_tiny_export"), tmp_path, device,
                               profiles=(("1x32x32", "1x48x48", "2x64x64"), ("1x80x80", "1x96x96", "2x128x128")))
    rng = np.random.default_rng(0)
    feeds = [(rng.uniform(-1, 1, (b, 3, h, w)).astype(np.float32),
              rng.standard_normal((b, 2, 16, h // 8, w // 8)).astype(np.float32))
             for b, h, w in [(1, 32, 48), (2, 96, 128), (1, 64, 64), (2, 128, 80)]]  # fmt: skip
    with ditf_runtime.load(folder, backend="tensorrt", device="cuda") as extractor:
        single = [extractor.run(image, noise) for image, noise in feeds]
        answers, errors = [], []

        def work(worker):
            try:
                for r in range(8):
                    key = (worker + r) % len(feeds)
                    answers.append((key, extractor.run(*feeds[key])))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(answers) == 32
    for key, got in answers:
        np.testing.assert_array_equal(got, single[key])
    for (image, noise), got in zip(feeds, single):
        assert compare(got, _onnxruntime_cpu(folder, image, noise), "fp32").min_cosine >= 0.99999


@pytest.mark.tensorrt
def test_tensorrt_rtx_verdict_on_a_cpu_built_engine_for_this_gpu(request, tmp_path):
    """Default targets (8.0/8.6/8.9/12.0+): valid here, or refused with UNSUPPORTED_CC (e.g. an H100)."""
    device = _need_gpu()
    if not trt.installed(trt.RTX):
        pytest.skip("TensorRT-RTX is not installed here")
    rt = trt.import_flavor(trt.RTX)
    folder = linked_copy(request.getfixturevalue("flux_tiny_export"), tmp_path / "export")
    manifest = Manifest.load(folder)
    built = trt.build_engine(folder, manifest, [trt.cli_profile(manifest, "1x64x64", "1x64x64", "1x64x64", 2)],
                             tensorrt="rtx", log=lambda _: None)  # fmt: skip
    logger = trt.flavors.collecting_logger(rt)
    validity, diagnostics = rt.Runtime(logger).get_engine_validity((built / "model.plan").read_bytes())
    reasons = [n for n, v in rt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(v)]
    print(f"TensorRT-RTX {rt.__version__} on {device.gpu_name} ({device.compute_capability}): {validity} {reasons} "
          f"{logger.errors}")  # fmt: skip
    expected = trt.records.rtx_accepts(list(trt.records.RTX_DEFAULT_TARGETS), True, device)
    assert (validity != rt.EngineValidity.INVALID) == expected, (validity, reasons, logger.errors)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_typed_graph_on_onnxruntime_cuda_matches_its_cpu_twin(request, precision):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU runner)")
    _need_gpu()
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

"""TensorRT backend: host-side logic that needs no GPU.

* engine records, folder names, compute capabilities, profiles and flavour choice: plain functions;
* the runner's profile choice, thread safety and buffer pool: against tests/trt_standin.py, a
  STAND-IN of the TensorRT runtime and cuda-python that checks our call sequence, not TensorRT.

Real TensorRT-RTX builds are in test_trt_rtx_builds.py; engines running on a GPU in
test_precision_tensorrt.py (skipped where there is none).
"""

from __future__ import annotations

import sys
import threading
import types
from contextlib import nullcontext

import numpy as np
import pytest
from click.testing import CliRunner
from ditf_runtime.backends import trt
from ditf_runtime.backends.trt import DeviceBufferPool, DeviceInfo, Profile
from ditf_runtime.cli import main
from ditf_runtime.errors import BackendError, InputError
from ditf_runtime.manifest import Manifest
from runtime_graphs import tiny_reference, with_geometry
from trt_standin import StandInCuda, StreamHandle, stand_in_runner

RTX_4090 = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9")
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture(scope="module")
def manifest(export_dir):
    return Manifest.load(export_dir)


# -- folders, records, compute capabilities --------------------------------------------------------


def test_engine_folder_names():
    assert trt.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    enterprise = trt.engine_dir("/x", "NVIDIA H100 80GB HBM3", "10.13.0")
    assert enterprise.as_posix() == "/x/engines/nvidia-h100-80gb-hbm3-trt10.13.0"
    assert trt.rtx_engine_dir("/x", "1.7.1.116", ["sm120", "sm86", "sm80", "sm89"]).name == "rtx1.7.1-sm80_86_89_120"
    assert [trt.parse_compute_capability(t) for t in ("8.6", "86", "sm86", "SM_86", "12.0", "120")] == [
        "sm86", "sm86", "sm86", "sm86", "sm120", "sm120"]  # fmt: skip
    with pytest.raises(InputError, match="write it as 8.6"):
        trt.parse_compute_capability("ampere")


def _record(manifest, **changes):
    record = {
        "schema_version": 2, "flavor": "tensorrt-rtx", "version": "1.7.1.116",
        "targets": ["sm80", "sm86", "sm89", "sm120"], "targets_default": True,
        "onnx_sha256": {n: manifest.files[n]["sha256"] for n in ("model.onnx", "model.onnx.data")},
    }  # fmt: skip
    return {**record, **changes}


def test_rtx_record_checks_name_each_mismatch(manifest):
    problems = lambda record, device=RTX_4090: trt.engine_problems(record, trt.RTX, "1.7.1.116", device, manifest)  # noqa: E731
    assert problems(_record(manifest)) == []
    assert problems(_record(manifest), DeviceInfo("NVIDIA RTX PRO 6000", "12.0")) == []
    assert problems(_record(manifest), DeviceInfo("NVIDIA GB10", "12.1")) == []  # default targets: 12.0 and later
    assert problems(_record(manifest, targets=["sm86"], targets_default=False), DeviceInfo("GB10", "12.1"))
    (h100,) = problems(_record(manifest), H100)
    assert "compute capabilities 8.0, 8.6, 8.9, 12.0 and later; this GPU (NVIDIA H100 80GB HBM3) is 9.0" in h100
    (version,) = problems(_record(manifest, version="1.6.1.120"))
    assert version == "built with TensorRT-RTX 1.6.1.120, this machine has 1.7.1.116"
    (flavor,) = problems(_record(manifest, flavor="tensorrt"))
    assert "built with TensorRT, and this runtime loads engines with TensorRT-RTX" in flavor
    onnx = problems(_record(manifest, onnx_sha256={"model.onnx": "0" * 64}))
    assert any("different model.onnx" in p for p in onnx) and any("different model.onnx.data" in p for p in onnx)
    (old,) = problems({"gpu": "x", "tensorrt": "10.13.0", "model_sha256": "y"})
    assert "another ditf version" in old


def test_enterprise_record_is_checked_against_the_gpu(manifest, tmp_path):
    record = _record(manifest, flavor="tensorrt", version="10.13.0", targets=None, gpu=H100.gpu_name)
    folder = tmp_path / "export" / "engines" / "nvidia-h100-80gb-hbm3-trt10.13.0"
    trt.check_engine_record(record, trt.ENTERPRISE, "10.13.0", H100, manifest, folder)
    with pytest.raises(BackendError, match=r"built for GPU 'NVIDIA H100.*this machine has 'NVIDIA A100.*"
                                           r"ditf build-engine .*export --tensorrt enterprise --force"):  # fmt: skip
        trt.check_engine_record(record, trt.ENTERPRISE, "10.13.0", DeviceInfo("NVIDIA A100-SXM4-80GB", "8.0"),
                                manifest, folder)  # fmt: skip


# -- profiles ------------------------------------------------------------------------------------------


def test_cli_profile_follows_the_manifest_geometry(manifest):
    profile = trt.cli_profile(manifest, "1x32x32", "2x48x64", "4x64x96", ensemble=2)
    assert profile.shapes["image"] == ((1, 3, 32, 32), (2, 3, 48, 64), (4, 3, 64, 96))
    assert profile.shapes["noise"] == ((1, 2, 4, 4, 4), (2, 2, 4, 6, 8), (4, 2, 4, 8, 12))
    assert Profile.from_record(profile.to_record()) == profile
    with pytest.raises(InputError, match="min <= opt <= max"):
        trt.cli_profile(manifest, "2x32x32", "1x32x32", "4x64x64", 2)
    with pytest.raises(InputError, match="multiples of 16"):
        trt.cli_profile(manifest, "1x30x32", "1x32x32", "4x64x64", 2)
    with pytest.raises(InputError, match="BATCHxHEIGHTxWIDTH, e.g. 1x640x480"):
        trt.cli_profile(manifest, "640x480", "1x32x32", "4x64x64", 2)
    with pytest.raises(InputError, match="no usable tensorrt_profiles"):
        trt.manifest_profiles(manifest)  # the tiny export's manifest has none


def test_profile_limits_come_from_the_manifest(manifest):
    from dataclasses import replace

    image = replace(manifest, tensorrt_profiles={
        "min": {"image": [1, 3, 32, 32], "noise": [1, 1, 4, 4, 4]},
        "opt": {"image": [1, 3, 64, 64], "noise": [1, 2, 4, 8, 8]},
        "max": {"image": [4, 3, 128, 128], "noise": [4, 8, 4, 16, 16]}})  # fmt: skip
    (profile,) = trt.manifest_profiles(image)
    assert profile.shapes["noise"][2] == (4, 8, 4, 16, 16)
    trt.cli_profile(image, "1x32x32", "1x32x32", "1x32x32", ensemble=8)
    with pytest.raises(InputError, match="E = 9 exceeds what this export allows \\(8"):
        trt.cli_profile(image, "1x32x32", "1x32x32", "1x32x32", ensemble=9)
    video = replace(manifest, geometry=with_geometry(frame_axis=1), tensorrt_profiles={
        "min": {"image": [1, 2, 3, 32, 32], "noise": [1, 1, 2, 4, 4, 4]},
        "opt": {"image": [1, 4, 3, 64, 64], "noise": [1, 2, 4, 4, 8, 8]},
        "max": {"image": [1, 4, 3, 128, 128], "noise": [1, 8, 4, 4, 16, 16]}})  # fmt: skip
    clip = trt.cli_profile(video, "1x2x32x32", "1x4x32x32", "1x4x64x64", ensemble=2)
    assert clip.shapes["image"][2] == (1, 4, 3, 64, 64) and clip.shapes["noise"][2] == (1, 2, 4, 4, 8, 8)
    with pytest.raises(InputError, match="frames 2..5 are outside what this export takes \\(2..4\\)"):
        trt.cli_profile(video, "1x2x32x32", "1x4x32x32", "1x5x64x64", ensemble=2)
    with pytest.raises(InputError, match="BATCHxFRAMESxHEIGHTxWIDTH"):
        trt.cli_profile(video, "1x32x32", "1x32x32", "1x32x32", ensemble=2)
    broken = replace(image, tensorrt_profiles={**image.tensorrt_profiles,
                                               "opt": {"image": [1, 3, 16, 16], "noise": [1, 2, 4, 2, 2]}})
    with pytest.raises(InputError, match="manifest's tensorrt_profiles cannot be built.*give --min"):
        trt.manifest_profiles(broken)


def test_choose_profile_prefers_the_active_one_and_names_the_ranges():
    ranges = [{"image": ((1, 3, 32, 32), (2, 3, 64, 64))}, {"image": ((1, 3, 64, 64), (2, 3, 128, 128))}]
    assert trt.choose_profile(ranges, {"image": (1, 3, 48, 48)}) == 0
    assert trt.choose_profile(ranges, {"image": (1, 3, 64, 64)}) == 0
    assert trt.choose_profile(ranges, {"image": (1, 3, 64, 64)}, prefer=1) == 1
    assert trt.choose_profile(ranges, {"image": (2, 3, 96, 128)}, prefer=0) == 1
    ranges_named = (r"holds image \(3, 3, 64, 64\).*profile 0: image \(1, 3, 32, 32\)\.\.\(2, 3, 64, 64\) \| "
                    r"profile 1: image \(1, 3, 64, 64\)\.\.\(2, 3, 128, 128\)")
    with pytest.raises(InputError, match=ranges_named):
        trt.choose_profile(ranges, {"image": (3, 3, 64, 64)})


# -- flavours ------------------------------------------------------------------------------------------


def test_no_tensorrt_of_either_flavour_is_a_clear_error(monkeypatch, export_dir):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # None in sys.modules makes the import fail
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(BackendError) as caught:
        trt.choose_flavor("auto")
    assert "ditf-runtime[tensorrt-rtx]" in str(caught.value) and "ditf-runtime[tensorrt]" in str(caught.value)
    result = CliRunner().invoke(main, ["build-engine", str(export_dir), "--min", "1x32x32", "--opt", "1x32x32",
                                       "--max", "1x64x64"])  # fmt: skip
    assert result.exit_code == 1 and "no TensorRT is installed here" in result.output
    assert "Traceback" not in result.output and not (export_dir / "engines").exists()
    rtx = CliRunner().invoke(main, ["build-engine", str(export_dir), "--tensorrt", "rtx", "--min", "1x32x32",
                                    "--opt", "1x32x32", "--max", "1x64x64"])  # fmt: skip
    assert rtx.exit_code == 1 and "TensorRT-RTX is not installed here" in rtx.output


def test_enterprise_without_a_gpu_is_refused(monkeypatch, export_dir):
    """`tensorrt` present (a bare module object: only its import is needed) but no CUDA GPU."""
    if trt.gpu_or_none() is not None:
        pytest.skip("this machine has a CUDA GPU")
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    result = CliRunner().invoke(main, ["build-engine", str(export_dir), "--tensorrt", "enterprise",
                                       "--min", "1x32x32", "--opt", "1x32x32", "--max", "1x64x64"])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "--tensorrt enterprise builds on the GPU that will run the engine, and this machine has none" \
        in result.output
    assert "--tensorrt rtx" in result.output and not (export_dir / "engines").exists()
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # auto, with TensorRT but no GPU and no TensorRT-RTX
    with pytest.raises(BackendError, match="TensorRT is installed here, but it builds on the GPU .* has none"):
        trt.choose_flavor("auto")


def test_engines_need_a_gpu_to_load(export_dir):
    import ditf_runtime

    if trt.gpu_or_none() is not None:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(BackendError, match="TensorRT engines run on a CUDA GPU, and this machine has none"):
        ditf_runtime.load(export_dir, backend="tensorrt", device="cuda")
    with ditf_runtime.load(export_dir, backend="auto", device="cpu") as extractor:
        assert extractor.backend == "onnxruntime"
    if trt.installed(trt.RTX):  # without a GPU, --tensorrt auto builds with TensorRT-RTX
        assert trt.choose_flavor("auto") is trt.RTX


# -- the runner (stand-in: host-side logic only) ------------------------------------------------------

TWO_PROFILES = [
    {"image": ((1, 3, 32, 32), (1, 3, 48, 48), (2, 3, 64, 64)),
     "noise": ((1, 1, 4, 4, 4), (1, 2, 4, 6, 6), (2, 4, 4, 8, 8))},
    {"image": ((1, 3, 64, 64), (1, 3, 96, 96), (2, 3, 128, 128)),
     "noise": ((1, 1, 4, 8, 8), (1, 2, 4, 12, 12), (2, 4, 4, 16, 16))},
]  # fmt: skip


def _feed(batch, height, width, ensemble=2, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, 1, (batch, 3, height, width)).astype(np.float32)
    noise = rng.standard_normal((batch, ensemble, 4, height // 8, width // 8)).astype(np.float32)
    return {"image": image, "noise": noise}


def test_runner_chooses_and_switches_profiles(monkeypatch, manifest, export_dir):
    runner, engine, cuda = stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES)
    with runner:
        for batch, height, width in [(1, 32, 48), (2, 96, 128), (1, 64, 64), (2, 48, 32)]:
            feed = _feed(batch, height, width, seed=height)
            got = runner.infer(feed)["features"]
            np.testing.assert_allclose(got, tiny_reference(export_dir, feed["image"], feed["noise"]), atol=1e-6)
        # 64x64 lies in both: the active profile (1) is kept; 48x32 needs profile 0 again
        assert engine.contexts[0].switches == [1, 0]
        runs = engine.executions
        with pytest.raises(InputError, match=r"no optimisation profile.*profile 0: image \(1, 3, 32, 32\)"):
            runner.infer(_feed(1, 160, 160))
        assert engine.executions == runs  # refused before anything ran
    assert cuda.allocations == {} and cuda.violations == []


def _hammer(runner, feeds, threads=4, rounds=6):
    answers, errors = {}, []

    def work(worker: int) -> None:
        try:
            for r in range(rounds):
                key = (worker + r) % len(feeds)
                answers[(worker, r)] = (key, runner.infer(feeds[key])["features"])
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return answers, errors


SHAPES = [(1, 32, 48), (2, 64, 64), (2, 96, 128), (1, 128, 64), (2, 48, 32)]


def test_one_runner_hammered_from_threads_gives_single_threaded_answers(monkeypatch, manifest):
    feeds = [_feed(*shape, seed=i) for i, shape in enumerate(SHAPES)]
    runner, engine, cuda = stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES)
    with runner:
        single = [runner.infer(feed)["features"] for feed in feeds]
        answers, errors = _hammer(runner, feeds)
    assert errors == []
    assert len(answers) == 24
    for key, got in answers.values():
        np.testing.assert_array_equal(got, single[key])
    assert cuda.violations == [] and cuda.allocations == {}  # buffers grew under load; none freed in flight


def test_the_thread_check_catches_an_unlocked_runner(monkeypatch, manifest):
    """The same hammering without the runner's lock mixes requests up: the check above can fail."""
    feeds = [_feed(*shape, seed=i) for i, shape in enumerate(SHAPES)]
    runner, engine, cuda = stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES)
    with runner:
        single = [runner.infer(feed)["features"] for feed in feeds]
        runner._lock = nullcontext()
        answers, errors = _hammer(runner, feeds)
    wrong = sum(not np.array_equal(got, single[key]) for key, got in answers.values())
    assert errors or wrong or cuda.violations


def test_buffer_pool_grows_and_frees():
    cuda = StandInCuda()
    pool = DeviceBufferPool(cuda)
    small = pool.get("image", 64)
    assert pool.get("image", 32) == small  # big enough: reused
    large = pool.get("image", 4096)
    assert large != small and small not in cuda.allocations and len(cuda.allocations) == 1
    cuda.cudaMemcpyAsync(large, 0, 16, 1, StreamHandle(7))  # work queued on the stream that writes `large`
    pool.get("image", 8192)  # growing now would free memory in flight: the stand-in records it
    assert cuda.violations and "while queued work still uses it" in cuda.violations[0]
    cuda.queue.clear()
    pool.free_all()
    assert cuda.allocations == {}


def test_engine_plan_is_checked_against_its_record_once_then_trusted(monkeypatch, manifest, export_dir, tmp_path):
    """A plan is GBs for a big model: hashed against engine.json's plan_sha256 once, then trusted through the
    export's stamp while its stat is unchanged; a changed plan is re-hashed and refused; no record, refused."""
    import json

    from ditf_runtime import verification
    from ditf_runtime.files import sha256_file

    export = tmp_path / "export"
    export.mkdir()
    for item in export_dir.iterdir():
        if item.name != verification.STAMP_FILE:
            (export / item.name).symlink_to(item)
    folder = export / "engines" / "rtx1.7.1-sm80_86_89_120"
    folder.mkdir(parents=True)
    plan = folder / "model.plan"
    plan.write_bytes(b"plan bytes")
    record = _record(manifest, plan_sha256=sha256_file(plan), plan_bytes=plan.stat().st_size)
    loader = trt.EngineFromPath(export, manifest)
    loader._check_plan(plan, record, trt.RTX)
    stamp = json.loads((export / verification.STAMP_FILE).read_text())["files"]
    assert stamp[f"engines/{folder.name}/model.plan"]["sha256"] == record["plan_sha256"]

    hashed = []
    monkeypatch.setattr(verification, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    loader._check_plan(plan, record, trt.RTX)
    assert hashed == []  # trusted from the stamp
    plan.write_bytes(b"plan BYTES")  # same size, other content
    with pytest.raises(BackendError, match=r"sha256 .* does not match its engine.json .* rebuild it with `ditf "
                                           r"build-engine .* --tensorrt rtx --force`"):
        loader._check_plan(plan, record, trt.RTX)
    assert hashed == [plan]
    record.pop("plan_sha256")
    with pytest.raises(BackendError, match="records no plan_sha256: every file the runtime opens needs"):
        loader._check_plan(plan, record, trt.RTX)


# -- issue 23: lifetimes, the runtime cache, the device, the memory guard (stand-in) ---------------------------

TWO_GPUS = (("NVIDIA H100 80GB HBM3", 9, 0), ("NVIDIA GeForce RTX 4090", 8, 9))


def test_rtx_runtime_config_outlives_the_context_and_release_goes_in_reverse(monkeypatch, manifest, tmp_path):
    """The context holds raw pointers to its IRuntimeConfig and that config's runtime cache: both must live as long
    as the context, then go before the engine, which goes before the runtime."""
    import gc

    runner, engine, cuda = stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES, rtx=True,
                                           folder=tmp_path, device=RTX_4090)
    released, violations = engine.released, engine.violations
    del engine
    with runner:
        gc.collect()  # a config kept only as a local would be gone now
        runner.infer(_feed(1, 32, 32))
    gc.collect()
    assert violations == []
    assert released == ["context", "runtime_config", "runtime_cache", "engine", "runtime"]


def test_rtx_runtime_cache_is_recorded_and_a_changed_one_is_not_loaded(monkeypatch, manifest, tmp_path):
    """The cache beside the plan is written with its sha256 (runtime-sm89.cache.json) and read only when it
    matches: a changed or unrecorded file is compiled again (a warning), never handed to TensorRT-RTX."""
    import json

    def start():
        runner, engine, _ = stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES, rtx=True,
                                            folder=tmp_path, device=RTX_4090)
        runner.activate()
        runner.infer(_feed(1, 32, 32))
        return runner, runner._runtime_cache

    runner, cache = start()
    assert cache.loaded == []  # nothing there yet
    runner.deactivate()
    path = tmp_path / "runtime-sm89.cache"
    record = json.loads((tmp_path / "runtime-sm89.cache.json").read_text())
    from ditf_runtime.files import sha256_file

    assert record["sha256"] == sha256_file(path) and record["bytes"] == path.stat().st_size
    assert record["gpu"] == RTX_4090.gpu_name and record["compute_capability"] == "8.9"
    runner, cache = start()
    assert cache.loaded == [path.read_bytes()]  # recorded and unchanged: loaded
    runner.deactivate()
    path.write_bytes(path.read_bytes() + b"0")  # changed after it was recorded
    with pytest.warns(UserWarning, match="does not match the sha256 recorded"):
        runner, cache = start()
    assert cache.loaded == []
    runner.deactivate()
    (tmp_path / "runtime-sm89.cache.json").unlink()
    with pytest.warns(UserWarning, match="ignoring the TensorRT-RTX runtime cache"):
        runner, cache = start()
    assert cache.loaded == []
    runner.deactivate()


def test_the_engine_runs_on_the_device_it_was_checked_against(monkeypatch, manifest, tmp_path):
    """cuda:1 (or CUDA_VISIBLE_DEVICES' second GPU): the record is checked against device 1, the cache is named for
    it, and every thread that runs the engine makes device 1 current first (the current device is per thread)."""
    from ditf_runtime.backends.trt import flavors

    RTX_4090_ON_1 = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9", 1)  # noqa: N806
    cuda = StandInCuda(gpus=TWO_GPUS)
    monkeypatch.setattr(flavors, "import_cudart", lambda: cuda)
    assert trt.current_device() == DeviceInfo("NVIDIA H100 80GB HBM3", "9.0", 0)
    assert trt.current_device(1) == RTX_4090_ON_1
    cuda.cudaSetDevice(1)  # what cudaSetDevice (or a framework) made current on this thread
    assert trt.current_device() == RTX_4090_ON_1
    cuda.cudaSetDevice(0)
    with pytest.raises(BackendError, match="CUDA device 2 does not exist: this process sees 2 GPU"):
        trt.current_device(2)
    assert trt.flavors.parse_device("cuda:1") == 1 and trt.flavors.parse_device("cuda") is None
    with pytest.raises(BackendError, match="use 'cuda' .* or 'cuda:N'"):
        trt.flavors.parse_device("gpu1")

    runner, engine, _ = stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES, rtx=True, folder=tmp_path,
                                        device=RTX_4090_ON_1, cuda=cuda)
    feeds = [_feed(*shape, seed=i) for i, shape in enumerate(SHAPES)]
    with runner:
        answers, errors = _hammer(runner, feeds, threads=3, rounds=2)  # fresh threads: current device 0
    assert errors == [] and engine.violations == []
    assert (tmp_path / "runtime-sm89.cache").is_file()  # named for device 1 (sm89), not device 0 (sm90)


def test_memory_guard_budgets_engines_by_what_they_report(monkeypatch, manifest, export_dir):
    """--backend tensorrt: the context already holds the largest profile's activation memory and the weights
    when a run is checked, and engines fuse attention. Free GPU memory is compared with what the call still
    allocates (its I/O buffers), --max-memory with weights + context memory + I/O, as the engine reports them."""
    from ditf_runtime import host_memory, memory
    from ditf_runtime.extractor import Extractor

    runner, engine, cuda = stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES)
    free = {"bytes": 8 << 20}  # 8 MiB free after the context took its memory: less than any dense estimate
    monkeypatch.setattr(host_memory, "_free_gpu_memory", lambda: free["bytes"])
    feed = _feed(2, 128, 128, ensemble=4)
    dense = memory.estimate(manifest, memory.RunShape(2, 4, 128, 128))
    assert dense.activations > free["bytes"]  # what the guard used to compare: refused
    with Extractor(export_dir, manifest, runner) as extractor:
        assert extractor.device == "cuda"
        features = extractor.run(feed["image"], feed["noise"])
        np.testing.assert_allclose(features, tiny_reference(export_dir, feed["image"], feed["noise"]), atol=1e-6)
        need = runner.memory_need(manifest, memory.RunShape(2, 4, 128, 128))
        io = sum(a.nbytes for a in feed.values()) + features.nbytes
        assert need == memory.EngineMemory(weights=3 << 20, activations=2 << 20, io=io, io_new=0)  # pooled now
        free["bytes"] = 1024  # a larger call must allocate its buffers: refused, with the engine's numbers
        with pytest.raises(memory.MemoryBudgetError, match=r"on TensorRT needs .*the engine reports weights 3 MiB "
                                                           r"\+ context memory 2 MiB.*more than free GPU memory"):
            extractor.run(*_feed(2, 128, 128, ensemble=8).values())
    with Extractor(export_dir, manifest, stand_in_runner(monkeypatch, manifest.geometry, TWO_PROFILES)[0],
                   max_memory=5 << 20) as capped:  # weights + context memory + I/O > 5 MiB
        with pytest.raises(memory.MemoryBudgetError, match="more than the --max-memory budget"):
            capped.run(feed["image"], feed["noise"])

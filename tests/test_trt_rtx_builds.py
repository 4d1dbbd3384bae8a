"""Real TensorRT-RTX engines, built ahead of time on this CPU machine (no stand-in anywhere here).

flux-tiny and one tiny export of every other family (SD3, PixArt, DiT, and the video families Latte, Wan and CogVideoX)
are built once per session through `ditf build-engine --tensorrt rtx`, at every precision the
family exports (video: fp32 only here; their bf16/fp16 graphs are not built); flux-tiny's fp8 export for compute capabilities 8.9 and 12.0 only. TensorRT-RTX needs a GPU only to deserialise and run an engine
(test_precision_tensorrt.py, skipped without one); everything before that is checked here: the
parse, the AOT build, engine.json, the parser's own errors, and the loader's refusals.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from ditf_runtime.backends import trt
from ditf_runtime.backends.trt import DeviceInfo, EngineFromPath
from ditf_runtime.cli import main
from ditf_runtime.errors import BackendError, InputError
from ditf_runtime.manifest import Manifest, sha256_file
from runtime_graphs import build_tiny_export
from trt_helpers import linked_copy

pytestmark = pytest.mark.skipif(
    not trt.installed(trt.RTX),
    reason="TensorRT-RTX is not installed (`make setup` installs ditf-runtime[tensorrt-rtx])",
)

EXAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# INT8 is built for flux-tiny only: the other tiny random families' features are near-constant, so their INT8
# exports have no decisive keypoint transfer to be judged on and refuse themselves (test below).
CASES = ([(family, p) for family in ("flux", "sd3", "pixart", "dit") for p in PRECISIONS if p != "int8" or family == "flux"]
         + [("latte", "fp32"), ("wan", "fp32"), ("cogvideox", "fp32")])
IMAGE_PROFILE = ["--min", "1x64x64", "--opt", "1x128x128", "--max", "2x256x256"]
VIDEO_PROFILE = ["--min", "1x2x64x64", "--opt", "1x4x128x128", "--max", "1x4x256x256"]
# causal 3-D VAEs (Wan, CogVideoX): clips of 1 + 4k frames, 1 + k latent frames in noise and features
CAUSAL_VIDEO_PROFILE = ["--min", "1x5x64x64", "--opt", "1x5x128x128", "--max", "1x9x256x256"]
PROFILES = {"latte": VIDEO_PROFILE, "wan": CAUSAL_VIDEO_PROFILE, "cogvideox": CAUSAL_VIDEO_PROFILE}
DEFAULT_FOLDER = "rtx{v}-sm80_86_89_120"
RTX_4090 = DeviceInfo("NVIDIA GeForce RTX 4090", "8.9")


def rtx_version() -> str:
    return trt.import_flavor(trt.RTX).__version__


def build(export: Path, *args: str):
    return CliRunner().invoke(main, ["build-engine", str(export), "--tensorrt", "rtx", *args])


@pytest.fixture(scope="session")
def family_export(request, tmp_path_factory, family_tiny_dir):
    """(family, precision) -> a tiny export; flux comes from conftest's fixtures, the others are made here.

    --image-size 256 keeps the manifest's own TensorRT profile valid (its minimum side is 256).
    """
    from ditf_export.export import ExportRequest, export

    root = tmp_path_factory.mktemp("rtx-exports")
    made: dict[tuple[str, str], Path] = {}

    def get(family: str, precision: str) -> Path:
        if family == "flux":
            if precision == "fp32":
                return request.getfixturevalue("flux_tiny_export")
            return request.getfixturevalue("flux_tiny_precision_export")(precision)
        if (family, precision) not in made:
            out = root / f"{family}-{precision}"
            export(ExportRequest(model=str(family_tiny_dir(family)), out=out, layer=1, ensemble=2, image_size=256,
                                 precision=precision, calib_images=EXAMPLE_IMAGES if precision == "int8" else None))
            made[(family, precision)] = out
        return made[(family, precision)]

    return get


@pytest.fixture(scope="session")
def rtx_engine(family_export, tmp_path_factory):
    """(family, precision) -> (export copy, engine folder, CLI result): each built once per session."""
    root = tmp_path_factory.mktemp("rtx-engines")
    built: dict[tuple[str, str], tuple[Path, Path, object]] = {}

    def get(family: str, precision: str):
        if (family, precision) not in built:
            export = linked_copy(family_export(family, precision), root / f"{family}-{precision}")
            result = build(export, *PROFILES.get(family, IMAGE_PROFILE))
            assert result.exit_code == 0, result.output
            folder = Path(result.stdout.strip().splitlines()[-1])
            built[(family, precision)] = (export, folder, result)
        return built[(family, precision)]

    return get


@pytest.mark.parametrize("family,precision", CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_cli_builds_a_real_engine_with_a_complete_record(family, precision, rtx_engine):
    export, folder, result = rtx_engine(family, precision)
    manifest = Manifest.load(export)
    assert folder == export / "engines" / DEFAULT_FOLDER.format(v=".".join(rtx_version().split(".")[:3]))
    assert "building with TensorRT-RTX" in result.stderr and "parsing" in result.stderr
    record = trt.read_engine_record(folder)
    assert record["flavor"] == "tensorrt-rtx" and record["version"] == rtx_version()
    assert record["targets"] == ["sm80", "sm86", "sm89", "sm120"] and record["targets_default"] is True
    assert record["gpu"] is None and record["precision"] == manifest.precision == precision
    assert record["strongly_typed"] is True and record["tf32"] is False
    assert record["onnx_sha256"] == {n: manifest.files[n]["sha256"] for n in ("model.onnx", "model.onnx.data")}
    plan = (folder / "model.plan").read_bytes()
    assert record["plan_bytes"] == len(plan) > 100_000 and record["plan_sha256"] == sha256_file(folder / "model.plan")
    assert record["build_seconds"] > 0 and record["built_at"] and record["timing_cache"] is None
    assert record["profiles_from"] == "command line" and record["ensemble"] == 2
    (profile,) = record["profiles"]
    if family == "latte":
        assert profile["image"]["max"] == [1, 4, 3, 256, 256]
        assert profile["noise"]["max"] == [1, 2, 4, manifest.geometry.latent_channels, 32, 32]
    elif family in ("wan", "cogvideox"):  # 9 frames -> 1 + 8/4 = 3 latent frames
        assert manifest.geometry.frame_stride == 4
        assert profile["image"] == {"min": [1, 5, 3, 64, 64], "opt": [1, 5, 3, 128, 128], "max": [1, 9, 3, 256, 256]}
        assert profile["noise"]["max"] == [1, 2, 3, manifest.geometry.latent_channels, 32, 32]
    else:
        assert profile["image"] == {"min": [1, 3, 64, 64], "opt": [1, 3, 128, 128], "max": [2, 3, 256, 256]}
        assert profile["noise"]["max"] == [2, 2, manifest.geometry.latent_channels, 32, 32]
    # TensorRT-RTX reads the plan's header: well formed (only the GPU check fails on this machine)
    rt = trt.import_flavor(trt.RTX)
    runtime = rt.Runtime(trt.flavors.collecting_logger(rt))
    validity, diagnostics = runtime.get_engine_validity(plan)
    assert not int(diagnostics) & int(rt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)
    _, garbage = runtime.get_engine_validity(b"\0" * len(plan[:4096]))
    assert int(garbage) & int(rt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)  # the check above can fail


@pytest.mark.parametrize("precision", PRECISIONS)
def test_dinov2_builds_with_an_image_only_profile(precision, dinov2_tiny_export, tmp_path):
    """DINOv2 (issue 12) takes no noise: its profiles hold the image alone, from the command line (sides
    multiples of 14) or from its manifest; no E is recorded."""
    export = linked_copy(dinov2_tiny_export(precision=precision), tmp_path / f"dinov2-{precision}")
    result = build(export, "--min", "1x56x56", "--opt", "1x112x112", "--max", "2x252x252")
    assert result.exit_code == 0, result.output
    record = trt.read_engine_record(Path(result.stdout.strip().splitlines()[-1]))
    assert record["precision"] == precision and record["ensemble"] is None
    assert record["profiles"] == [{"image": {"min": [1, 3, 56, 56], "opt": [1, 3, 112, 112], "max": [2, 3, 252, 252]}}]
    assert record["plan_bytes"] > 100_000
    if precision == "fp32":
        default = build(export, "--force")
        assert default.exit_code == 0, default.output
        (profile,) = trt.read_engine_record(Path(default.stdout.strip().splitlines()[-1]))["profiles"]
        assert profile == {"image": {k: Manifest.load(export).tensorrt_profiles[k]["image"]
                                     for k in ("min", "opt", "max")}}
        bad = build(export, "--force", "--min", "1x64x64", "--opt", "1x128x128", "--max", "2x256x256")
        assert bad.exit_code == 1 and "multiples of 14" in bad.output


def test_fp8_builds_for_sm89_and_sm120_and_is_refused_below(rtx_engine, family_export, tmp_path):
    """FP8 E4M3 Q/DQ runs on compute capability >= 8.9: without --compute-capability the build targets the
    builder's 8.9 and 12.0 (its own default would add 8.0 and 8.6); asking for 7.5, 8.0 or 8.6 is refused
    before TensorRT-RTX starts (it would fail with "Cannot compile for target(s) sm86, because the model
    contains HW-specific datatypes: fp8_e4m3"), naming the targets that can."""
    export, folder, result = rtx_engine("flux", "fp8")
    assert folder.name == f"rtx{'.'.join(rtx_version().split('.')[:3])}-sm89_120"
    record = trt.read_engine_record(folder)
    assert record["precision"] == Manifest.load(export).precision == "fp8" and record["strongly_typed"] is True
    assert record["targets"] == ["sm89", "sm120"] and record["targets_default"] is False
    assert record["plan_bytes"] > 100_000 and "compute capabilities 8.9, 12.0" in result.stderr
    work = linked_copy(family_export("flux", "fp8"), tmp_path / "flux-fp8")
    for old in ("7.5", "8.0", "8.6"):
        refused = build(work, "--compute-capability", old, "--compute-capability", "8.9", *IMAGE_PROFILE)
        assert refused.exit_code == 1, refused.output
        assert (f"this export is fp8 (FP8 E4M3 Q/DQ: Ada, Hopper and Blackwell GPUs): it runs on compute capability "
                f"8.9 and later, not on {old}. TensorRT-RTX {rtx_version()} builds it for 8.9, 12.0, 12.1 "
                "(--compute-capability 8.9 --compute-capability 12.0 --compute-capability 12.1)") in refused.output
        assert "export --precision int8, bf16 or fp16" in refused.output and "Traceback" not in refused.output
    assert not (work / "engines").exists() or not any((work / "engines").iterdir())


@pytest.mark.parametrize("gpu,capability,refused", [("NVIDIA A100-SXM4-80GB", "8.0", True),
                                                    ("NVIDIA GeForce RTX 3090", "8.6", True),
                                                    ("Tesla T4", "7.5", True),
                                                    ("NVIDIA L4", "8.9", False), ("NVIDIA H100 80GB HBM3", "9.0", False),
                                                    ("NVIDIA GeForce RTX 5090", "12.0", False)])
def test_tensorrt_enterprise_refuses_fp8_by_the_cards_capability(gpu, capability, refused):
    """TensorRT builds on the serving GPU: an fp8 export is refused there below 8.9 (any other precision is not)."""
    from ditf_runtime.backends.trt.builder import check_device_precision
    from ditf_runtime.precision import Precision

    device = DeviceInfo(gpu, capability)
    for precision in Precision:
        if precision != Precision.FP8 or not refused:
            check_device_precision(device, precision, "TensorRT")
    if refused:
        with pytest.raises(InputError, match=f"runs it on compute capability 8.9 and later .* and {gpu} is "
                                             f"{capability}. Export --precision int8, bf16 or fp16 for this GPU"):
            check_device_precision(device, Precision.FP8, "TensorRT")


def test_default_profiles_come_from_the_manifest_for_images_and_video(family_export, tmp_path):
    for family in ("dit", "latte"):
        export = linked_copy(family_export(family, "fp32"), tmp_path / family)
        manifest = Manifest.load(export)
        result = build(export, "--compute-capability", "8.6", "--compute-capability", "12.0")
        assert result.exit_code == 0, result.output
        folder = Path(result.stdout.splitlines()[-1])
        assert folder.name == f"rtx{'.'.join(rtx_version().split('.')[:3])}-sm86_120"
        record = trt.read_engine_record(folder)
        assert record["targets"] == ["sm86", "sm120"] and record["targets_default"] is False
        assert record["profiles_from"] == "manifest" and record["ensemble"] is None  # E is a range: 1..8
        expected = manifest.tensorrt_profiles
        (profile,) = record["profiles"]
        for name in ("image", "noise"):
            for k in ("min", "opt", "max"):
                assert profile[name][k] == expected[k][name]
        if family == "latte":  # the frame axis: image [B, F, 3, H, W]
            assert len(profile["image"]["max"]) == 5 and profile["image"]["max"][1] == expected["max"]["image"][1]


def test_targets_the_builder_lacks_are_refused_with_its_own_words(family_export, tmp_path):
    export = linked_copy(family_export("sd3", "fp32"), tmp_path / "sd3")
    no_sm90 = build(export, "--compute-capability", "9.0", *IMAGE_PROFILE)
    assert no_sm90.exit_code == 1
    assert f"TensorRT-RTX {rtx_version()} has no target for compute capability 9.0: it builds for 7.5, 8.0, 8.6, " \
           "8.9, 12.0, 12.1" in no_sm90.output  # fmt: skip
    turing = build(export, "--compute-capability", "7.5", *IMAGE_PROFILE)  # FP32 GEMMs have no Turing kernels
    assert turing.exit_code == 1
    assert "TensorRT-RTX could not build the engine" in turing.output
    assert "for Turing (SM75): FP32 GEMM is not supported" in turing.output  # TensorRT-RTX's own error
    assert not [p for p in (export / "engines").iterdir()]  # nothing left, not even a temporary folder


def test_rebuild_needs_force_and_rtx_uses_no_timing_cache(rtx_engine, tmp_path):
    export, folder, _ = rtx_engine("flux", "fp32")
    work = linked_copy(export, tmp_path / "flux")
    shutil.copytree(folder, work / "engines" / folder.name)
    before = (work / "engines" / folder.name / "engine.json").read_text()
    again = build(work, *IMAGE_PROFILE)
    assert again.exit_code == 1 and "exists: pass --force to replace it" in again.output
    assert (work / "engines" / folder.name / "engine.json").read_text() == before
    cache = build(work, "--timing-cache", str(tmp_path / "t.cache"), *IMAGE_PROFILE)
    assert cache.exit_code == 1 and "--timing-cache is for --tensorrt enterprise" in cache.output
    forced = build(work, "--force", *IMAGE_PROFILE)
    assert forced.exit_code == 0, forced.output
    record = trt.read_engine_record(work / "engines" / folder.name)
    assert record["plan_sha256"] == sha256_file(work / "engines" / folder.name / "model.plan")
    assert record["timing_cache"] is None and "timing-cache calls are no-ops" in record["notes"][0]
    assert not (work / "engines" / folder.name / "timing.cache").exists()
    assert sorted(p.name for p in (work / "engines").iterdir()) == [folder.name]  # the old one swapped out


def _tiny_with(tmp_path: Path, name: str, rewrite) -> Path:
    """The runtime's tiny export, model.onnx rewritten and the manifest re-hashed: consistent, but broken."""
    from ditf_runtime.manifest import file_record

    export = tmp_path / name
    manifest = build_tiny_export(export)
    rewrite(export / "model.onnx")
    files = {**manifest.files, "model.onnx": file_record(export / "model.onnx")}
    Manifest(**{**manifest.__dict__, "files": files}).save(export)
    return export


def _custom_op(path: Path) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tanh = next(n for n in model.graph.node if n.op_type == "Tanh")
    tanh.op_type, tanh.domain, tanh.name = "FancyActivation", "com.example", "head/fancy_activation"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(model, str(path))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_parser_errors_come_through_verbatim_with_the_node_name(tmp_path):
    small = ["--min", "1x64x64", "--opt", "1x64x64", "--max", "2x64x64"]
    custom = build(_tiny_with(tmp_path, "custom", _custom_op), *small)
    assert custom.exit_code == 1
    assert f"TensorRT-RTX {rtx_version()}'s ONNX parser rejected" in custom.output
    assert "node 'head/fancy_activation' (FancyActivation): In node " in custom.output
    assert "with name: head/fancy_activation and operator: FancyActivation (checkFallbackPluginImporter): " \
           "INVALID_NODE: creator && \"Plugin not found" in custom.output  # fmt: skip
    truncated = build(_tiny_with(tmp_path, "truncated", _truncate), *small)
    assert truncated.exit_code == 1
    assert "the file itself: (deserializeOnnxModel): MODEL_DESERIALIZE_FAILED: Assertion failed: " \
           "model->ParseFromCodedStream(&codedInput): Failed to parse the ONNX model." in truncated.output  # fmt: skip
    for name in ("custom", "truncated"):
        assert not any((tmp_path / name / "engines").iterdir())
    assert "Traceback" not in custom.output + truncated.output


def test_an_onnx_changed_after_export_is_refused_before_tensorrt_sees_it(tmp_path):
    export = tmp_path / "tiny"
    build_tiny_export(export)
    _truncate(export / "model.onnx")
    result = build(export, "--min", "1x64x64", "--opt", "1x64x64", "--max", "2x64x64")
    assert result.exit_code == 1 and "model.onnx has" in result.output and "re-export it" in result.output
    assert not (export / "engines").exists() or not any((export / "engines").iterdir())


def _engine_copy(rtx_engine, family, precision, dest: Path, into: Path | None = None) -> tuple[Path, Path]:
    """A writable copy of a built engine folder inside a linked copy of an export (`into`'s, if given)."""
    export, folder, _ = rtx_engine(family, precision)
    work = linked_copy(into or export, dest)
    copy = work / "engines" / folder.name
    shutil.copytree(folder, copy)
    return work, copy


def _edit(folder: Path, **changes) -> None:
    record = json.loads((folder / "engine.json").read_text())
    (folder / "engine.json").write_text(json.dumps({**record, **changes}))


def test_mismatched_engine_records_are_refused_before_deserialising(rtx_engine, tmp_path):
    work, folder = _engine_copy(rtx_engine, "flux", "fp16", tmp_path / "flux")
    manifest = Manifest.load(work)

    def locate(device=RTX_4090, **kw):
        return EngineFromPath(work, manifest, device=device, **kw).locate()

    assert locate() == (folder, trt.read_engine_record(folder))  # a consistent engine passes every check
    with pytest.raises(BackendError, match=r"no usable TensorRT engine for NVIDIA H100.*built for compute "
                                           r"capabilities 8.0, 8.6, 8.9, 12.0 and later; this GPU .* is 9.0"):
        locate(DeviceInfo("NVIDIA H100 80GB HBM3", "9.0"))
    record = trt.read_engine_record(folder)
    for changes, message in [
        ({"version": "1.6.1.120"}, f"built with TensorRT-RTX 1.6.1.120, this machine has {rtx_version()}"),
        ({"flavor": "tensorrt"}, "built with TensorRT, not installed here"),
        ({"targets": ["sm120"], "targets_default": False}, "built for compute capabilities 12.0; this GPU"),
        ({"onnx_sha256": {**record["onnx_sha256"], "model.onnx": "0" * 64}}, "built from a different model.onnx"),
    ]:
        _edit(folder, **changes)
        with pytest.raises(BackendError, match="no usable TensorRT engine") as caught:
            locate()
        assert message in str(caught.value) and "build one with `ditf build-engine" in str(caught.value)
        if changes.get("flavor") != "tensorrt":  # naming the folder checks its record directly
            with pytest.raises(BackendError, match=f"cannot be used: .*{message[:30]}.*--tensorrt rtx --force"):
                locate(engine=folder.name)
        _edit(folder, **record)


def test_an_engine_from_another_model_is_refused(rtx_engine, tmp_path):
    sd3_export, _, _ = rtx_engine("sd3", "fp32")
    work, folder = _engine_copy(rtx_engine, "sd3", "fp32", tmp_path / "mixed", into=rtx_engine("dit", "fp32")[0])
    with pytest.raises(BackendError, match="built from a different model.onnx.*different model.onnx.data"):
        EngineFromPath(work, Manifest.load(work), device=RTX_4090, engine=folder.name).locate()


def test_a_consistent_engine_reaches_tensorrt_rtx_which_needs_a_gpu(rtx_engine, tmp_path):
    """On this CPU machine TensorRT-RTX itself refuses to load: its words are passed on."""
    if trt.gpu_or_none() is not None:
        pytest.skip("this machine has a GPU: test_precision_tensorrt.py runs the engines")
    work, folder = _engine_copy(rtx_engine, "flux", "fp32", tmp_path / "flux")
    loader = EngineFromPath(work, Manifest.load(work), device=RTX_4090)
    # TensorRT-RTX's validity check, or the CUDA device query before it: either way, the driver's words
    with pytest.raises(BackendError, match="TensorRT-RTX reports the engine in .* invalid on this machine|CUDA call failed") as caught:
        loader()
    assert "CUDA driver version is insufficient for CUDA runtime version" in str(caught.value)
    assert loader.folder is None  # nothing was loaded


def _default_sigint() -> None:
    """A child inherits an ignored SIGINT; the build must see Ctrl-C as a user's terminal sends it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_build_leaves_nothing_that_looks_finished(family_export, tmp_path):
    export = linked_copy(family_export("flux", "fp32"), tmp_path / "flux")
    script = Path(sys.executable).parent / "ditf"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ditf_runtime.cli"]
    # A tiny build takes 1-3 s: on a loaded machine it could finish before the signal lands. Such a run
    # must then have written a whole engine; the cancellation itself has to be seen in one of 4 tries.
    for _ in range(4):
        process = subprocess.Popen(command + ["build-engine", str(export), "--tensorrt", "rtx", *IMAGE_PROFILE],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=_default_sigint)  # fmt: skip
        seen = []
        for line in process.stderr:  # interrupt as the build starts: it lands while parsing or building
            seen.append(line)
            if line.startswith("building with"):
                process.send_signal(signal.SIGINT)
                break
        stderr = "".join(seen) + process.stderr.read()
        code = process.wait(timeout=120)
        if code == 0:  # the build won the race: the engine is complete, and goes before the next try
            folder = Path(process.stdout.read().strip().splitlines()[-1])
            assert (folder / "engine.json").is_file() and (folder / "model.plan").is_file(), stderr
            shutil.rmtree(export / "engines")
            continue
        assert code == 130, stderr
        assert "interrupted: the build was cancelled and nothing was written" in stderr and process.stdout.read() == ""
        assert "Traceback" not in stderr and "FATAL" not in stderr
        assert not (export / "engines").exists() or list((export / "engines").iterdir()) == []
        break
    else:
        pytest.fail("every build finished before Ctrl-C reached it: the cancellation was never exercised "
                    f"(SIGINT in this process: {signal.getsignal(signal.SIGINT)!r})")


def test_triton_repo_refuses_an_rtx_engine_for_tensorrt_plan(rtx_engine, tmp_path):
    from ditf_runtime.serving.triton_repo import TritonOptions, write_model_repository

    work, folder = _engine_copy(rtx_engine, "flux", "fp32", tmp_path / "flux")
    with pytest.raises(InputError, match="TensorRT-RTX engine, and Triton's tensorrt_plan platform loads only"):
        write_model_repository(work, tmp_path / "repo", TritonOptions(backend="tensorrt"))
    assert not (tmp_path / "repo").exists()
    repo = write_model_repository(work, tmp_path / "local",
                                  TritonOptions(backend="tensorrt", pipeline="local", graph=False))
    assert sorted(p.name for p in repo.iterdir()) == ["extract", "match"]
    assert 'key: "ditf_ensemble"\n  value: { string_value: "2" }' in (repo / "extract" / "config.pbtxt").read_text()


@pytest.mark.parametrize("family,precision", [("flux", p) for p in PRECISIONS] + [("latte", "fp32"), ("wan", "fp32"), ("cogvideox", "fp32")],
                         ids=[f"flux-{p}" for p in PRECISIONS] + ["latte-fp32", "wan-fp32", "cogvideox-fp32"])
def test_an_engine_of_the_manifest_profile_holds_the_reference(family, precision, family_export, tmp_path):
    """Issue 23: `ditf build-engine EXPORT` (the manifest's own profile) must take reference.safetensors' inputs, at
    every precision, so `ditf verify EXPORT --backend tensorrt` and `verify_reference()` can run the engine. (The
    reference used to be the random parity inputs, 64x96 at E = 3, below the profile's smallest side; for video a
    batch of 2 clips where the profile takes one.)"""
    from safetensors.numpy import load_file

    export = linked_copy(family_export(family, precision), tmp_path / f"{family}-{precision}")
    result = build(export)
    assert result.exit_code == 0, result.output
    record = trt.read_engine_record(Path(result.stdout.strip().splitlines()[-1]))
    assert record["profiles_from"] == "manifest"
    reference = load_file(str(export / "reference.safetensors"))
    shapes = {name: reference[name].shape for name in record["profiles"][0]}
    assert trt.choose_profile(trt.record_ranges(record), shapes) == 0
    verify = CliRunner().invoke(main, ["verify", str(export), "--backend", "tensorrt"])
    if trt.gpu_or_none() is None:  # here it gets as far as needing the GPU
        assert verify.exit_code == 1 and "TensorRT engines run on a CUDA GPU" in verify.output, verify.output
    else:
        assert verify.exit_code == 0, verify.output


def test_int8_of_a_tiny_random_family_refuses_for_lack_of_decisive_evidence(family_tiny_dir, tmp_path):
    """Near-constant features agree with anything: no decisive keypoint transfer, so the INT8 gate refuses."""
    from ditf_export.errors import ParityError
    from ditf_export.export import ExportRequest, export

    with pytest.raises(ParityError, match="nothing decisive"):
        export(ExportRequest(model=str(family_tiny_dir("sd3")), out=tmp_path / "sd3-int8", layer=1, ensemble=2,
                             image_size=256, precision="int8", calib_images=EXAMPLE_IMAGES))
    assert not (tmp_path / "sd3-int8").exists()

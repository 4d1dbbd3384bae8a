"""`ditf-export --precision fp16|bf16|int8`: one precision per folder, FP32 graph I/O, parity in the manifest,
and the refusals (FP16 overflow, int8 without calibration images, bad calibration folders).

Stated thresholds, against the FP32 PyTorch reference on the same inputs, after channel discard:
fp16 and bf16 per-token cosine >= 0.999 and NN agreement >= 0.98; int8 see tests/test_calib_int8.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto

from ditf_runtime.manifest import Manifest
from ditf_runtime.parity import compare

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _invoke(args):
    from ditf_export.cli import main

    return CliRunner().invoke(main, args)


def _nothing_left(parent: Path, name: str) -> bool:
    return not any(p.name.startswith((name, f".{name}")) for p in parent.iterdir())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_exports_pass_their_thresholds(flux_tiny_precision_export, flux_tiny_export, precision):
    folder = flux_tiny_precision_export(precision)
    assert sorted(p.name for p in folder.iterdir()) == [".ditf-verified.json", "manifest.json", "model.onnx",
                                                        "model.onnx.data", "reference.safetensors"]
    m = Manifest.load(folder)
    m.verify_files(folder)
    assert m.precision == precision and m.parity["passed"]
    assert m.parity["tolerance"] == {"min_cosine": 0.999, "max_rel_error": m.parity["tolerance"]["max_rel_error"],
                                     "min_nn_agreement": 0.98}
    rows = m.parity["results"]
    assert len(rows) == (3 if precision == "fp16" else 2)  # fp16 also checked on the example images
    for r in rows:
        assert r["min_cosine"] >= 0.999 and r["nn_agreement"] >= 0.98, r
        assert 1e-6 < r["rel_error"] < 0.05, r  # really rounded, still close
        # keypoint transfers agree, over those whose FP32 transfer is decisive (32 of 40 on the 64x96 row)
        assert 0 < r["pck_points"] <= 20 * r["batch"] and r["pck_agreement"] >= 0.95, r  # 20 per image pair
    assert "Cast-emulated" in m.parity["backend"]
    report = m.parity["precision"]
    assert report["precision"] == precision and report["range_check"]["nonfinite_tensors"] == []
    assert "feature head" in report["fp32_kept"]
    # the typed graph: FP32 I/O, low-precision GEMMs, half-size weights
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT] * 2
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    low = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.BFLOAT16
    assert sum(i.data_type == low for i in model.graph.initializer) > 40
    assert {p.key: p.value for p in model.metadata_props}["ditf.precision"] == precision
    fp32 = Manifest.load(flux_tiny_export).files["model.onnx.data"]["bytes"]
    assert m.files["model.onnx.data"]["bytes"] < 0.7 * fp32


def test_fp16_export_reproduces_its_reference_on_onnxruntime(flux_tiny_precision_export):
    """What the runtime checks with verify_reference: the written graph itself, on onnxruntime CPU."""
    import onnxruntime as ort
    from safetensors.numpy import load_file

    folder = flux_tiny_precision_export("fp16")
    ref = load_file(str(folder / "reference.safetensors"))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": ref["image"], "noise": ref["noise"]})[0]
    res = compare(got, ref["features"], "fp16")
    assert res and res.min_cosine >= 0.999, res
    assert Manifest.load(folder).parity["precision"]["typed_graph_on_onnxruntime_vs_twin_min_cosine"] > 0.9999


def test_fp16_overflow_is_refused_before_anything_is_written(tmp_path):
    """flux-tiny with its planted massive channels at 1e5: the patch embedding's output (an FP16 island:
    GEMM + bias) exceeds 65504. The export stops with a message pointing to bf16 and leaves nothing."""
    from ditf_export.tiny import build_flux_tiny

    folder = build_flux_tiny(tmp_path / "models" / "flux-huge", magnitude=1e5, with_text=False)
    out_parent = tmp_path / "outs"
    out_parent.mkdir()
    r = _invoke(["--model", str(folder), "--layer", "2", "--discard", "7,41", "--prompt-embeds",
                 str(_embeds(tmp_path)), "--precision", "fp16", "--out", str(out_parent / "out")])
    assert r.exit_code != 0, r.output
    assert "--precision fp16 refused" in r.output and "--precision bf16" in r.output, r.output
    assert "overflow" in r.output and "Traceback" not in r.output
    assert list(out_parent.iterdir()) == []


def _embeds(tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "embeds.safetensors"
    if not path.exists():
        g = torch.Generator().manual_seed(0)
        save_file({"prompt_embeds": torch.randn(1, 8, 32, generator=g),
                   "pooled_prompt_embeds": torch.randn(1, 32, generator=g)}, str(path))
    return path


def test_int8_without_calibration_images_is_an_error(tmp_path, flux_tiny_dir):
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "1", "--precision", "int8", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "--precision int8 needs --calib-images DIR" in r.output, r.output
    assert _nothing_left(tmp_path, "o")


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder"),
    ("empty", "no images"),
    ("corrupt", "bad.jpg: not a readable image"),
    ("file", "not a folder"),
])
def test_bad_calibration_folder_is_refused(tmp_path, flux_tiny_dir, case, message):
    calib = tmp_path / "calib"
    if case == "empty":
        calib.mkdir()
    elif case == "corrupt":
        calib.mkdir()
        shutil.copy(IMAGES / "coffee.jpg", calib / "good.jpg")
        (calib / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    elif case == "file":
        shutil.copy(IMAGES / "coffee.jpg", calib)
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "1", "--precision", "int8", "--calib-images", str(calib),
                 "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and message in r.output, r.output
    assert "Traceback" not in r.output and _nothing_left(tmp_path, "o")


def test_no_onnxruntime_session_while_the_pytorch_module_lives(tmp_path, flux_tiny_dir, monkeypatch):
    """The export keeps the PyTorch reference outputs, not the module: every onnxruntime session (range
    checks, calibration, the typed graph, parity) opens after the module AND its weights are freed
    (torch.onnx.export's optimizer leaves its last graph, whose initializers view the parameters, in
    onnxscript's module-level rewrite rules: onnx_export.forget_rewriter_state drops them)."""
    import gc
    import weakref

    import ditf_runtime.backends.onnxrt as onnxrt
    from ditf_export import export as export_mod
    from ditf_export import parity
    from ditf_export.export import ExportRequest, export

    real_session, real_build, opened, tensors = onnxrt.create_session, export_mod.build_graph, [], []

    def build(*args, **kwargs):
        built = real_build(*args, **kwargs)
        tensors.extend(weakref.ref(t) for t in [*built.graph.parameters(), *built.graph.buffers()])
        return built

    def checked(*args, **kwargs):
        gc.collect()
        alive = sum(ref() is not None for ref in tensors)
        assert tensors and not alive, f"an onnxruntime session opened while {alive} PyTorch tensors were alive"
        opened.append((args[0] if isinstance(args[0], (str, Path)) else "in-memory graph",
                       tuple(kwargs.get("disabled_optimizers", ()))))
        return real_session(*args, **kwargs)

    monkeypatch.setattr(export_mod, "build_graph", build)
    monkeypatch.setattr(onnxrt, "create_session", checked)
    monkeypatch.setattr(parity, "create_session", checked)
    export(ExportRequest(model=str(flux_tiny_dir), out=tmp_path / "out", layer=3, discard="7,41", ensemble=2,
                         image_size=64, text_max_length=32, precision="fp16", calib_images=IMAGES))
    assert len(opened) >= 3  # range check, typed graph, parity: the check above really ran
    # every session of a graph with fp16-stored weights skips constant folding (else fp32 copies of every weight)
    assert [folding for _, folding in opened] == [("ConstantFolding",)] * len(opened), opened


def test_int8_is_decided_by_held_out_real_images_not_random_inputs(tmp_path, flux_tiny_dir):
    """flux-tiny calibrated with percentile 97 clipping on examples/images' calibration part (astronaut, coffee,
    rocket): random pixels pass every INT8 tolerance, the held-out real pair (cat-a, cat-b, never calibrated)
    does not. The held-out images decide: the export is refused, with what to give instead, and nothing is
    written. (The default calibration passes both: tests/test_calib_int8.py.)"""
    from ditf_export.export import ExportRequest, ParityError, export

    out = tmp_path / "o"
    with pytest.raises(ParityError) as info:
        export(ExportRequest(model=str(flux_tiny_dir), out=out, layer=3, discard="7,41", ensemble=2, image_size=128,
                             text_max_length=32, precision="int8", calib_images=IMAGES, calib_method="percentile",
                             calib_percentile=97.0, parity_sizes=((64, 96),)))
    lines = str(info.value).splitlines()
    random_row = next(line for line in lines if line.strip().startswith("64x96 B=2"))
    held_row = next(line for line in lines if "held-out real images" in line and "E=2" in line)
    assert random_row.endswith("PASS [reported, not gated]"), random_row
    assert "cat-a.jpg, cat-b.jpg" in held_row and " FAIL: NN agreement" in held_row, held_row
    assert "INT8 calibrated on 3 image(s) (astronaut.jpg 384x384" in str(info.value)
    assert "Give instead: --calib-images with more, varied real photos" in str(info.value)
    assert "--eval-images DIR" in str(info.value) and "--calib-method max|mse|entropy" in str(info.value)
    assert _nothing_left(tmp_path, "o")


def test_one_tiny_calibration_image_is_refused_with_what_to_give(tmp_path, flux_tiny_dir):
    """One image cannot both calibrate INT8 and judge it: refused before any work, saying what to give."""
    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    Image.open(IMAGES / "coffee.jpg").resize((16, 12)).save(calib / "coffee-16.png")
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "3", "--precision", "int8", "--calib-images", str(calib),
                 "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    assert "judged on real images the calibration did not see" in r.output, r.output
    assert "give at least 3 distinct photos" in r.output and "--eval-images DIR" in r.output, r.output
    assert _nothing_left(tmp_path, "o")


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp16", "--eval-images", str(IMAGES)], "apply to --precision int8 and fp8 only"),
    (["--precision", "int8", "--calib-images", str(IMAGES), "--calib-sizes", "100"], "multiple of 16"),
    (["--precision", "int8", "--calib-images", str(IMAGES), "--calib-sizes", "a,b"], "comma list of long sides"),
    (["--precision", "int8", "--calib-images", str(IMAGES), "--calib-method", "median"], "'median' is not one of"),
])
def test_int8_calibration_options_are_checked(tmp_path, flux_tiny_dir, args, message):
    r = _invoke(["--model", str(flux_tiny_dir), "--layer", "3", *args, "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, r.output


def test_a_gate_without_decisive_evidence_fails():
    """Near-constant features (every token nearly the same vector, as a model dominated by one massive channel
    gives) have no nearest-neighbour point of clear margin and no decisive keypoint transfer: compare() counts
    none, so the INT8 gate fails and says why; structured features of the same shape decide."""
    import numpy as np

    from ditf_calib.graph_io import Sizes, diffusion_io
    from ditf_export.parity import ParityCase, ParityReport, _decision, _row

    io = diffusion_io(latent_channels=16, feature_channels=32, vae_stride=8, patch_size=2)
    feed = io.random_inputs(Sizes(batch=2, ensemble=2, height=64, width=96), seed=0)
    rng = np.random.default_rng(0)
    one_vector = 300.0 * rng.standard_normal((1, 32, 1, 1))
    near_constant = (one_vector + 0.01 * rng.standard_normal((2, 32, 4, 6))).astype(np.float32)
    structured = rng.standard_normal((2, 32, 4, 6)).astype(np.float32)

    def judged(reference):
        candidate = reference + 1e-3 * rng.standard_normal(reference.shape).astype(np.float32)
        case = ParityCase("2 held-out real images", (feed,), (reference,), gates=True)
        res = compare(candidate, reference, "int8")
        row, _ = _row(case, io, res)
        return res, _decision((case,), [row]), row

    res, (decided, missing), row = judged(near_constant)
    assert res.nn_points == 0 and res.pck_points == 0, res  # 40 keypoints "agreed" before: on noise
    assert res, "cosine and error alone pass: only the missing evidence stops it"
    assert "no nearest-neighbour match with a clear margin and no decisive keypoint transfer" in missing
    assert decided["sizes"] == [[64, 96]]
    report = ParityReport("b", {}, (row,), (), decided_by=decided, evidence_missing=missing)
    assert not report.passed and report.to_dict()["evidence_missing"] == missing

    res, (_, missing), row = judged(structured)
    assert res.nn_points > 0 and res.pck_points > 0 and res.pck_agreement == 1.0 and missing is None, res
    assert ParityReport("b", {}, (row,), (), evidence_missing=missing).passed

    random_only = ParityCase(None, ({},), (None,), gates=False)
    assert _decision((random_only,), [{"height": 64, "width": 96, "nn_points": 40, "passed": True}])[1] == \
        "no parity input decides the gate"
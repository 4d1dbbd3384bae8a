"""The CPU variant (ditf_runtime.cpu_rewrite, cpu_variant): parity against the PyTorch reference at the
export's own thresholds, what the rewrite leaves in the graph, the selection rules (CPU only, refused or
left out elsewhere, never silently), tampering, atomic writing, and `ditf optimize-cpu`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import ditf_runtime
from ditf_runtime.cpu_rewrite import make_cpu_variant
from ditf_runtime.cpu_variant import (RECORD_FILE, VARIANT_FILE, VariantRecord, attention_bytes, choose_graph)
from ditf_runtime.errors import BackendError, DitfError
from ditf_runtime.manifest import MODEL_FILE, Manifest, ManifestError
from ditf_runtime.parity import TOLERANCES, compare


def _copy(src: Path, dst: Path) -> Path:
    """The session fixtures are shared: a variant is written into a private copy."""
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def variant_dir(flux_tiny_cpu_variant):
    return flux_tiny_cpu_variant  # shared with the memory guard's tests (conftest.py): read, never changed here


def test_variant_files_and_record(variant_dir):
    record = VariantRecord.load(variant_dir)
    manifest = Manifest.load(variant_dir)
    assert record.source == {n: manifest.files[n]["sha256"] for n in ("model.onnx", "model.onnx.data")}
    assert record.rewrites["attention_found"] == record.rewrites["attention_fused"] == 4  # VAE + 3 blocks
    assert record.rewrites["rms_norm_fused"] == 10  # q/k norms: 4 per double block, 2 per single block
    assert record.parity["passed"] and record.parity["tolerance"]["min_cosine"] == TOLERANCES["fp32"].min_cosine
    # graph only: the weights stay in model.onnx.data, which the variant references
    variant = onnx.load(str(variant_dir / VARIANT_FILE), load_external_data=False)
    locations = {e.value for t in variant.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert not any(p.name.startswith("model.cpu.onnx.") or p.name.startswith(".model.cpu")
                   for p in variant_dir.iterdir())  # no weights copy, no temporary file left
    ops = [n.op_type for n in variant.graph.node]
    assert ops.count("MultiHeadAttention") == 4 and "Softmax" not in ops
    assert ops.count("SimplifiedLayerNormalization") == 10 and "Reciprocal" not in ops
    assert onnx.load(str(variant_dir / MODEL_FILE), load_external_data=False).graph.node  # model.onnx untouched
    assert Manifest.load(variant_dir).files == manifest.files


def test_variant_parity_against_the_pytorch_reference(variant_dir):
    ex = ditf_runtime.load(variant_dir)
    assert ex.graph.variant and ex.graph.path.name == VARIANT_FILE
    result = ex.verify_reference()
    assert result and result.min_cosine >= 0.99999 and result.rel_error <= 1e-4


def test_variant_matches_model_onnx_at_another_size(variant_dir):
    """Beyond the reference's sizes: a non-square image, E=3, same fp32 thresholds."""
    rng = np.random.default_rng(5)
    image = rng.uniform(-1, 1, (2, 3, 80, 144)).astype(np.float32)
    noise = rng.standard_normal((2, 3, 16, 10, 18)).astype(np.float32)
    fused = ditf_runtime.load(variant_dir, cpu_variant="on").run(image, noise)
    dense = ditf_runtime.load(variant_dir, cpu_variant="off").run(image, noise)
    result = compare(fused, dense, "fp32")
    assert result, str(result)


def test_selection_rules(variant_dir, flux_tiny_export):
    manifest = Manifest.load(variant_dir)
    assert choose_graph(variant_dir, manifest, on_cpu=True).variant
    off = choose_graph(variant_dir, manifest, on_cpu=True, choice="off")
    assert off.path.name == MODEL_FILE and "not requested" in off.reason
    gpu = choose_graph(variant_dir, manifest, on_cpu=False)
    assert gpu.path.name == MODEL_FILE and "CPU provider" in gpu.reason  # left out, and said so
    with pytest.raises(BackendError, match="CPU provider only"):
        choose_graph(variant_dir, manifest, on_cpu=False, choice="on")
    with pytest.raises(BackendError, match="cpu_variant"):
        choose_graph(variant_dir, manifest, on_cpu=True, choice="maybe")
    plain = Manifest.load(flux_tiny_export)
    none = choose_graph(flux_tiny_export, plain, on_cpu=True)
    assert not none.variant and "optimize-cpu" in none.reason
    with pytest.raises(BackendError, match="no CPU variant"):
        choose_graph(flux_tiny_export, plain, on_cpu=True, choice="on")


def test_the_choice_says_whether_attention_is_fused(variant_dir, tmp_path):
    """What the memory guard reads (memory.RunShape.fused_attention): every attention of the variant is fused;
    a record saying some attention stayed dense (a Softmax the rewrite did not match) keeps the dense estimate."""
    manifest = Manifest.load(variant_dir)
    assert choose_graph(variant_dir, manifest, on_cpu=True).fused_attention
    assert not choose_graph(variant_dir, manifest, on_cpu=True, choice="off").fused_attention
    assert not choose_graph(variant_dir, manifest, on_cpu=False).fused_attention
    partial = _copy(variant_dir, tmp_path / "partial")
    record = json.loads((partial / RECORD_FILE).read_text())
    record["rewrites"]["attention_fused"] -= 1
    (partial / RECORD_FILE).write_text(json.dumps(record))
    choice = choose_graph(partial, manifest, on_cpu=True)
    assert choice.variant and not choice.fused_attention


def test_load_uses_the_variant_on_the_cpu_only(variant_dir):
    assert ditf_runtime.load(variant_dir, cpu_variant="off").graph.path.name == MODEL_FILE
    # a GPU device or provider never gets the CPU variant: refused when asked for...
    with pytest.raises(BackendError, match="CPU provider only"):
        ditf_runtime.load(variant_dir, device="cuda", cpu_variant="on")
    with pytest.raises(BackendError, match="CPU provider only"):
        ditf_runtime.load(variant_dir, providers=["CUDAExecutionProvider"], cpu_variant="on")
    with pytest.raises(BackendError, match="tensorrt"):
        ditf_runtime.load(variant_dir, backend="tensorrt", device="cuda", cpu_variant="on")
    # ...and left out otherwise: the session is built from model.onnx (here CUDA itself is absent, so the
    # load fails on the provider, after the graph was chosen)
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        ditf_runtime.load(variant_dir, device="cuda")


def test_tampered_or_foreign_variant_is_refused(variant_dir, tmp_path):
    changed = _copy(variant_dir, tmp_path / "changed")
    data = bytearray((changed / VARIANT_FILE).read_bytes())
    data[-10] ^= 0xFF
    (changed / VARIANT_FILE).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="differs from its record"):
        ditf_runtime.load(changed)
    assert ditf_runtime.load(changed, cpu_variant="off").graph.path.name == MODEL_FILE  # the way out it names

    foreign = _copy(variant_dir, tmp_path / "foreign")
    record = json.loads((foreign / RECORD_FILE).read_text())
    record["source"]["model.onnx"] = "0" * 64
    (foreign / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(ManifestError, match="made from another"):
        ditf_runtime.load(foreign)

    broken = _copy(variant_dir, tmp_path / "broken")
    (broken / RECORD_FILE).write_text("{not json")
    with pytest.raises(ManifestError, match="malformed"):
        ditf_runtime.load(broken)


def test_a_variant_without_record_is_not_used(variant_dir, tmp_path):
    orphan = _copy(variant_dir, tmp_path / "orphan")
    (orphan / RECORD_FILE).unlink()
    ex = ditf_runtime.load(orphan)
    assert ex.graph.path.name == MODEL_FILE and "interrupted" in ex.graph.reason
    with pytest.raises(BackendError, match="no CPU variant"):
        ditf_runtime.load(orphan, cpu_variant="on")


def test_failed_parity_writes_nothing(flux_tiny_export, tmp_path, monkeypatch):
    import ditf_runtime.cpu_rewrite as rewrite

    out = _copy(flux_tiny_export, tmp_path / "export")
    worse = compare(np.zeros((2, 4, 2, 2), np.float32) + 1, np.arange(32, dtype=np.float32).reshape(2, 4, 2, 2))
    assert not worse
    monkeypatch.setattr(rewrite, "_parity", lambda *a, **k: worse)
    with pytest.raises(DitfError, match="failed the export's parity gates"):
        make_cpu_variant(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in flux_tiny_export.iterdir())


def test_optimize_cpu_command(flux_tiny_export, tmp_path):
    from ditf_runtime.cli import main

    out = _copy(flux_tiny_export, tmp_path / "export")
    result = CliRunner().invoke(main, ["optimize-cpu", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(VARIANT_FILE) and (out / RECORD_FILE).is_file()
    missing = CliRunner().invoke(main, ["optimize-cpu", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "Error:" in missing.output and "Traceback" not in missing.output


def test_int8_variant_keeps_the_int8_gates_and_onnxruntime_fuses_every_qdq_linear(flux_tiny_precision_export,
                                                                                 tmp_path):
    """INT8 linear layers need no rewrite: onnxruntime's optimised graph (not the intent) has every Q/DQ
    MatMul of calib/int8.py as MatMulIntegerToFloat."""
    import onnxruntime as ort

    out = _copy(flux_tiny_precision_export("int8"), tmp_path / "int8")
    record = make_cpu_variant(out)
    assert record.parity["passed"] and record.parity["tolerance"]["min_cosine"] == TOLERANCES["int8"].min_cosine
    linear = Manifest.load(out).parity["precision"]["linear_layers_quantized"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
    ort.InferenceSession(str(out / VARIANT_FILE), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node]
    assert ops.count("MatMulIntegerToFloat") == linear and ops.count("MultiHeadAttention") == 4


def test_attention_memory_formula():
    # dense: the score matrix twice; at 2048^2 the flux-tiny VAE's one-head attention over 65,536 cells
    assert attention_bytes(1, 1, 65536, 65536, 32, fused=False) == 2 * 65536**2 * 4
    fused = attention_bytes(1, 1, 65536, 65536, 32, fused=True)
    assert fused < 2e8  # linear in the tokens: copies of Q, K, V plus L2-sized blocks
    assert attention_bytes(1, 1, 2 * 65536, 2 * 65536, 32, fused=True) < 2.1 * fused


def test_dinov2_variant_image_only_graph(dinov2_tiny_export, tmp_path):
    """A graph without noise (DINOv2): its attention fuses too, parity on the image alone at the fp32 gates."""
    out = _copy(dinov2_tiny_export(), tmp_path / "dinov2")
    record = make_cpu_variant(out)
    assert record.rewrites["attention_fused"] == record.rewrites["attention_found"] > 0
    assert record.parity["passed"]
    ex = ditf_runtime.load(out)
    assert ex.graph.variant
    result = ex.verify_reference()
    assert result and result.min_cosine >= 0.99999 and result.rel_error <= 1e-4


@pytest.mark.parametrize("cwd", ["empty folder", "another export"])
def test_int8_convs_at_real_width_read_their_own_external_data_from_any_working_directory(tmp_path, monkeypatch,
                                                                                          cwd):
    """256-channel per-channel scales and biases live in model.onnx.data (every real-size VAE's do). The
    rewrite reads them from the export's folder: run from an unrelated folder it used to crash, and run from
    inside another export of the same graph (another seed) it silently read that export's bytes."""
    from onnx import numpy_helper
    from runtime_graphs import build_int8_conv_export, int8_conv_graph

    export = tmp_path / "export"
    manifest = build_int8_conv_export(export, channels=256, seed=0)
    stored = onnx.load(str(export / MODEL_FILE), load_external_data=False)
    external = {i.name for i in stored.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    assert {"conv_w_scale", "conv_bias"} <= external  # the real-width case, not the 32-channel one
    other = tmp_path / "other"
    build_int8_conv_export(other, channels=256, seed=1)
    foreign = other if cwd == "another export" else tmp_path / "elsewhere"
    foreign.mkdir(exist_ok=True)
    monkeypatch.chdir(foreign)

    record = make_cpu_variant(export)

    assert record.rewrites["int8_convs"] == 1 and record.parity["passed"]
    variant = onnx.load(str(export / VARIANT_FILE), load_external_data=False)
    conv = next(n for n in variant.graph.node if n.op_type == "QLinearConv")
    bias = numpy_helper.to_array(next(i for i in variant.graph.initializer if i.name == conv.input[8]))
    _, consts = int8_conv_graph(manifest.geometry, seed=0)
    expected = np.round(consts["conv_bias"].astype(np.float64)
                        / (np.float64(consts["x_scale"]) * consts["conv_w_scale"].astype(np.float64)))
    np.testing.assert_array_equal(bias, expected.astype(np.int32))
    with ditf_runtime.load(export, threads=1) as extractor:  # and the variant runs on its own folder's weights
        assert extractor.graph.variant

"""ditf_calib.int8: explicit Q/DQ graphs TensorRT accepts, massive channels and the head kept FP32, accuracy.

Stated thresholds: the export's int8 parity gate, ditf_runtime.parity.TOLERANCES["int8"]
(per-token cosine >= 0.995, relative error <= 0.1, NN agreement >= 0.95). What the quantizer reaches
with its defaults (flux-tiny here; medium random FLUX-like models in bench/bench_precision.py):
cosine min >= 0.9996, relative error <= 0.017, NN agreement >= 0.996; the gate keeps a margin of
about 10x on the cosine deficit, 6x on the error and 0.046 on the agreement. The tests below also
assert the reached level on flux-tiny (cosine >= 0.999, error <= 0.05, NN >= 0.98).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditf_calib import graph as G
from ditf_calib.data import load_calibration_set
from ditf_calib.graph_io import diffusion_io
from ditf_calib.int8 import Int8Config, quantize
from ditf_runtime.manifest import Manifest
from ditf_runtime.parity import TOLERANCES, compare

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
MASSIVE = (7, 41)
HIDDEN = 64
FLUX_TINY_IO = diffusion_io(latent_channels=16, feature_channels=HIDDEN, vae_stride=8, patch_size=2)
INT8 = TOLERANCES["int8"]


@pytest.fixture(scope="module")
def int8_dir(flux_tiny_precision_export):
    return flux_tiny_precision_export("int8")


@pytest.fixture(scope="module")
def int8_model(int8_dir):
    return G.load(int8_dir / "model.onnx")


def _arr(idx: G.GraphIndex, name: str) -> np.ndarray:
    return numpy_helper.to_array(idx.inits[name])


def test_thresholds_stated():
    assert (INT8.min_cosine, INT8.max_rel_error, INT8.min_nn_agreement) == (0.995, 0.1, 0.95)


def test_qdq_symmetric_zero_point_per_channel_weights(int8_model):
    g = int8_model.graph
    idx = G.GraphIndex(g)
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in g.node if n.op_type == "DequantizeLinear"]
    act_dq = [n for n in dqs if n.input[0] not in idx.inits]
    w_dq = [n for n in dqs if n.input[0] in idx.inits]
    assert len(qs) == len(act_dq) == len(w_dq) == 34  # every linear layer of the kept blocks (and VAE attention)
    for n in qs + dqs:
        zp = _arr(idx, n.input[2])
        assert zp.dtype == np.int8 and not zp.any(), n.name  # symmetric: zero point 0, int8
        assert (_arr(idx, n.input[1]) > 0).all()
    for n in qs:
        assert _arr(idx, n.input[1]).ndim == 0  # activations: one scale per tensor
    for n in w_dq:
        w = _arr(idx, n.input[0])
        scale = _arr(idx, n.input[1])
        axis = next(a.i for a in n.attribute if a.name == "axis")
        assert w.dtype == np.int8 and w.ndim == 2 and axis == 1  # weights stored int8, [K, N]
        assert scale.shape == (w.shape[1],) and len(np.unique(scale)) > 1  # per output channel
        assert np.abs(w).max() <= 127  # symmetric range, -128 unused
    # each Q/DQ pair feeds exactly one MatMul (what onnxruntime fuses into an integer GEMM)
    for n in act_dq:
        users = idx.consumers[n.output[0]]
        assert len(users) == 1 and users[0].op_type == "MatMul"
    # no linear layer is left with a float weight, except the FP32 rows of the massive channels
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in idx.inits:
            assert idx.producer[n.input[0]].op_type == "Gather", n.name


def test_massive_channels_stay_fp32(int8_model, int8_dir):
    g = int8_model.graph
    idx = G.GraphIndex(g)
    masked = 0
    for q in (n for n in g.node if n.op_type == "QuantizeLinear"):
        mul = idx.producer[q.input[0]]
        assert mul.op_type == "Mul"  # SmoothQuant scale and outlier mask, in one multiply
        mask = _arr(idx, mul.input[1])
        if mask.shape == (HIDDEN,):
            assert (mask[list(MASSIVE)] == 0).all(), q.name
            masked += 1
    assert masked >= 20
    # their FP32 path: Gather(those channels) -> MatMul with the matching weight rows
    gathers = [_arr(idx, n.input[1]) for n in g.node if n.op_type == "Gather" and "_outliers" in n.name]
    widths = [idx.inits[n.input[1]].dims[0] for n in g.node if n.op_type == "MatMul" and n.input[1] in idx.inits]
    assert len(gathers) >= 10 and all(set(MASSIVE) <= set(a.tolist()) for a in gathers)
    assert widths and all(w == len(MASSIVE) for w in widths)
    report = Manifest.load(int8_dir).parity["precision"]
    assert report["protected_channels"] == list(MASSIVE)
    # calibration saw them as outliers on its own too (not only because they were protected)
    assert any(set(v) & set(MASSIVE) for v in report["fp32_outlier_channels"].values())


def test_values_entering_quantize_have_massive_channels_zeroed(int8_model):
    """Functional: run the graph and look at what each QuantizeLinear really receives."""
    cs = load_calibration_set(IMAGES, io=FLUX_TINY_IO, long_side=128, ensemble=2)
    feed = next(iter(cs.feeds()))
    idx = G.GraphIndex(int8_model.graph)
    q_inputs = [n.input[0] for n in int8_model.graph.node if n.op_type == "QuantizeLinear"]
    raw = {idx.producer[t].input[0] for t in q_inputs}  # the tensors before mask/scale
    probe = onnx.ModelProto()
    probe.CopyFrom(int8_model)
    G.add_outputs(probe, sorted(set(q_inputs) | raw))
    names = [o.name for o in probe.graph.output]
    out = dict(zip(names, G.session(probe).run(None, feed)))
    seen_massive = 0
    for t in set(q_inputs):
        x = out[t].reshape(-1, out[t].shape[-1])
        if x.shape[1] == HIDDEN:
            assert not x[:, list(MASSIVE)].any(), t
            before = out[idx.producer[t].input[0]].reshape(-1, HIDDEN)
            col = np.abs(before).max(0)
            seen_massive += bool(col[list(MASSIVE)].max() > 10 * np.median(col))
    assert seen_massive >= 3  # the planted channels really are massive at several GEMM inputs


def test_head_and_residual_stream_are_not_quantized(int8_model):
    """Walking back from the output (head: discard, LayerNorm, modulation; then the residual stream)
    until a linear layer, no Q/DQ or integer op appears."""
    idx = G.GraphIndex(int8_model.graph)
    seen, stack = set(), [o.name for o in int8_model.graph.output]
    ops = set()
    while stack:
        t = stack.pop()
        node = idx.producer.get(t)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        ops.add(node.op_type)
        if node.op_type == "MatMul":
            continue
        stack.extend(i for i in node.input if i)
    assert "LayerNormalization" in ops and "ReduceMean" in ops
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "MatMulInteger", "QLinearMatMul"}


def test_int8_export_parity_passes_its_gate(int8_dir):
    m = Manifest.load(int8_dir)
    m.verify_files(int8_dir)
    assert m.precision == "int8" and m.parity["passed"]
    rows = m.parity["results"]
    # random inputs reported beside the gate; the held-out real images (never calibrated on) decide
    assert [r["gates"] for r in rows] == [False, False, True]
    held = rows[-1]
    assert held["inputs"].startswith("2 held-out real images at the export's default size (long side 128)")
    assert held["sizes"] == [[80, 128], [80, 128]] and held["batch"] == 2
    decided = m.parity["decided_by"]
    assert decided["rows"] == [2] and decided["held_out_images"] == ["cat-a.jpg", "cat-b.jpg"]
    assert decided["calibration_images"] == ["astronaut.jpg", "coffee.jpg", "rocket.jpg"]
    assert decided["calibration_sizes"] == [128] and decided["sizes"] == [[80, 128]]
    assert len(decided["reported_not_gated"]) == 2
    report = m.parity["precision"]
    assert report["calibration"] == "max"
    assert [c["image"] for c in report["calibration_inputs"]] == decided["calibration_images"]
    for r in rows:
        assert r["min_cosine"] >= INT8.min_cosine and r["rel_error"] <= INT8.max_rel_error
        assert r["nn_agreement"] >= INT8.min_nn_agreement and r["pck_agreement"] >= INT8.min_pck_agreement
    # what it reaches here, well inside the gate
    assert min(r["min_cosine"] for r in rows) >= 0.999
    assert max(r["rel_error"] for r in rows) <= 0.05
    assert min(r["nn_agreement"] for r in rows) >= 0.98
    # cat-a <-> cat-b, exact matcher: of 2 x 20 keypoints, those with a decisive FP32 transfer (34 measured)
    assert 30 <= held["pck_points"] <= 40 and held["pck_agreement"] >= 0.95
    assert m.parity["tolerance"]["min_cosine"] == INT8.min_cosine
    assert m.parity["tolerance"]["min_pck_agreement"] == INT8.min_pck_agreement
    # weights int8: the data file shrank to well under half the fp32 one
    assert m.files["model.onnx.data"]["bytes"] < 0.6 * 1.63e6


def test_int8_reference_is_a_held_out_image(int8_dir):
    """reference.safetensors holds what the gate judged (the first held-out image), so verify_reference
    judges a backend on real input too."""
    import ditf_runtime
    from safetensors.numpy import load_file

    ref = load_file(str(int8_dir / "reference.safetensors"))
    assert ref["image"].shape == (1, 3, 80, 128) and ref["noise"].shape[:2] == (1, 2)
    assert ditf_runtime.load(int8_dir).verify_reference()


def test_held_out_image(flux_tiny_export, tmp_path):
    """Calibrate on four images, judge on the fifth (never seen) against the FP32 graph."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for p in sorted(IMAGES.glob("*.jpg")):
        if p.name != "cat-b.jpg":
            shutil.copy(p, folder / p.name)
    fp32 = G.load(flux_tiny_export / "model.onnx")
    cs = load_calibration_set(folder, io=FLUX_TINY_IO, long_side=128, ensemble=2)
    qmodel, _ = quantize(fp32, list(cs.feeds()), Int8Config(protect_channels=MASSIVE, protect_width=HIDDEN))
    held = load_calibration_set(IMAGES, io=FLUX_TINY_IO, long_side=128, ensemble=2)
    idx = [i.name for i in held.images].index(str(IMAGES / "cat-b.jpg"))
    feed = list(held.feeds(seed=9))[idx]
    ref = G.session(fp32).run(None, feed)[0]
    res = compare(G.session(qmodel).run(None, feed)[0], ref, "int8")
    assert res and res.min_cosine >= 0.999, res


def _outlier_graph():
    """y = LayerNorm-like input with one massive channel @ W: what FLUX's GEMMs see after the norm."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype(np.float32) / 6
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = rng.standard_normal((256, 32)).astype(np.float32)
    x[:, 5] = 800.0 * np.sign(rng.standard_normal(256)).astype(np.float32)
    return model, [{"x": x[i : i + 64]} for i in range(0, 256, 64)]


def test_outlier_split_keeps_accuracy_where_one_scale_cannot():
    model, feeds = _outlier_graph()
    ref = G.session(model).run(None, feeds[0])[0]
    errors = {}
    for name, cfg in {"split": Int8Config(smooth_alpha=None),
                      "no split": Int8Config(smooth_alpha=None, outlier_ratio=float("inf"))}.items():
        q, report = quantize(model, feeds, cfg)
        got = G.session(q).run(None, feeds[0])[0]
        # error on the non-massive channels' contribution: remove channel 5's exact part
        contrib = feeds[0]["x"][:, 5:6] @ numpy_helper.to_array(model.graph.initializer[0])[5:6]
        errors[name] = np.abs(got - ref).max() / np.abs(ref - contrib).max()
        if name == "split":
            assert report.to_dict()["fp32_outlier_channels"] == {"x": [5]}
    assert errors["split"] < 0.05 < errors["no split"], errors


def test_gemm_and_keep_sensitive():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 32)).astype(np.float32)  # Gemm transB: B is [N, K]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, alpha=0.5),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(16, np.float32), "b"),
                               numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    feeds = [{"x": rng.standard_normal((64, 32)).astype(np.float32)} for _ in range(3)]
    ref = G.session(model).run(None, feeds[0])[0]
    q, report = quantize(model, feeds)
    assert report.to_dict()["linear_layers_quantized"] == 2
    got = G.session(q).run(None, feeds[0])[0]
    assert compare(got.T[None, :, :, None], ref.T[None, :, :, None], "int8").min_cosine > 0.999
    q1, report1 = quantize(model, feeds, Int8Config(keep_sensitive=1))
    assert report1.to_dict()["linear_layers_quantized"] == 1 and len(report1.skipped) == 1
    assert sum(n.op_type == "QuantizeLinear" for n in q1.graph.node) == 1

"""ditf_calib.precision: FP16/BF16 islands in the FP32 graph, the Cast-emulated bf16 twin, the FP16 range check.

Stated thresholds (the same TOLERANCES the export gates on): fp16 and bf16 against FP32, per-token
cosine >= 0.999 and NN agreement >= 0.98.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditf_calib import graph as G
from ditf_calib.precision import (
    PrecisionError,
    check_ranges,
    refuse_if_out_of_range,
    to_low_precision,
)
from ditf_calib.graph_io import Sizes, diffusion_io
from ditf_runtime.parity import TOLERANCES, compare

FP32_OPS = ("LayerNormalization", "InstanceNormalization", "ReduceMean", "Pow", "Sqrt", "Gelu", "Sigmoid")


@pytest.fixture(scope="module")
def fp32_model(flux_tiny_export):
    return G.load(flux_tiny_export / "model.onnx")


@pytest.fixture(scope="module")
def feeds():
    io = diffusion_io(latent_channels=16, feature_channels=64, vae_stride=8, patch_size=2)  # flux-tiny's graph
    return [io.random_inputs(Sizes(batch=2, ensemble=2, height=h, width=w), seed=i)
            for i, (h, w) in enumerate(((64, 96), (128, 128)))]


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def _op_input_types(model, types, op):
    return [types.get(i) for n in model.graph.node if n.op_type == op for i in n.input if i]


def test_fp16_islands_types(fp32_model):
    typed, islands = to_low_precision(fp32_model, "fp16")
    types = _types(typed)
    g = typed.graph
    assert [types[i.name] for i in g.input] == [TensorProto.FLOAT] * 2
    assert [types[o.name] for o in g.output] == [TensorProto.FLOAT]
    for op in ("MatMul", "Conv", "Softmax"):
        got = _op_input_types(typed, types, op)
        assert got and set(got) == {TensorProto.FLOAT16}, op
    for op in FP32_OPS:  # normalisations, RMSNorm, GELU, SiLU: FP32
        got = _op_input_types(typed, types, op)
        assert got and set(got) <= {TensorProto.FLOAT, TensorProto.INT64}, op
    # every linear's weight is stored fp16; nothing float32 of that size is left for a MatMul
    weights = [i for i in g.initializer if i.data_type == TensorProto.FLOAT16]
    assert len(weights) == islands.weights > 40
    assert islands.ops["MatMul"] == 42 and islands.ops["Conv"] == 18 and islands.ops["Softmax"] == 4
    # the feature head (discard mask, LayerNorm, modulation) is FP32: the output's producers are float ops
    prod = G.GraphIndex(g).producer
    node = prod[g.output[0].name]
    chain = []
    while node.op_type != "LayerNormalization":
        chain.append(node)
        node = prod[node.input[0]]
    assert all(types[n.output[0]] == TensorProto.FLOAT for n in chain + [node])


def test_fp16_graph_and_twin_within_tolerance(fp32_model, feeds):
    """The typed graph loads and runs on onnxruntime; its Cast-emulated twin (the faithful CPU check:
    onnxruntime computes FP16 GEMMs in FP32) meets the fp16 tolerance."""
    typed, islands = to_low_precision(fp32_model, "fp16")
    twin, twin_islands = to_low_precision(fp32_model, "fp16", emulate=True)
    ref, got, emu = G.session(fp32_model), G.session(typed), G.session(twin)
    for feed in feeds:
        r = ref.run(None, feed)[0]
        for sess in (got, emu):
            res = compare(sess.run(None, feed)[0], r, "fp16")
            assert res and res.min_cosine >= 0.999 and res.nn_agreement >= 0.98, res
    ranges = check_ranges(twin, twin_islands, feeds)
    assert not ranges.nonfinite and ranges.headroom > 100  # flux-tiny's planted 300 is far from 65504
    refuse_if_out_of_range(twin_islands, ranges)  # no raise


def test_range_check_keeps_the_twins_weights_low_precision(fp32_model, feeds, monkeypatch):
    """The emulated twin's range check opens its session without constant folding: folded, onnxruntime kept an
    fp32 copy of every Cast-up weight plus a pre-packed one (2.1x the kept fp32 weights at real FLUX dimensions,
    bench/bench_export_memory.py --standin). The unfolded twin computes the same ranges."""
    from ditf_runtime.backends import onnxrt

    twin, twin_islands = to_low_precision(fp32_model, "fp16", emulate=True)
    expected = G.session(twin).run(None, feeds[0])[0]  # folded, as any other session
    real, asked = onnxrt.create_session, []

    def recording(*args, **kwargs):
        asked.append(tuple(kwargs.get("disabled_optimizers", ())))
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxrt, "create_session", recording)
    ranges = check_ranges(twin, twin_islands, feeds[:1])
    assert asked == [("ConstantFolding",)]
    np.testing.assert_allclose(ranges.first_output, expected, rtol=1e-5, atol=1e-6)
    assert ranges.headroom > 100


def test_bf16_typed_graph_is_valid_and_its_twin_matches(fp32_model, feeds):
    typed, islands = to_low_precision(fp32_model, "bf16")
    twin, twin_islands = to_low_precision(fp32_model, "bf16", emulate=True)
    onnx.checker.check_model(typed, full_check=True)
    types = _types(typed)
    assert set(_op_input_types(typed, types, "MatMul")) == {TensorProto.BFLOAT16}
    assert set(_op_input_types(typed, types, "Conv")) == {TensorProto.FLOAT}  # Conv has bf16 only from opset 22
    assert [types[o.name] for o in typed.graph.output] == [TensorProto.FLOAT]
    assert sum(i.data_type == TensorProto.BFLOAT16 for i in typed.graph.initializer) == islands.weights
    # the twin computes the same islands, only emulated
    assert islands.ops == twin_islands.ops and islands.low_tensors.keys() == twin_islands.low_tensors.keys()
    assert not any(i.data_type == TensorProto.BFLOAT16 for i in twin.graph.initializer)
    # onnxruntime CPU cannot run the typed graph (docs/DESIGN.md, "What runs where"); it runs the twin
    with pytest.raises(Exception, match="NOT_IMPLEMENTED|Could not find an implementation"):
        G.session(typed)
    ref, got = G.session(fp32_model), G.session(twin)
    for feed in feeds:
        res = compare(got.run(None, feed)[0], ref.run(None, feed)[0], "bf16")
        assert res and res.min_cosine >= 0.999 and res.nn_agreement >= 0.98, res
        assert res.rel_error > 1e-4  # the rounding really happens
    assert not check_ranges(twin, twin_islands, feeds[:1]).nonfinite


def test_emulated_twin_rounds_like_the_typed_fp16_graph(fp32_model, feeds):
    """The emulation is faithful where both can run: fp16 typed vs fp16 Cast-emulated agree closely."""
    typed, _ = to_low_precision(fp32_model, "fp16")
    twin, _ = to_low_precision(fp32_model, "fp16", emulate=True)
    a = G.session(typed).run(None, feeds[0])[0]
    b = G.session(twin).run(None, feeds[0])[0]
    assert compare(a, b, "fp16").min_cosine > 0.99999


def _overflow_model(weight: float) -> onnx.ModelProto:
    """x [N, 4] @ W [4, 2] + b, then a LayerNorm: W's entries are in FP16 range, x @ W is not."""
    w = np.full((4, 2), weight, np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "b"], ["z"]),
             helper.make_node("LayerNormalization", ["z", "g"], ["out"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 2])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(2, np.float32), "b"),
                               numpy_helper.from_array(np.ones(2, np.float32), "g")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_fp16_activation_overflow_is_refused_with_bf16_hint():
    model = _overflow_model(30000.0)  # 4 * 30000 = 120000 > 65504
    feeds = [{"x": np.array([[1.0, 1.0, 1.0, 1.0], [0.1, 0.0, 0.0, 0.0]], np.float32)}]
    twin, islands = to_low_precision(model, "fp16", emulate=True)
    ranges = check_ranges(twin, islands, feeds)
    assert ranges.nonfinite == ["y", "z"] and ranges.output_nonfinite
    with pytest.raises(PrecisionError, match="--precision bf16") as info:
        refuse_if_out_of_range(islands, ranges)
    assert "overflow" in str(info.value)
    # why the twin: onnxruntime CPU runs the typed graph's FP16 GEMM in FP32 and never overflows
    typed, typed_islands = to_low_precision(model, "fp16")
    assert np.isfinite(G.session(typed).run(None, feeds[0])[0]).all()
    # the probe still flags a value FP16 cannot hold, should a run fail to round it
    assert "y" in check_ranges(typed, typed_islands, feeds).nonfinite
    # bf16 has FP32's range: the same graph is fine there
    twin, twin_islands = to_low_precision(model, "bf16", emulate=True)
    assert not check_ranges(twin, twin_islands, feeds).nonfinite


def test_fp16_weight_beyond_range_is_named():
    model = _overflow_model(1e5)
    twin, islands = to_low_precision(model, "fp16", emulate=True)
    assert islands.weight_overflow and islands.weight_overflow[0][0] == "w"
    ranges = check_ranges(twin, islands, [{"x": np.ones((1, 4), np.float32)}])
    with pytest.raises(PrecisionError, match=r"weight w has \|w\| = 1e\+05"):
        refuse_if_out_of_range(islands, ranges)


def test_tolerances_stated():
    for p in ("fp16", "bf16"):
        assert TOLERANCES[p].min_cosine >= 0.999 and TOLERANCES[p].min_nn_agreement >= 0.98

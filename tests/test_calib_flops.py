"""ditf_calib.flops: FLOP counts against hand-computed ones on a small hand-built DiTF-shaped graph,
part attribution, the text/image split, int8 detection, and equal counts before and after the CPU
variant's attention fusion."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditf_calib.flops import FlopError, account
from ditf_calib.graph_io import Sizes, diffusion_io

C, D, T = 4, 8, 5  # latent channels, hidden size, text tokens
VAE_STRIDE = 8


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def ditf_shaped_graph(path, int8_linear: bool = False):
    """image [B,3,H,W] -> "VAE" conv (stride 8) -> x_t = a*latent + b*noise -> tokens [B*E, N, C] -> W_in
    -> [text; image] tokens -> W -> single-head attention -> image rows -> mean over E -> LayerNorm -> Mul."""
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f32(C, 3, VAE_STRIDE, VAE_STRIDE), "vae_w"),
             numpy_helper.from_array(f32(C, D), "w_in"), numpy_helper.from_array(f32(1, T, D), "text"),
             numpy_helper.from_array(np.float32(0.7), "a"), numpy_helper.from_array(np.float32(0.3), "b"),
             _const("minus_one_c", [-1, C]), _const("td", [T, D]),
             _const("zero", [0]), _const("one", [1]), _const("two", [2]), _const("three", [3]), _const("four", [4]),
             _const("five", [5]),
             _const("big", [1 << 30]), _const("minus_one_d", [-1, D]), _const("dd", [D]),
             _const("axis1", [1]), numpy_helper.from_array(np.full(D, 2.0, np.float32), "gain"),
             numpy_helper.from_array(f32(D, D), "w")]
    nodes = [
        helper.make_node("Conv", ["image", "vae_w"], ["latent"], strides=[VAE_STRIDE, VAE_STRIDE]),
        helper.make_node("Unsqueeze", ["latent", "axis1"], ["latent5"]),
        helper.make_node("Mul", ["latent5", "a"], ["x0"]),
        helper.make_node("Mul", ["noise", "b"], ["nz"]),
        helper.make_node("Add", ["x0", "nz"], ["x_t"]),
        helper.make_node("Shape", ["noise"], ["noise_shape"]),
        helper.make_node("Slice", ["noise_shape", "three", "five"], ["hw"]),
        helper.make_node("Slice", ["noise_shape", "three", "four"], ["h_cells"]),
        helper.make_node("Slice", ["noise_shape", "four", "five"], ["w_cells"]),
        helper.make_node("Mul", ["h_cells", "w_cells"], ["cells"]),
        helper.make_node("Concat", ["minus_one_c", "cells"], ["x3_shape"], axis=0),
        helper.make_node("Reshape", ["x_t", "x3_shape"], ["x3"]),
        helper.make_node("Transpose", ["x3"], ["tok"], perm=[0, 2, 1]),
    ]
    if int8_linear:  # Q/DQ on the activation and an int8 weight, as calib/int8.py writes them
        inits += [numpy_helper.from_array(rng.integers(-127, 128, (C, D)).astype(np.int8), "w_in_q"),
                  numpy_helper.from_array(np.full(D, 0.01, np.float32), "w_in_s"),
                  numpy_helper.from_array(np.zeros(D, np.int8), "w_in_z"),
                  numpy_helper.from_array(np.float32(0.05), "x_s"), numpy_helper.from_array(np.int8(0), "x_z")]
        nodes += [helper.make_node("QuantizeLinear", ["tok", "x_s", "x_z"], ["tok_q"]),
                  helper.make_node("DequantizeLinear", ["tok_q", "x_s", "x_z"], ["tok_dq"]),
                  helper.make_node("DequantizeLinear", ["w_in_q", "w_in_s", "w_in_z"], ["w_in_dq"], axis=1),
                  helper.make_node("MatMul", ["tok_dq", "w_in_dq"], ["img"])]
    else:
        nodes.append(helper.make_node("MatMul", ["tok", "w_in"], ["img"]))
    nodes += [
        helper.make_node("Shape", ["img"], ["img_shape"]),
        helper.make_node("Slice", ["img_shape", "zero", "one"], ["be"]),
        helper.make_node("Concat", ["be", "td"], ["text_shape"], axis=0),
        helper.make_node("Expand", ["text", "text_shape"], ["text_be"]),
        helper.make_node("Concat", ["text_be", "img"], ["seq"], axis=1),
        helper.make_node("MatMul", ["seq", "w"], ["h"]),
        helper.make_node("Transpose", ["h"], ["h_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "h_t"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "h"], ["attn"]),
        helper.make_node("Slice", ["attn", "five", "big", "one"], ["img_out"]),
        helper.make_node("Slice", ["noise_shape", "zero", "two"], ["b_e"]),
        helper.make_node("Concat", ["b_e", "minus_one_d"], ["bend"], axis=0),
        helper.make_node("Reshape", ["img_out", "bend"], ["per_member"]),
        helper.make_node("ReduceMean", ["per_member", "axis1"], ["mean"], keepdims=0),
        helper.make_node("LayerNormalization", ["mean", "gain"], ["ln"], axis=-1, epsilon=1e-6),
        helper.make_node("Transpose", ["ln"], ["ln_t"], perm=[0, 2, 1]),
        helper.make_node("Slice", ["noise_shape", "zero", "one"], ["b_only"]),
        helper.make_node("Concat", ["b_only", "dd", "hw"], ["out_shape"], axis=0),
        helper.make_node("Reshape", ["ln_t", "out_shape"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes, "ditf-shaped",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, "H", "W"]),
         helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", "E", C, "h", "w"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", D, "h", "w"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


IO = diffusion_io(latent_channels=C, feature_channels=D, vae_stride=VAE_STRIDE, patch_size=1)


def hand_counts(b, e, height, width):
    h, w = height // VAE_STRIDE, width // VAE_STRIDE
    n = h * w
    seq = T + n
    return {
        "vae_conv": 2 * b * C * h * w * 3 * VAE_STRIDE * VAE_STRIDE,
        "w_in": 2 * b * e * n * C * D,
        "w": 2 * b * e * seq * D * D,
        "scores": 2 * b * e * seq * D * seq,
        "pv": 2 * b * e * seq * seq * D,
        "seq": seq,
    }


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory):
    return ditf_shaped_graph(tmp_path_factory.mktemp("flops") / "model.onnx")


def test_the_hand_built_graph_runs(graph_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    feed = IO.random_inputs(Sizes(batch=2, ensemble=3, height=32, width=48), seed=0)
    assert sess.run(None, feed)[0].shape == (2, D, 4, 6)


@pytest.mark.parametrize("b, e, height, width", [(1, 2, 32, 48), (2, 3, 64, 40)])
def test_counts_match_hand_computed(graph_path, b, e, height, width):
    report = account(graph_path, IO, Sizes(batch=b, ensemble=e, height=height, width=width))
    want = hand_counts(b, e, height, width)
    by_op = {}
    for n in report.nodes:
        by_op.setdefault((n.op_type, n.part, n.kind), []).append(n.flops)
    assert by_op[("Conv", "vae", "conv")] == [want["vae_conv"]]
    assert sorted(by_op[("MatMul", "transformer", "linear")]) == sorted([want["w_in"], want["w"]])
    assert sorted(by_op[("MatMul", "transformer", "attention")]) == sorted([want["scores"], want["pv"]])
    parts = report.parts()
    assert parts["vae"].gemm_flops == want["vae_conv"]
    assert parts["transformer"].gemm_flops == want["w_in"] + want["w"] + want["scores"] + want["pv"]
    assert parts["head"].gemm_flops == 0 and parts["head"].flops["other"] > 0  # LayerNorm, mean: elementwise
    # text rows: T of the sequence's rows in W, scores and PV; none in W_in (image tokens only)
    text = T / want["seq"] * (want["w"] + want["scores"] + want["pv"])
    assert parts["transformer"].text_flops == pytest.approx(text, rel=1e-12)
    assert parts["transformer"].int8_flops == 0
    assert not any(n.conv3x3 for n in report.nodes)  # the stand-in VAE is one 8x8 stride-8 conv


def test_bytes_and_roofline_floor(graph_path):
    report = account(graph_path, IO, Sizes(batch=1, ensemble=2, height=32, width=48))
    conv = next(n for n in report.nodes if n.op_type == "Conv")
    # image [1,3,32,48] + weight [4,3,8,8] + latent [1,4,4,6], float32
    assert conv.bytes == 4 * (3 * 32 * 48 + C * 3 * 64 + C * 4 * 6)
    assert all(n.bytes == 0 for n in report.nodes if n.op_type in ("Reshape", "Shape"))
    peaks = {"conv": 1e9, "gemm": 2e9, "conv-int8": 4e9, "gemm-int8": 8e9}
    floor = report.floor_seconds(peaks, bandwidth=1e12)  # bandwidth huge: compute-bound everywhere that computes
    gemm = sum(n.flops for n in report.nodes if n.kind in ("linear", "attention"))
    assert floor == pytest.approx(conv.flops / 1e9 + gemm / 2e9 + sum(
        n.bytes / 1e12 for n in report.nodes if n.kind == "other"), rel=1e-9)


def test_int8_gemms_are_recognised(tmp_path):
    path = ditf_shaped_graph(tmp_path / "model.onnx", int8_linear=True)
    report = account(path, IO, Sizes(batch=1, ensemble=2, height=32, width=48))
    want = hand_counts(1, 2, 32, 48)
    assert report.part("transformer").int8_flops == want["w_in"]
    int8_nodes = [n for n in report.nodes if n.int8]
    assert [n.op_type for n in int8_nodes] == ["MatMul"] and int8_nodes[0].kind == "linear"


def test_fused_attention_counts_the_same(graph_path, tmp_path):
    """The CPU variant's MultiHeadAttention is counted as the two dense matmuls it replaces."""
    # [B, S, D] single-head attention as MultiHeadAttention (what cpu_rewrite writes, minus the layout)
    model = onnx.load(str(graph_path))
    nodes = [n for n in model.graph.node if n.output[0] not in ("h_t", "scores", "probs", "attn")]
    at = next(i for i, n in enumerate(nodes) if n.output[0] == "h") + 1
    nodes.insert(at, helper.make_node("MultiHeadAttention", ["h", "h", "h"], ["attn"], domain="com.microsoft",
                                      num_heads=1, scale=1.0))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    fused = tmp_path / "fused.onnx"
    onnx.save(model, str(fused))
    sizes = Sizes(batch=1, ensemble=2, height=32, width=48)
    dense, mha = account(graph_path, IO, sizes), account(fused, IO, sizes)
    assert mha.part("transformer").flops["attention"] == dense.part("transformer").flops["attention"]
    assert mha.part("transformer").text_flops == pytest.approx(dense.part("transformer").text_flops)


def test_inputs_of_another_rank_are_a_flop_error(graph_path):
    from ditf_calib.graph_io import Axis, GraphIO, TensorIO

    noise = TensorIO("noise", (Axis("batch"), C, Axis("height", 8), Axis("width", 8)), role="noise")
    io = GraphIO(inputs=(IO.inputs[0], noise), outputs=IO.outputs, geometry=IO.geometry)
    with pytest.raises(FlopError, match="axes"):
        account(graph_path, io, Sizes(batch=1, ensemble=2, height=32, width=48))


def test_counts_agree_with_torch_flop_counter(flux_tiny_dir, flux_tiny_export, tmp_path):
    """The ONNX count of the flux-tiny export against torch's own FlopCounterMode on the PyTorch feature graph it
    was exported from, part by part: convolutions and linear layers equal; attention, which FlopCounterMode does
    not count on the CPU (its fp32 scaled_dot_product_attention kernel has no FLOP formula there), by hand."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ditf_export.export import ExportRequest, build_graph, plan
    from ditf_runtime.manifest import Manifest

    m = Manifest.load(flux_tiny_export)
    g = m.geometry
    io = diffusion_io(g.latent_channels, g.feature_channels, g.vae_stride, g.feature_stride // g.vae_stride)
    sizes = Sizes(batch=1, ensemble=2, height=64, width=96)
    the_plan = plan(ExportRequest(model=str(flux_tiny_dir), out=tmp_path / "x", layer=3, discard="7,41",
                                  ensemble=2, image_size=128, text_max_length=32))
    graph = build_graph(the_plan).graph
    feed = {k: torch.from_numpy(v) for k, v in io.random_inputs(sizes, seed=0).items()}
    with torch.no_grad(), FlopCounterMode(display=False) as vae:
        graph.encoder(feed["image"])
    with torch.no_grad(), FlopCounterMode(display=False) as whole:
        graph(feed["image"], feed["noise"])
    report = account(flux_tiny_export / "model.onnx", io, sizes)
    vae_part, transformer = report.part("vae"), report.part("transformer")
    assert vae_part.flops["conv"] + vae_part.flops["linear"] == vae.get_total_flops()
    assert transformer.flops["linear"] == whole.get_total_flops() - vae.get_total_flops()
    cells = (64 // 8) * (96 // 8)  # the VAE's mid-block attention: one head of 32 channels over the latent cells
    assert vae_part.flops["attention"] == 2 * 2 * cells * cells * 32
    tokens = 32 + (64 // 16) * (96 // 16)  # text + image tokens; 3 blocks of 4 heads of 16, E = 2
    assert transformer.flops["attention"] == 3 * 2 * 2 * 2 * 4 * tokens * tokens * 16
    # 3x3 stride-1 convolutions: every conv module but the stride-2 downsamplers and the 1x1 shortcut
    per_module = {name: sum(ops.values()) for name, ops in vae.get_flop_counts().items()}
    leaves = [n for n in per_module if n.rsplit(".", 1)[-1] in ("conv_in", "conv1", "conv2", "conv_out")]
    assert sum(n.flops for n in report.nodes if n.conv3x3) == sum(per_module[n] for n in leaves)

"""INT8 encoder convolutions (ditf_calib.int8_conv, Int8Config.convs) and what onnxruntime makes of them:
its optimised graph, not the intent. Calibrated on examples/images through the flux-tiny graph."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditf_calib import graph as G
from ditf_calib.data import load_calibration_set
from ditf_calib.graph_io import diffusion_io
from ditf_calib.int8 import Int8Config, quantize
from ditf_calib.int8_conv import plan_convs
from ditf_runtime.backends.onnxrt import create_session
from ditf_runtime.cpu_rewrite import integer_convs
from ditf_runtime.manifest import Manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def optimised_ops(model: onnx.ModelProto | Path, tmp_path: Path) -> Counter:
    """The op types of onnxruntime's own optimised graph (CPU provider, default level)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph.node)


def one_conv(output_qdq: bool) -> onnx.ModelProto:
    """Q/DQ input -> Conv (int8 weights per output channel, float bias) [-> Q/DQ output]."""
    rng = np.random.default_rng(0)
    c = 32
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (c, c, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(c, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(c, np.int8), "wz"),
             numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(np.zeros(c, np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w", "b"], ["y0" if output_qdq else "y"], pads=[1, 1, 1, 1])]
    if output_qdq:
        nodes += [helper.make_node("QuantizeLinear", ["y0", "s", "z"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_onnxruntime_fuses_a_qdq_conv_only_with_a_quantized_output(tmp_path):
    """Why int8_conv re-quantizes conv outputs: DQ -> Conv -> float stays an FP32 convolution."""
    assert optimised_ops(one_conv(output_qdq=False), tmp_path)["Conv"] == 1
    fused = optimised_ops(one_conv(output_qdq=True), tmp_path)
    assert fused["QLinearConv"] == 1 and fused["Conv"] == 0


@pytest.fixture(scope="module")
def quantized(flux_tiny_export):
    manifest = Manifest.load(flux_tiny_export)
    g = manifest.geometry
    io = diffusion_io(g.latent_channels, g.feature_channels, g.vae_stride, g.feature_stride // g.vae_stride)
    calib = load_calibration_set(EXAMPLES, io=io, long_side=128, ensemble=2)
    fp32 = G.load(flux_tiny_export / "model.onnx")
    model, report = quantize(fp32, list(calib.feeds()), Int8Config(convs=True, protect_channels=(7, 41),
                                                                   protect_width=g.feature_channels))
    return fp32, model, report, calib.batched((128, 128))


def test_every_encoder_conv_is_quantized_and_the_latent_stays_fp32(quantized):
    fp32, model, report, _ = quantized
    plan = plan_convs(fp32)
    encoder_convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    assert len(plan.convs) == len(encoder_convs) == report.convs == 18  # flux-tiny's transformer has no conv
    assert report.requantized_outputs == 17
    last = encoder_convs[-1].output[0]  # conv_out: its output is the latent's moments
    assert last not in plan.requantized
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[last].op_type == "Conv"  # fp32 output...
    assert producers[producers[last].input[0]].op_type == "DequantizeLinear"  # ...from int8 input and weights
    as_dict = report.to_dict()
    assert as_dict["conv_layers_quantized"] == 18 and as_dict["conv_outputs_requantized"] == 17


def test_the_cpu_variant_runs_every_int8_conv_as_qlinearconv(quantized, tmp_path):
    """onnxruntime's own QDQ fusion takes only some of them in the whole graph; integer_convs states all."""
    _, model, _, feed = quantized
    path = G.save(model, tmp_path / "q.onnx", keep_in_memory=True)
    rewritten = onnx.load(str(path), load_external_data=False)
    assert integer_convs(rewritten) == {"int8_convs": 17}
    onnx.save(rewritten, str(tmp_path / "q.cpu.onnx"))
    variant = optimised_ops(tmp_path / "q.cpu.onnx", tmp_path)
    assert variant["QLinearConv"] == 17 and variant["Conv"] == 1  # (as written, onnxruntime 1.32 fuses 6 of 17)
    # ditf's session factory: exact integer kernels on every x86 CPU class (VNNI or not)
    a = create_session(path).run(None, feed)[0]
    b = create_session(tmp_path / "q.cpu.onnx").run(None, feed)[0]
    # the same integer arithmetic; a re-quantized output may land one int8 step apart after fp32 rounding
    assert np.abs(a - b).max() / np.abs(a).max() < 2e-2


def test_convs_are_off_by_default(quantized, flux_tiny_export):
    fp32 = quantized[0]
    calib_feed = {k: v[:1] for k, v in quantized[3].items()}
    _, report = quantize(fp32, [calib_feed], Int8Config(protect_channels=(7, 41), protect_width=64))
    assert report.convs == 0 and report.to_dict()["conv_layers_quantized"] == 0


def test_int8_convs_needs_int8(flux_tiny_dir, tmp_path):
    from ditf_export.errors import ExportInputError
    from ditf_export.export import ExportRequest, plan

    with pytest.raises(ExportInputError, match="--int8-convs"):
        plan(ExportRequest(model=str(flux_tiny_dir), out=tmp_path / "x", layer=3, int8_convs=True))

"""Calibration statistics are streamed: each GEMM input is reduced to its histogram inside the graph, as it
is made, never fetched whole; the numbers are numpy's.

Before, the histogram pass fetched every quantized input's raw activations as graph outputs of one run:
onnxruntime kept them all alive until the run ended, then copied them to numpy (FLUX.1-dev stand-in,
640 px: int8 export at 1.78x the kept weights). The memory test below measures a calibration's peak RSS
in a child process on a chain of 24 linear layers, each input 32 MiB: fetched whole, that was 30 inputs'
worth (1.01 GB: every input alive in onnxruntime, then copied to numpy); streamed, 5.6 (0.19 GB: one
input's masked, scaled and binned copies beside the chain's own live tensors). Threshold: 10 inputs' worth.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditf_calib import graph as G
from ditf_calib.int8 import Int8Config, calibrate
from ditf_calib.stats import METHODS, Histogram, amax_from_histogram

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _binned_in_graph(x: np.ndarray, hist: Histogram, mask: np.ndarray | None) -> tuple[np.ndarray, float, int]:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    probes = G.histogram_probes(model, {"y": (hist.bins, hist.scale, mask)})
    counts, amax, size = G.session(model).run(list(probes["y"]), {"x": x})
    return counts, float(amax), int(size)


@pytest.mark.parametrize("bins,masked", [(2048, True), (2048, False), (37, True)])
def test_histogram_probe_bins_exactly_like_numpy(bins, masked):
    rng = np.random.default_rng(bins)
    x = (rng.standard_normal((3, 517, 48)) * rng.uniform(0.1, 30, 48)).astype(np.float32)
    mask = rng.uniform(0.01, 2.0, 48).astype(np.float32) if masked else None
    if masked:
        mask[[3, 17]] = 0.0  # outlier channels are zeroed
    absx = np.abs(x.reshape(-1, 48) * (mask if masked else 1.0))
    upper = float(absx.max()) * 1.0000001  # values at the very top land in the last bin, as in numpy
    want, got = Histogram(upper, bins), Histogram(upper, bins)
    want.add(absx)
    got.add_counts(*_binned_in_graph(x, got, mask))
    np.testing.assert_array_equal(got.counts, want.counts)
    assert got.seen_max == want.seen_max and got.counts.sum() == x.size


def test_counts_that_do_not_add_up_are_refused():
    h = Histogram(1.0, 4)
    with pytest.raises(ValueError, match="overflowed"):
        h.add_counts(np.array([1, 2, -3, 0], np.int32), 0.5, 0)


def test_calibration_ranges_equal_numpy_histograms_of_the_raw_tensors(flux_tiny_export):
    """The streamed pass gives every GEMM input the amax that numpy histograms of its fetched activations
    give, for each calibration method (a real exported graph and real images)."""
    from ditf_calib.data import load_calibration_set
    from ditf_calib.graph_io import diffusion_io

    model = G.load(flux_tiny_export / "model.onnx")
    io = diffusion_io(latent_channels=16, feature_channels=64, vae_stride=8, patch_size=2)
    feeds = list(load_calibration_set(IMAGES, io=io, long_side=96, ensemble=2, max_images=2).feeds())
    from ditf_calib.graph import ensure_node_names, gemm_to_matmul

    gemm_to_matmul(model)
    ensure_node_names(model)
    groups, _ = calibrate(model, feeds, Int8Config())
    assert len(groups) > 4
    fetch = onnx.ModelProto()
    fetch.CopyFrom(model)
    G.add_outputs(fetch, [g.tensor for g in groups])
    sess = G.session(fetch)
    hists = {g.tensor: Histogram(float((g.channel_max * np.abs(g.mask)).max())) for g in groups}
    for feed in feeds:
        for g, x in zip(groups, sess.run([g.tensor for g in groups], feed)):
            hists[g.tensor].add(np.abs(x.reshape(-1, g.channels) * g.mask))
    assert [g.amax for g in groups] == [hists[g.tensor].seen_max for g in groups]
    for method in METHODS:
        again, _ = calibrate(model, feeds, Int8Config(calibration=method))
        assert [g.amax for g in again] == [amax_from_histogram(hists[g.tensor], method) for g in groups], method


CHILD = textwrap.dedent("""
    import json, resource
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from ditf_calib.int8 import Int8Config, calibrate

    rows, width, layers = 128 << 10, 64, 24  # each layer's input: 128 Ki x 64 floats = 32 MiB
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / 8).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"linear{i}"))
        x = f"h{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [rows, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    feeds = [{"x": rng.standard_normal((rows, width)).astype(np.float32)}]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    groups, _ = calibrate(model, feeds, Int8Config(smooth_alpha=0.5))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"grew": after - before, "tensor": rows * width * 4, "groups": len(groups)}))
""")


def test_calibration_holds_one_inputs_statistics_at_a_time():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["groups"] == 24
    assert r["grew"] < 10 * r["tensor"], f"calibration grew {r['grew'] / r['tensor']:.1f} inputs' worth"

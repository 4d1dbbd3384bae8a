"""Calibration and range-check probes reduce each tensor as it is made, so it is freed at once.

The probed graph's peak memory is measured (peak RSS of a child process): a chain of 24 Adds, each
making a 64 MiB tensor, all 24 probed. Run in onnxruntime's default order, the probes ran after the
whole chain and every tensor stayed alive (about 24 x 64 MiB); in the order ditf_calib.graph.session
asks for, about three tensors are alive at a time. Threshold: under 8 tensors' worth above the
session's resident memory before the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from onnx import TensorProto, helper
    from ditf_calib.graph import reduction_probes, session

    n, links = 16 << 20, 24  # 16 Mi floats = 64 MiB per tensor
    nodes, x, probed = [], "x", {}
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    for i in range(links):
        nodes.append(helper.make_node("Add", [x, "one"], [f"t{i}"], name=f"add{i}"))
        x = f"t{i}"
        probed[x] = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    probes = reduction_probes(model, dict(probed))
    sess = session(model, threads=1)
    feed = {"x": np.zeros(n, np.float32)}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = sess.run([p for pair in probes.values() for p in pair], feed)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"grew": after - before, "tensor": n * 4, "absmax_last": float(out[-2])}))
""")


def test_probed_tensors_are_freed_as_they_are_made():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["absmax_last"] == 24.0  # the probes computed: the last tensor is 0 + 24 x 1
    assert r["grew"] < 8 * r["tensor"], f"the probed run grew {r['grew'] / r['tensor']:.1f} tensors' worth"

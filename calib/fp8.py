"""FP8 E4M3: the INT8 quantizer of int8.py in the FP8 format (qformat.FP8), with FP8's own defaults, and
optional Q/DQ on attention's two matrix products.

What `--precision fp8` writes (fp8_config): Q/DQ on the inputs of every linear layer, activations per
tensor (scale = amax / 448), weights per output channel stored as FLOAT8E4M3FN; the residual stream,
norms, modulation, RoPE, softmax and the feature head stay FP32, as in every other precision. The massive
channels keep their FP32 path (int8.py's outlier split), SmoothQuant is off: FP8's floating point keeps
small channels' relative precision next to large ones, so the per-channel scaling INT8 needs only moves
error around (docs/precision.md has the measurements behind each default).

Attention (`Int8Config.attention`): Q/DQ on QK^T's inputs (q and k, each per tensor, calibrated) and on
PV's (the softmax output with the fixed scale 1/448, its range being [0, 1], and v per tensor): the
pattern TensorRT fuses into FP8 multi-head attention on compute capability >= 8.9. Off by default: see
docs/precision.md for what it costs in accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import helper

from .graph import GraphIndex
from .qformat import QFormat

# The softmax output lies in [0, 1]: its scale needs no calibration (ModelOpt and TensorRT use the same).
SOFTMAX_AMAX = 1.0
# fp8 defaults over Int8Config's (INT8's): no SmoothQuant; max calibration (its amax search on FP8's grid
# would need a histogram method of its own, and max kept the worst token best: docs/precision.md)
FP8_DEFAULTS = dict(number_format="fp8", smooth_alpha=None)


def fp8_config(config):
    """An int8.Int8Config (calibration method, protected channels, convs) turned into FP8's."""
    return replace(config, **FP8_DEFAULTS)


@dataclass
class AttentionPlan:
    """Attention's matrix products: QK^T (MatMul -> Softmax) and PV (Softmax -> MatMul), and the per-tensor
    amax of every input to quantize (q, k, v calibrated by int8._calibrate_attention; the softmax output fixed)."""

    matmuls: list[onnx.NodeProto] = field(default_factory=list)
    amax: dict[str, float] = field(default_factory=dict)

    def calibrated(self) -> list[str]:
        return [t for t, a in self.amax.items() if a is None]


def plan_attention(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> AttentionPlan:
    """Every MatMul of two computed tensors that feeds a Softmax (QK^T) or reads one (PV)."""
    idx = GraphIndex(model.graph)
    plan = AttentionPlan()
    for n in model.graph.node:
        if n.op_type != "MatMul" or any(idx.is_const(i) for i in n.input) or any(s in n.name for s in exclude):
            continue
        feeds_softmax = any(c.op_type == "Softmax" for c in idx.consumers.get(n.output[0], []))
        p = idx.producer.get(n.input[0])
        reads_softmax = p is not None and p.op_type == "Softmax"
        if not (feeds_softmax or reads_softmax):
            continue
        plan.matmuls.append(n)
        plan.amax.setdefault(n.input[0], SOFTMAX_AMAX if reads_softmax else None)
        plan.amax.setdefault(n.input[1], None)
    return plan


def insert_attention_qdq(model: onnx.ModelProto, plan: AttentionPlan, writer, fmt: QFormat) -> int:
    """Rewrite `model` in place: a Q/DQ pair (per tensor, zero point 0 in `fmt`) on both inputs of every
    planned MatMul, one pair per MatMul input. writer: int8._QdqWriter. Returns the MatMuls rewritten."""
    fresh, init = writer.fresh, writer.init
    before: dict[str, list[onnx.NodeProto]] = {}
    names = {n.name for n in plan.matmuls}
    for n in model.graph.node:
        if n.name not in names:
            continue
        nodes = []
        for pos, x in enumerate(list(n.input)):
            scale = init(np.array(max(plan.amax[x], 1e-8) / fmt.qmax, np.float32), x + "_scale")
            zp = writer.zero_point(x + "_zp", fmt)
            q, dq = fresh(x + "_q"), fresh(x + "_dq")
            nodes += [helper.make_node("QuantizeLinear", [x, scale, zp], [q], name=q),
                      helper.make_node("DequantizeLinear", [q, scale, zp], [dq], name=dq)]
            n.input[pos] = dq
        before[n.name] = nodes
    new = []
    for n in model.graph.node:
        new.extend(before.get(n.name, []))
        new.append(n)
    del model.graph.node[:]
    model.graph.node.extend(new)
    return len(before)

"""INT8 for the VAE encoder's convolutions (Int8Config.convs), calibrated like the GEMMs of int8.py.

Which convolutions: those of the image encoder, found from the graph's structure (nodes computed from
the image input's data and not from the noise's, as ditf_calib.flops assigns parts), with a constant
4-D weight. A transformer's patch-embedding conv reads the residual stream's input and stays FP32.

Placement, chosen from what onnxruntime's CPU kernels actually fuse (its optimised graph, checked by
tests/test_calib_int8_conv.py), not from intent:
- Q/DQ on a conv's input and int8 weights alone (DQ -> Conv -> float) is NOT fused: onnxruntime
  dequantizes the weights and runs the FP32 convolution, with an extra quantize on top;
- with a Q/DQ pair on the conv's output too (DQ -> Conv -> Q), it becomes QLinearConv (NHWC, int8
  weights per output channel, VNNI kernels on CPUs that have them).
So each encoder conv gets: its input quantized per tensor (symmetric, zero point 0), int8 weights with
one scale per output channel (axis 0), and its output re-quantized per tensor. TensorRT fuses the same
Q/DQ pattern into an int8-in/int8-out convolution. The exception is an encoder's last conv (whose
output reaches the latent without passing another conv): its output stays FP32, so the latent is
never rounded to 8 bits (its input and weights are still int8; onnxruntime runs it as FP32).

Ranges come from the same calibration passes as the GEMM inputs (int8.py: max |x| first, then a
histogram and the configured method). No SmoothQuant or outlier split here: a conv's channels are
mixed spatially, and the VAE has no massive channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import onnx
from onnx import helper

from ditf_runtime.manifest import IMAGE_INPUT, NOISE_INPUT

from .graph import GraphIndex
from .qformat import INT8, QFormat


@dataclass
class ConvPlan:
    """The encoder convs to quantize, and which of their outputs are re-quantized."""

    convs: list[onnx.NodeProto] = field(default_factory=list)
    requantized: set[str] = field(default_factory=set)  # conv output tensors that get a Q/DQ pair

    def tensors(self) -> list[str]:
        """The tensors to calibrate: conv inputs, then re-quantized outputs (each once)."""
        return list(dict.fromkeys([c.input[0] for c in self.convs] + sorted(self.requantized)))


def data_from(graph: onnx.GraphProto, source: str) -> set[str]:
    """Tensors computed from `source`'s data (shape arithmetic, Shape/Size, carries none)."""
    carried = {source}
    for n in graph.node:  # topological order
        if n.op_type in ("Shape", "Size"):
            continue
        if any(i in carried for i in n.input if i):
            carried.update(n.output)
    return carried


def plan_convs(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> ConvPlan:
    graph = model.graph
    idx = GraphIndex(graph)
    image, noise = data_from(graph, IMAGE_INPUT), data_from(graph, NOISE_INPUT)
    encoder = {o for n in graph.node for o in n.output if o in image and o not in noise}
    plan = ConvPlan()
    for n in graph.node:
        w = n.input[1] if len(n.input) > 1 else ""
        if (n.op_type != "Conv" or n.output[0] not in encoder or w not in idx.inits
                or len(idx.inits[w].dims) != 4 or any(s in n.name or s in w for s in exclude)):
            continue
        plan.convs.append(n)
    for c in plan.convs:
        if _reaches_another_conv(idx, c.output[0], encoder):
            plan.requantized.add(c.output[0])
    return plan


def _reaches_another_conv(idx: GraphIndex, tensor: str, encoder: set[str]) -> bool:
    """Whether some path from `tensor` meets a Conv before it leaves the encoder."""
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        for user in idx.consumers.get(t, []):
            if user.op_type == "Conv":
                return True
            for o in user.output:
                if o in encoder and o not in seen:
                    seen.add(o)
                    stack.append(o)
    return False


def insert_conv_qdq(model: onnx.ModelProto, plan: ConvPlan, amax: Mapping[str, float], writer,
                    fmt: QFormat = INT8) -> int:
    """Rewrite `model` in place: Q/DQ inputs, per-channel weights in `fmt`, Q/DQ outputs. Returns the count.
    writer: int8._QdqWriter (fresh names; new tensors written through its TensorStore, which also reads the
    FP32 weights: an export's graph has them on disk)."""
    idx = GraphIndex(model.graph, writer.store)
    fresh, init = writer.fresh, writer.init

    def qdq(x: str, scale: np.float32, base: str) -> tuple[list, str]:
        s, z = init(np.array(scale, np.float32), base + "_scale"), writer.zero_point(base + "_zp", fmt)
        q, dq = fresh(base + "_q"), fresh(base + "_dq")
        return [helper.make_node("QuantizeLinear", [x, s, z], [q], name=q),
                helper.make_node("DequantizeLinear", [q, s, z], [dq], name=dq)], dq

    replace: dict[str, list] = {}
    for conv in plan.convs:
        x, w = conv.input[0], conv.input[1]
        nodes, xdq = qdq(x, np.float32(max(amax[x], 1e-8) / fmt.qmax), x)
        weight = idx.array(w).astype(np.float32)
        wscale = fmt.scale(np.abs(weight).reshape(weight.shape[0], -1).max(axis=1))
        wq = fmt.encode(weight / wscale[:, None, None, None])
        wdq = fresh(w + "_dq")
        nodes.append(helper.make_node("DequantizeLinear", [writer.quantized(wq, w + f"_{fmt.name}", fmt),
                                      init(wscale, w + "_scale"), writer.zero_point(w + "_zp", fmt, len(wscale))],
                                      [wdq], axis=0, name=wdq))
        y = conv.output[0]
        inputs = [xdq, wdq, *conv.input[2:]]
        if y in plan.requantized:
            raw = fresh(y + "_fp32")
            nodes.append(helper.make_node("Conv", inputs, [raw], name=conv.name, **_attrs(conv)))
            out_nodes, _ = qdq(raw, np.float32(max(amax[y], 1e-8) / fmt.qmax), y)
            out_nodes[-1].output[0] = y  # the DQ writes the conv's old output name: consumers unchanged
            nodes += out_nodes
        else:
            nodes.append(helper.make_node("Conv", inputs, [y], name=conv.name, **_attrs(conv)))
        replace[conv.name] = nodes
    new = []
    for n in model.graph.node:
        new.extend(replace.get(n.name, [n]))
    del model.graph.node[:]
    model.graph.node.extend(new)
    return len(replace)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}

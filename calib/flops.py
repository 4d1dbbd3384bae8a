"""FLOPs and bytes of an exported graph at one concrete size, per node and per part.

Counted from the ONNX itself: every tensor's shape at the given (B, E, H, W) comes from onnxruntime's
symbolic shape inference on a graph-only copy whose inputs are made concrete
(ditf_runtime.onnx_shapes: nothing big is read), and each node's work follows from its op and shapes:

- GEMM-like ops (MatMul, Gemm, their integer / Q-linear / fused forms): 2 * M * K * N per batch entry.
  "linear" when one operand is a weight (an initializer, possibly behind DequantizeLinear), "attention"
  when both are activations (scores Q K^T and the weighted sum P V).
- Convolutions (Conv, QLinearConv, ConvInteger, FusedConv): 2 * output elements * C_in/groups * kernel.
- MultiHeadAttention (onnxruntime's fused op): 2 * B * heads * S * L * (head size of Q/K + of V).
- Every other op: one FLOP per output element (a rough measure; those ops are bound by memory).
- Bytes: each node's inputs and outputs once (views such as Reshape move nothing). A floor on traffic.
- int8: a GEMM or conv whose operands are integer tensors or come out of DequantizeLinear.

Parts of the DiTF graph (image + noise -> features) are read from the graph's structure, not from node
names, so rewritten graphs (Q/DQ, fused attention) are accounted the same way:
- "vae": nodes carrying data from the image input and none from the noise;
- "transformer": nodes whose work grows with the ensemble size E;
- "head": the rest (after the ensemble mean: discard, LayerNorm, modulation, layout).
A transformer node's FLOPs are split between text and image tokens by its output rows (query rows for
attention): rows = text + k * image tokens, solved from a second size with one more row of tokens.

Torch-free (onnx + onnxruntime's shape inference tool).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from ditf_runtime.onnx_shapes import graph_only, infer_shapes

from .graph_io import ENSEMBLE, HEIGHT, IMAGE, NOISE, GraphIO, Sizes

PARTS = ("vae", "transformer", "head")
KINDS = ("conv", "linear", "attention", "other")

_GEMMS = {"MatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "FusedMatMul",
          "DynamicQuantizeMatMul", "QGemm", "FusedGemm"}
_CONVS = {"Conv", "QLinearConv", "ConvInteger", "FusedConv", "NhwcConv", "NchwcConv"}
_ATTENTION = {"MultiHeadAttention"}
_INTEGER_OPS = {"MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "DynamicQuantizeMatMul", "QGemm",
                "QLinearConv", "ConvInteger"}
# Ops that only relabel a buffer or compute shapes: no arithmetic, no traffic worth counting.
_FREE = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant",
         "ConstantOfShape", "Range"}
_SHAPE_ONLY = {"Shape", "Size"}  # their outputs carry no data from their input
_BYTES = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.DOUBLE: 8,
          TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT32: 4, TensorProto.INT64: 8,
          TensorProto.BOOL: 1, TensorProto.INT16: 2, TensorProto.UINT16: 2}


class FlopError(ValueError):
    """The graph's shapes could not be inferred at the requested size."""


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    kind: str  # one of KINDS
    part: str  # one of PARTS
    flops: float
    bytes: float
    int8: bool = False
    text_fraction: float = 0.0  # transformer nodes: share of the FLOPs computing text-token rows
    conv3x3: bool = False  # a dense 3x3 stride-1 convolution (what Winograd F(2x2, 3x3) would speed up)


@dataclass(frozen=True)
class PartCost:
    flops: dict[str, float]  # kind -> FLOPs
    bytes: float
    int8_flops: float
    text_flops: float

    @property
    def total(self) -> float:
        return float(sum(self.flops.values()))

    @property
    def gemm_flops(self) -> float:
        """Convolution, linear and attention FLOPs: the work that compute peaks are quoted for."""
        return float(sum(v for k, v in self.flops.items() if k != "other"))


@dataclass
class FlopReport:
    sizes: Sizes
    nodes: list[NodeCost] = field(default_factory=list)

    def part(self, name: str) -> PartCost:
        flops: dict[str, float] = {k: 0.0 for k in KINDS}
        nbytes = int8 = text = 0.0
        for n in self.nodes:
            if n.part != name:
                continue
            flops[n.kind] += n.flops
            nbytes += n.bytes
            int8 += n.flops if n.int8 else 0.0
            text += n.flops * n.text_fraction
        return PartCost(flops, nbytes, int8, text)

    def parts(self) -> dict[str, PartCost]:
        return {p: self.part(p) for p in PARTS}

    @property
    def total_flops(self) -> float:
        return float(sum(n.flops for n in self.nodes))

    def floor_seconds(self, peaks: Mapping[str, float], bandwidth: float, part: str | None = None,
                      conv3x3_speedup: float = 1.0) -> float:
        """Roofline floor: per node max(FLOPs / peak of its kind and precision, bytes / bandwidth), summed.

        peaks: FLOP/s keyed "conv", "gemm", "conv-int8", "gemm-int8" (attention and linear use "gemm").
        conv3x3_speedup: divides the FLOPs of 3x3 stride-1 convolutions (2.25: Winograd F(2x2, 3x3)'s
        multiplies, its transforms taken as free), for what-if floors.
        """
        total = 0.0
        for n in self.nodes:
            if part is not None and n.part != part:
                continue
            key = {"conv": "conv", "linear": "gemm", "attention": "gemm"}.get(n.kind)
            flops = n.flops / conv3x3_speedup if n.conv3x3 else n.flops
            compute = 0.0 if key is None else flops / peaks[key + ("-int8" if n.int8 else "")]
            total += max(compute, n.bytes / bandwidth)
        return total


# -- per-node cost ----------------------------------------------------------------------------------

def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _gemm_flops(node: onnx.NodeProto, shapes) -> tuple[float, int]:
    """(FLOPs, output rows M) of a GEMM-like node."""
    a = shapes[node.input[0]][0]
    out = shapes[node.output[0]][0]
    if node.op_type in ("Gemm", "QGemm", "FusedGemm"):
        attrs = _attrs(node)
        k = a[0] if attrs.get("transA", 0) else a[-1]
        rows = a[1] if attrs.get("transA", 0) else a[0]
        return 2.0 * _numel(out) * k, rows
    k = a[-1]  # every other GEMM (QLinearMatMul too) has A as input 0
    rows = a[-2] if len(a) >= 2 else 1
    return 2.0 * _numel(out) * k, rows


def _conv_flops(node: onnx.NodeProto, shapes) -> float:
    w_index = 3 if node.op_type == "QLinearConv" else 1
    w = shapes[node.input[w_index]][0]  # [C_out, C_in / groups, k...]
    out = shapes[node.output[0]][0]
    return 2.0 * _numel(out) * _numel(w[1:])


def _mha_flops(node: onnx.NodeProto, shapes) -> tuple[float, int]:
    """Heads split the hidden size: 2 * S * L * (D_qk + D_v) per sequence whatever their number."""
    q = shapes[node.input[0]][0]
    k = shapes[node.input[1]][0]
    v = shapes[node.input[2]][0]
    if len(q) != 3 or len(k) not in (3, 4):
        raise FlopError(f"{node.name}: MultiHeadAttention with query {q}, key {k}: only [B, S, D] queries are counted")
    b, s, dq = q
    kv_len = k[1] if len(k) == 3 else k[2]
    dv = v[-1] if len(v) == 3 else v[1] * v[3]
    return 2.0 * b * s * kv_len * (dq + dv), s


class _Weights:
    """Which tensors hold constants (initializers, Constant outputs, and DequantizeLinear of those)."""

    def __init__(self, graph: onnx.GraphProto, weight_names: set[str]):
        self.const = set(weight_names) | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.producer = {o: n for n in graph.node for o in n.output}
        for n in graph.node:  # graph order is topological
            if n.op_type in ("DequantizeLinear", "Transpose", "Cast") and n.input[0] in self.const:
                self.const.update(n.output)

    def is_const(self, name: str) -> bool:
        return name in self.const

    def is_int8(self, name: str, shapes) -> bool:
        if name in shapes and shapes[name][1] in (TensorProto.INT8, TensorProto.UINT8):
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"


def _node_cost(node: onnx.NodeProto, shapes, weights: _Weights) -> tuple[str, float, float, bool, int | None]:
    """(kind, FLOPs, bytes, int8, rows) of one node; rows only for GEMMs and attention."""
    op = node.op_type
    if op in _FREE:
        return "other", 0.0, 0.0, False, None
    missing = [t for t in list(node.input) + list(node.output) if t and t not in shapes]
    nbytes = float(sum(_numel(shapes[t][0]) * _BYTES.get(shapes[t][1], 4)
                       for t in list(node.input) + list(node.output) if t and t in shapes))
    if op in _GEMMS or op in _CONVS or op in _ATTENTION:
        if missing:
            raise FlopError(f"shape of {missing[0]} ({op} {node.name}) unknown at this size")
        if op in _CONVS:
            w = node.input[3 if op == "QLinearConv" else 1]
            x = node.input[0]
            int8 = op in _INTEGER_OPS or (weights.is_int8(x, shapes) and weights.is_int8(w, shapes))
            return "conv", _conv_flops(node, shapes), nbytes, int8, None
        if op in _ATTENTION:
            flops, rows = _mha_flops(node, shapes)
            return "attention", flops, nbytes, False, rows
        flops, rows = _gemm_flops(node, shapes)
        b = node.input[3 if op in ("QLinearMatMul", "QGemm") else 1]
        a = node.input[0]
        kind = "linear" if weights.is_const(b) or weights.is_const(a) else "attention"
        int8 = op in _INTEGER_OPS or (weights.is_int8(a, shapes) and weights.is_int8(b, shapes))
        return kind, flops, nbytes, int8, rows
    out = node.output[0] if node.output else ""
    flops = float(_numel(shapes[out][0])) if out in shapes else 0.0
    return "other", flops, nbytes, False, None


# -- parts ------------------------------------------------------------------------------------------

def _carries(graph: onnx.GraphProto, source: str) -> set[str]:
    """Tensors computed from `source`'s data (shape arithmetic does not carry data)."""
    carried = {source}
    for n in graph.node:  # topological order
        if n.op_type in _SHAPE_ONLY:
            continue
        if any(i in carried for i in n.input if i):
            carried.update(n.output)
    return carried


def _sizes_with(sizes: Sizes, axis: str, delta: int) -> Sizes:
    return replace(sizes, **{axis: sizes.of(axis) + delta})


def account(path: str | os.PathLike, io: GraphIO, sizes: Sizes) -> FlopReport:
    """Every node's FLOPs and bytes at `sizes`, with its part and text share (see the module doc)."""
    model = graph_only(path)
    graph = model.graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    dims.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input})
    weights = _Weights(graph, {i.name for i in graph.initializer} | {i.name for i in graph.input
                                                                       if i.name not in io.input_names})
    image, noise = io.input(IMAGE), io.input(NOISE)
    if image is None or noise is None:
        raise FlopError("part accounting needs a graph with an image and a noise input")
    m = io.size_multiple
    costs, rows = {}, {}
    for key, at in (("base", sizes), ("more_e", _sizes_with(sizes, ENSEMBLE, 1)),
                    ("more_rows", _sizes_with(sizes, HEIGHT, m))):
        try:
            shapes = infer_shapes(model, io.input_shapes(at))
        except ValueError as exc:
            raise FlopError(str(exc)) from None
        costs[key], rows[key] = {}, {}
        for node in graph.node:
            kind, flops, nbytes, int8, r = _node_cost(node, shapes, weights)
            costs[key][node.name or id(node)] = (kind, flops, nbytes, int8)
            rows[key][node.name or id(node)] = r
    from_image, from_noise = _carries(graph, image.name), _carries(graph, noise.name)
    stride = io.geometry.feature_stride
    tokens = (sizes.height // stride) * (sizes.width // stride)
    extra_tokens = (m // stride) * (sizes.width // stride)
    report = FlopReport(sizes)
    for node in graph.node:
        key = node.name or id(node)
        kind, flops, nbytes, int8 = costs["base"][key]
        grows_with_e = costs["more_e"][key][1] > flops
        out = set(node.output)
        if grows_with_e:
            part = "transformer"
        elif out & from_image and not out & from_noise:
            part = "vae"
        else:
            part = "head"
        text = 0.0
        r0, r1 = rows["base"][key], rows["more_rows"][key]
        if part == "transformer" and r0 and r1 is not None:
            text = _text_fraction(r0, r1, tokens, extra_tokens)
        report.nodes.append(NodeCost(node.name, node.op_type, kind, part, flops, nbytes, int8, text,
                                     kind == "conv" and _is_conv3x3(node, dims)))
    return report


def _is_conv3x3(node: onnx.NodeProto, dims: Mapping[str, list[int]]) -> bool:
    a = _attrs(node)
    w = dims.get(node.input[3 if node.op_type == "QLinearConv" else 1], [])
    return (len(w) == 4 and w[2:] == [3, 3] and all(v == 1 for v in a.get("strides", [1, 1]))
            and all(v == 1 for v in a.get("dilations", [1, 1])) and a.get("group", 1) == 1)


def _text_fraction(rows: int, rows_more: int, tokens: int, extra_tokens: int) -> float:
    """rows = text + k * image tokens with k in {0, 1}: the text share of the rows (0 if neither fits)."""
    k = (rows_more - rows) / extra_tokens
    if k == 0:
        return 1.0  # the text stream: rows independent of the image
    if k == 1 and rows >= tokens:
        return (rows - tokens) / rows
    return 0.0


# -- sub-graphs, for timing one part at a time --------------------------------------------------------

def part_boundaries(report: FlopReport, model: onnx.ModelProto) -> dict[str, list[str]]:
    """Tensors flowing out of each part into a later part (vae -> transformer -> head)."""
    part_of = {o: n.part for n, node in zip(report.nodes, model.graph.node) for o in node.output}
    order = {p: i for i, p in enumerate(PARTS)}
    out: dict[str, list[str]] = defaultdict(list)
    for n, node in zip(report.nodes, model.graph.node):
        for i in node.input:
            src = part_of.get(i)
            if src is not None and order[src] < order[n.part] and i not in out[src]:
                out[src].append(i)
    return dict(out)

"""FP16 / BF16 typed graphs: low-precision islands in an FP32 graph (docs/DESIGN.md, "Precision").

TensorRT 10 strongly typed / TensorRT 11 builds exactly the types the ONNX states, so precision is
a graph rewrite. What goes low:

- every MatMul / Gemm (linear layers with their weights stored low, and attention's QK^T and PV),
  plus a linear's bias Add (TensorRT fuses it into the GEMM epilogue);
- the Softmax between the two attention MatMuls (TensorRT's fused attention keeps its own FP32
  accumulators; FLUX's q/k RMSNorm bounds the logits, and the range check below sees them);
- Conv (the VAE encoder) in fp16 only: ONNX Conv takes bfloat16 from opset 22, we export opset 20.

What stays FP32: graph inputs/outputs, the residual stream, AdaLN modulation and gates (all
elementwise ops), every normalisation (LayerNorm, RMSNorm, GroupNorm as InstanceNorm), RoPE, GELU,
and the feature head. NVIDIA's own FLUX recipe does the same; the massive-activation channels live
in the residual stream, which is exactly why it stays FP32.

A tensor that changes type gets a new name; original names keep their FP32 meaning (a Cast back
produces them), so value_info and every FP32 consumer stay valid.

Checking on the CPU: the Cast-emulated twin. Each island op reads its inputs and weights rounded
f32 -> low -> f32, computes in FP32 (as TensorRT's GEMMs accumulate) and its output is rounded the
same way, so the twin shows the low format's rounding and overflow (FP16 overflow becomes inf).
The typed graph itself is not a faithful check here:
- bf16: onnxruntime's CPU provider has no bf16 MatMul/Add/Softmax kernels; the typed graph fails to load.
- fp16: onnxruntime loads it, but its CPU provider computes FP16 MatMul/Gemm in FP32 behind inserted
  casts (InsertCastTransformer, "FusedBack_..."), so an FP16 overflow never shows (x @ W = 120000
  comes out as 120000). The typed graph is still run once to prove it loads and agrees with the twin.

FP16 range: before anything is written the twin runs over the given inputs; any low-precision
tensor that overflows (|x| > 65504) or goes non-finite, or any weight beyond FP16's range, is
refused with a message suggesting bf16. The typed graph is what gets written and runs on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from ditf_runtime.onnx_names import Namer
from ditf_runtime.precision import Precision

from .graph import GraphIndex, cast, prune_initializers, reduction_probes, session
from .tensors import TensorStore

LOW_TYPES = {Precision.FP16: TensorProto.FLOAT16, Precision.BF16: TensorProto.BFLOAT16}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
FP16_MAX = 65504.0
# Conv has bfloat16 only from opset 22 (we export opset 20): in bf16 graphs the VAE's convs stay FP32.
ISLAND_OPS = {Precision.FP16: ("MatMul", "Gemm", "Conv"), Precision.BF16: ("MatMul", "Gemm")}
# Below this headroom (65504 / max |x| seen on the check inputs) the report warns: unseen inputs may go further.
FP16_WARN_HEADROOM = 4.0


class PrecisionError(ValueError):
    """The graph cannot be written at the requested precision; the message says what to use instead."""


@dataclass
class Islands:
    """What a rewrite put in low precision."""

    precision: Precision
    emulated: bool
    low_tensors: dict[str, str] = field(default_factory=dict)  # original tensor name -> low-precision name
    ops: dict[str, int] = field(default_factory=dict)  # op type -> count computed low
    weights: int = 0  # initializers stored low
    weight_overflow: list[tuple[str, float]] = field(default_factory=list)  # (name, max |w|) beyond FP16

    def summary(self) -> str:
        ops = ", ".join(f"{n} {k}" for k, n in sorted(self.ops.items()))
        kind = "Cast-emulated" if self.emulated else "typed"
        return f"{kind} {self.precision} islands: {ops}; {self.weights} weights stored {self.precision}"


def _round_array(arr: np.ndarray, precision: Precision) -> np.ndarray:
    import ml_dtypes

    dtype = np.float16 if precision == Precision.FP16 else ml_dtypes.bfloat16
    with np.errstate(over="ignore"):
        return arr.astype(dtype)


def _low_initializer(arr: np.ndarray, name: str, precision: Precision, emulate: bool,
                     store: TensorStore) -> onnx.TensorProto:
    """The weight rounded to `precision`, written through `store` (to disk at once, for an export)."""
    low = _round_array(arr.astype(np.float32), precision)
    if emulate:
        return store.new(low.astype(np.float32), name)
    if precision == Precision.FP16:
        return store.new(low, name)
    # bfloat16: raw bits, so no dependency on onnx's own ml_dtypes handling
    return store.new(np.ascontiguousarray(low).view(np.uint16), name, data_type=TensorProto.BFLOAT16)


def select_islands(model: onnx.ModelProto, precision: Precision, ops: Iterable[str] | None = None,
                   softmax_low: bool = True) -> set[int]:
    """Indices (in model.graph.node) of the nodes computed in low precision."""
    ops = tuple(ISLAND_OPS[precision] if ops is None else ops)
    g = model.graph
    idx = GraphIndex(g)
    nodes = list(g.node)
    pos = {id(n): i for i, n in enumerate(nodes)}
    island = {i for i, n in enumerate(nodes) if n.op_type in ops}
    for i, n in enumerate(nodes):
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        for x, y in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            p = idx.producer.get(x)
            if (p is not None and pos[id(p)] in island and p.op_type in ("MatMul", "Gemm")
                    and len(idx.consumers[x]) == 1 and x not in idx.outputs
                    and idx.is_const(y) and len(idx.dims(y)) <= 1):
                island.add(i)
                break
    if softmax_low:
        for i, n in enumerate(nodes):
            if n.op_type != "Softmax" or n.output[0] in idx.outputs:
                continue
            p = idx.producer.get(n.input[0])
            users = idx.consumers[n.output[0]]
            if (p is not None and p.op_type == "MatMul" and pos[id(p)] in island and users
                    and all(c.op_type == "MatMul" and pos[id(c)] in island for c in users)):
                island.add(i)
    return island


def to_low_precision(model: onnx.ModelProto, precision: Precision | str, *, emulate: bool = False,
                     ops: Iterable[str] | None = None, softmax_low: bool = True,
                     store: TensorStore | None = None) -> tuple[onnx.ModelProto, Islands]:
    """A copy of `model` with its islands in `precision`; graph I/O stays FP32.

    emulate=True gives the Cast-emulated twin: same islands, every low tensor rounded through
    Cast(low) -> Cast(float) and computed in FP32, so it runs where the low kernels do not exist.
    store: reads the weights and writes their low copies one at a time (tensors.GraphRewrite); default:
    an in-memory model.
    """
    precision = Precision.parse(precision)
    if precision not in LOW_TYPES:
        raise ValueError(f"precision {precision}: expected one of {', '.join(LOW_TYPES)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    island = select_islands(out, precision, ops, softmax_low)
    g = out.graph
    rewrite = _IslandRewrite(out, precision, emulate, store)
    nodes = list(g.node)
    pos = {id(n): i for i, n in enumerate(nodes)}
    for i, node in enumerate(nodes):
        if i not in island:
            rewrite.nodes.append(node)
            continue
        rewrite.low_node(node)
        for o in node.output:  # FP32 consumers (and graph outputs) read the original name
            if o in rewrite.idx.outputs or any(pos[id(c)] not in island for c in rewrite.idx.consumers[o]):
                rewrite.back_to_fp32(o)
    del g.node[:]
    g.node.extend(rewrite.nodes)
    g.initializer.extend(rewrite.inits)
    prune_initializers(out)
    produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    keep = [v for v in g.value_info if v.name in produced]
    del g.value_info[:]
    g.value_info.extend(keep)
    return out, rewrite.info


class _IslandRewrite:
    """The state of one to_low_precision pass: new nodes and initializers in order, and the low name of
    every tensor already converted (each is converted once, whoever reads it)."""

    def __init__(self, model: onnx.ModelProto, precision: Precision, emulate: bool, store: TensorStore | None):
        self.precision, self.emulate, self.low = precision, emulate, LOW_TYPES[precision]
        self.idx = GraphIndex(model.graph, store)
        self.fresh = Namer(model)
        self.info = Islands(precision, emulate)
        self.low_name: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def to_low(self, x: str, base: str) -> list[onnx.NodeProto]:
        """Nodes turning FP32 tensor x into its low (or rounded) version `base`."""
        fresh = self.fresh
        if not self.emulate:
            return [cast(x, base, self.low, fresh(base + "_cast"))]
        mid = fresh(base + "_lowbits")
        return [cast(x, mid, self.low, fresh(mid + "_cast")), cast(mid, base, TensorProto.FLOAT, fresh(base + "_cast"))]

    def low_input(self, x: str) -> str:
        """The low-precision name of input x: a low copy of a constant, or a cast of an FP32 tensor."""
        if not x or x in self.low_name:
            return self.low_name.get(x, x)
        name = self.fresh(f"{x}_{self.precision}")
        if self.idx.is_const(x):
            if self.idx.data_type(x) not in FLOAT_TYPES:  # (no such input on the island ops; be safe)
                return x
            arr = self.idx.array(x)
            amax = float(np.abs(arr).max()) if arr.size else 0.0
            if self.precision == Precision.FP16 and amax > FP16_MAX:
                self.info.weight_overflow.append((x, amax))
            self.inits.append(_low_initializer(arr, name, self.precision, self.emulate, self.idx.store))
            del arr
            self.info.weights += 1
        else:
            self.nodes.extend(self.to_low(x, name))
        self.low_name[x] = name
        return name

    def low_node(self, node: onnx.NodeProto) -> None:
        """`node` computed on low inputs, its outputs low (emulated: FP32 compute, output rounded)."""
        inputs = [self.low_input(x) for x in node.input]
        outputs = []
        for o in node.output:
            lo = self.fresh(f"{o}_{self.precision}")
            self.low_name[o] = lo
            self.info.low_tensors[o] = lo
            outputs.append(lo)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(inputs)
        del copy.output[:]
        if self.emulate:  # FP32 compute on rounded inputs, output rounded like the typed op's
            raw = [self.fresh(f"{o}_f32raw") for o in node.output]
            copy.output.extend(raw)
            self.nodes.append(copy)
            for r, lo in zip(raw, outputs):
                self.nodes.extend(self.to_low(r, lo))
        else:
            copy.output.extend(outputs)
            self.nodes.append(copy)
        self.info.ops[node.op_type] = self.info.ops.get(node.op_type, 0) + 1

    def back_to_fp32(self, o: str) -> None:
        lo, name = self.low_name[o], self.fresh(o + "_back")
        if self.emulate:
            self.nodes.append(helper.make_node("Identity", [lo], [o], name=name))
        else:
            self.nodes.append(cast(lo, o, TensorProto.FLOAT, name))


@dataclass
class RangeReport:
    """Largest |x| of every low-precision tensor over the check inputs, and what is non-finite."""

    precision: Precision
    inputs: int
    max_abs: dict[str, float]
    nonfinite: list[str]
    output_nonfinite: bool
    first_output: np.ndarray | None = field(default=None, repr=False)  # the graph's output on the first feed

    @property
    def worst(self) -> tuple[str, float]:
        if not self.max_abs:
            return "", 0.0
        name = max(self.max_abs, key=lambda k: self.max_abs[k])
        return name, self.max_abs[name]

    @property
    def headroom(self) -> float:
        worst = self.worst[1]
        return FP16_MAX / worst if worst > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        name, value = self.worst
        d = {"inputs_checked": self.inputs, "max_abs_low_tensor": value, "max_abs_tensor": name,
             "nonfinite_tensors": self.nonfinite[:20], "output_nonfinite": self.output_nonfinite}
        if self.precision == Precision.FP16:
            d["fp16_headroom"] = self.headroom
        return d


# onnxruntime sessions of a graph whose weights are stored fp16/bf16 and Cast up to fp32 on the CPU (the emulated twin
# does it in the graph, onnxruntime inserts the Casts into the typed fp16 graph): constant folding would keep an fp32
# copy of every weight beside the low one, and pre-pack a second for its GEMMs (FLUX stand-in at real dimensions:
# 2.1x the kept fp32 weights). Unfolded, the Casts run in each call and the weights stay in the low type.
UNFOLDED = ("ConstantFolding",)


def check_ranges(model: onnx.ModelProto, islands: Islands, feeds: Iterable[Mapping[str, np.ndarray]],
                 progress: Callable[[Iterable, str], Iterable] | None = None,
                 store: TensorStore | None = None) -> RangeReport:
    """Run `model` (typed or emulated) on every feed; max |x| and non-finite flags of each island output.

    One session; what it returns per feed is a few scalars per tensor plus the graph output (the first
    feed's output is kept in the report), so memory stays flat on large models. `store`: where the
    weights of a model loaded without them are (tensors.load_graph).
    """
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    low_type = TensorProto.FLOAT if islands.emulated else LOW_TYPES[islands.precision]
    tensors = {lo: low_type for lo in islands.low_tensors.values()}
    final = [o.name for o in probe_model.graph.output]
    probes = reduction_probes(probe_model, tensors)
    sess = session(probe_model, store=store, disabled_optimizers=UNFOLDED)
    names = [n for pair in probes.values() for n in pair] + final
    max_abs = {t: 0.0 for t in islands.low_tensors}
    bad: set[str] = set()
    out_bad = False
    count = 0
    first = None
    back = {lo: o for o, lo in islands.low_tensors.items()}
    items = feeds if progress is None else progress(feeds, f"{islands.precision} range check")
    for feed in items:
        res = dict(zip(names, sess.run(names, dict(feed))))
        count += 1
        for lo, (amax, flag) in probes.items():
            orig = back[lo]
            a = float(res[amax])
            if not np.isfinite(res[flag]) or not np.isfinite(a):
                bad.add(orig)
            else:
                if islands.precision == Precision.FP16 and a > FP16_MAX:  # only if the run did not round it
                    bad.add(orig)
                max_abs[orig] = max(max_abs[orig], a)
        out_bad |= any(not np.isfinite(res[o]).all() for o in final)
        if first is None:
            first = res[final[0]]
    # in graph order: the first one named is where the overflow starts
    return RangeReport(islands.precision, count, max_abs, [t for t in islands.low_tensors if t in bad], out_bad,
                       first)


def refuse_if_out_of_range(islands: Islands, ranges: RangeReport) -> None:
    """Raise PrecisionError naming what overflowed; the fix for FP16 is bf16 (FP32's range)."""
    problems = []
    for name, amax in islands.weight_overflow[:5]:
        problems.append(f"weight {name} has |w| = {amax:.4g} > {FP16_MAX:g}")
    if ranges.nonfinite:
        shown = ", ".join(ranges.nonfinite[:5])
        more = f" (+{len(ranges.nonfinite) - 5} more)" if len(ranges.nonfinite) > 5 else ""
        problems.append(f"{len(ranges.nonfinite)} low-precision tensors overflow or go non-finite, first {shown}{more}")
    if ranges.output_nonfinite:
        problems.append("the graph output is non-finite")
    if not problems:
        return
    if islands.precision == Precision.FP16:
        raise PrecisionError(
            "--precision fp16 refused: FP16 (max 65504) overflows on this model over "
            f"{ranges.inputs} check inputs: " + "; ".join(problems)
            + ". Use --precision bf16 (FP32's range, same speed on Ampere and newer), or fp32."
        )
    raise PrecisionError(f"--precision {islands.precision} refused: " + "; ".join(problems) + ". Use fp32.")

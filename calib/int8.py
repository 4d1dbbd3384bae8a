"""INT8 (and FP8 E4M3) with explicit QuantizeLinear/DequantizeLinear (what TensorRT 10 strongly typed / 11 builds).

The number format is Int8Config.number_format (calib/qformat.py): everything below holds for both, with
127 -> 448 and int8 -> FLOAT8E4M3FN tensors for fp8 (calib/fp8.py: its defaults and attention's Q/DQ).

Our own Q/DQ insertion (onnxruntime's quantize_static would do the basic job but not the outlier
split below, and needs its symbolic-shape pre-pass disabled on these graphs, docs/DESIGN.md, "Export traps"):

- What is quantized: the inputs of every linear layer (MatMul with a constant 2-D weight [K, N];
  Gemm is rewritten as MatMul + Add first). Attention's QK^T / PV matmuls, normalisations, the
  residual stream and the feature head stay FP32: the head has no GEMM, and nothing after the
  backbone's last linear is ever quantized.
- Weights: int8 initializers, symmetric, zero point 0, one scale per output channel (axis 1 of [K, N]).
- Activations: symmetric, zero point 0, one scale per tensor (TensorRT's GEMM inputs), calibrated on
  real images (calib/data.py) with max / percentile / mse / entropy (calib/stats.py).
- Massive channels are never quantized (LLM.int8()-style decomposition): per GEMM input, channels
  whose calibrated max |x| exceeds `outlier_ratio` x the median channel's are zeroed in the quantized
  path and go through a small FP32 GEMM of their own (Gather -> MatMul with those weight rows -> Add).
  FLUX's massive channels (154, 1446) reach the GEMMs through LayerNorm + modulation and would
  otherwise set every activation scale, crushing all other channels to a few levels.
- SmoothQuant: the remaining channels are divided by s_c = max|x_c|^a / max|W_c,:|^(1-a) and the
  weight rows multiplied by s_c (one Mul before the Q node; TensorRT fuses it into the quantize).
- Sensitive layers: optionally the `keep_sensitive` GEMM inputs whose quantisation alone hurts the
  output most stay FP32 (measured on the first calibration feed).

A consumer-shared input (q, k, v read the same tensor) gets one mask/scale, one Q/DQ pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from ditf_runtime.onnx_names import Namer

from .graph import GraphIndex, ensure_node_names, gemm_to_matmul, prune_initializers, reduction_probes, session
from .qformat import FORMATS, INT8, QFormat, new_quantized, zero_point
from .stats import METHODS, Histogram, amax_from_histogram
from .tensors import TensorStore


@dataclass(frozen=True)
class Int8Config:
    # "max" by default: with the massive channels split off and SmoothQuant applied, clipping (percentile,
    # mse, entropy) cost more on the worst token than it saved (bench/bench_precision.py --int8-sweep)
    calibration: str = "max"
    percentile: float = 99.99
    smooth_alpha: float | None = 0.5  # None: no SmoothQuant scaling
    outlier_ratio: float = 16.0
    max_outlier_fraction: float = 0.02  # at most this share of a GEMM input's channels (and 4) stay FP32
    # always FP32 on GEMM inputs `protect_width` wide: the known massive channels (the export's discard
    # list), whether or not this calibration set shows them as outliers
    protect_channels: tuple[int, ...] = ()
    protect_width: int | None = None
    keep_sensitive: int = 0
    exclude: tuple[str, ...] = ()  # substrings of node or weight names whose GEMMs (and convs) stay FP32
    convs: bool = False  # also the image encoder's convolutions (int8_conv.py)
    bins: int = 2048
    number_format: str = "int8"  # "int8" | "fp8" (qformat.FORMATS)
    attention: bool = False  # fp8: also attention's two matrix products (fp8.insert_attention_qdq)

    def __post_init__(self) -> None:
        if self.calibration not in METHODS:
            raise ValueError(f"calibration {self.calibration!r}: expected one of {METHODS}")
        if self.calibration not in self.fmt.methods:
            raise ValueError(f"calibration {self.calibration!r} searches int8's uniform grid: {self.number_format} "
                             f"takes {' or '.join(self.fmt.methods)}")

    @property
    def fmt(self) -> QFormat:
        return FORMATS[self.number_format]


@dataclass
class GemmGroup:
    """One activation tensor and the linear layers that read it."""

    tensor: str
    nodes: list[onnx.NodeProto]
    channels: int
    channel_max: np.ndarray | None = None
    outliers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    smooth: np.ndarray | None = None  # s_c (1 for outliers, which are masked anyway)
    amax: float = 0.0
    sensitivity: float | None = None

    @property
    def mask(self) -> np.ndarray:
        """What multiplies x before quantisation: 0 on outlier channels, 1/s elsewhere."""
        m = np.ones(self.channels, np.float32) if self.smooth is None else (1.0 / self.smooth).astype(np.float32)
        m[self.outliers] = 0.0
        return m


@dataclass
class Int8Report:
    config: Int8Config
    groups: list[GemmGroup]
    skipped: list[str]
    feeds: int
    convs: int = 0
    requantized_outputs: int = 0
    attention_matmuls: int = 0

    def to_dict(self) -> dict[str, Any]:
        quant = self.groups
        name = {"int8": "int8", "fp8": "fp8 E4M3 (FLOAT8E4M3FN, max 448)"}[self.config.number_format]
        return {
            "scheme": f"explicit QuantizeLinear/DequantizeLinear, {name}, symmetric, zero point 0; weights "
                      "per output channel, activations per tensor",
            "calibration": self.config.calibration + (f" {self.config.percentile}" if
                                                      self.config.calibration == "percentile" else ""),
            "smooth_alpha": self.config.smooth_alpha,
            "outlier_ratio": self.config.outlier_ratio,
            "calibration_feeds": self.feeds,
            "gemm_inputs_quantized": len(quant),
            "linear_layers_quantized": sum(len(g.nodes) for g in quant),
            "kept_fp32": self.skipped,
            "conv_layers_quantized": self.convs,
            "conv_outputs_requantized": self.requantized_outputs,
            **({"attention_matmuls_quantized": self.attention_matmuls} if self.config.number_format != "int8" else {}),
            "protected_channels": list(self.config.protect_channels),
            "fp32_outlier_channels": {g.tensor: g.outliers.tolist() for g in quant if len(g.outliers)},
            "activation_amax": {g.tensor: round(float(g.amax), 6) for g in quant},
        }


def _groups(model: onnx.ModelProto, exclude: tuple[str, ...]) -> tuple[list[GemmGroup], list[str]]:
    idx = GraphIndex(model.graph)
    by_tensor: dict[str, GemmGroup] = {}
    skipped = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in idx.inits or len(idx.inits[n.input[1]].dims) != 2:
            continue
        if idx.is_const(n.input[0]):
            continue
        if any(s in n.name or s in n.input[1] for s in exclude):
            skipped.append(n.name)
            continue
        k = int(idx.inits[n.input[1]].dims[0])
        g = by_tensor.setdefault(n.input[0], GemmGroup(n.input[0], [], k))
        g.nodes.append(n)
    return list(by_tensor.values()), skipped


def _weight_absmax_rows(idx: GraphIndex, group: GemmGroup) -> np.ndarray:
    """Per input channel, max |W[c, :]| over the group's weights (read one at a time)."""
    rows = None
    for n in group.nodes:
        row = np.abs(idx.array(n.input[1])).max(axis=1)
        rows = row if rows is None else np.maximum(rows, row)
    return rows


def _run_progress(progress, iterable, desc):
    return iterable if progress is None else progress(iterable, desc)


def calibrate(model: onnx.ModelProto, feeds: list[Mapping[str, np.ndarray]], config: Int8Config,
              progress: Callable | None = None, store: TensorStore | None = None,
              say: Callable[[str], None] | None = None) -> tuple[list[GemmGroup], list[str]]:
    """Two passes over the feeds: per-channel max |x| of each GEMM input, then |x * mask| histograms.

    Each pass is one onnxruntime session (its weights read from `store`'s folder for a model loaded without
    them), freed before the next, run once per feed; both reduce every tensor inside the graph as it is made,
    so a run holds the graph's own activations and one tensor's statistics, whatever the number of GEMM
    inputs or the image size. say: the plan and, after the first pass, a time estimate."""
    groups, skipped = _groups(model, config.exclude)
    if not groups:
        return groups, skipped
    runs = 2
    if say is not None:
        say(f"calibration: {len(feeds)} inputs x {runs} runs over them ({len(groups)} GEMM inputs)")
    start = time.perf_counter()
    _channel_ranges(model, groups, feeds, progress, store)
    if say is not None:
        took = time.perf_counter() - start
        say(f"calibration: channel ranges in {took:.0f} s ({took / len(feeds):.1f} s per input); "
            f"histograms: about {took * (runs - 1):.0f} s more")
    idx = GraphIndex(model.graph, store)
    for g in groups:
        _outliers_and_smoothing(idx, g, config)
    start = time.perf_counter()
    _activation_ranges(model, groups, feeds, config, progress, store)
    if say is not None:
        say(f"calibration: histograms in {time.perf_counter() - start:.0f} s; writing the Q/DQ graph")
    return groups, skipped


def _channel_ranges(model: onnx.ModelProto, groups: list[GemmGroup], feeds: list[Mapping[str, np.ndarray]],
                    progress: Callable | None, store: TensorStore | None) -> None:
    """Pass 1: each group's per-channel max |x| (scalar-sized outputs, cheap on any model)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probes = reduction_probes(probe, {g.tensor: TensorProto.FLOAT for g in groups},
                              channels={g.tensor: g.channels for g in groups})
    sess = session(probe, store=store)
    names = [probes[g.tensor][0] for g in groups]
    for g in groups:
        g.channel_max = np.zeros(g.channels, np.float32)
    for feed in _run_progress(progress, feeds, "calibration: channel ranges"):
        for g, amax in zip(groups, sess.run(names, dict(feed))):
            g.channel_max = np.maximum(g.channel_max, amax)


def _outliers_and_smoothing(idx: GraphIndex, g: GemmGroup, config: Int8Config) -> None:
    """From pass 1: the channels kept FP32 (outliers, protected channels) and SmoothQuant's s_c."""
    cm = np.maximum(g.channel_max, 1e-8)
    limit = max(4, int(config.max_outlier_fraction * g.channels))
    candidates = np.nonzero(cm > config.outlier_ratio * np.median(cm))[0]
    if len(candidates) > limit:  # keep only the largest ones
        candidates = candidates[np.argsort(-cm[candidates])[:limit]]
    if config.protect_channels and g.channels == config.protect_width:
        candidates = np.union1d(candidates, np.asarray(config.protect_channels, np.int64))
    g.outliers = np.sort(candidates).astype(np.int64)
    if config.smooth_alpha is not None:
        a = float(config.smooth_alpha)
        w = np.maximum(_weight_absmax_rows(idx, g), 1e-8)
        s = cm ** a / w ** (1 - a)
        s = np.clip(s, 1e-4, 1e4).astype(np.float32)
        s[g.outliers] = 1.0
        g.smooth = s


def _activation_ranges(model: onnx.ModelProto, groups: list[GemmGroup], feeds: list[Mapping[str, np.ndarray]],
                       config: Int8Config, progress: Callable | None, store: TensorStore | None) -> None:
    """Pass 2: histograms of what will actually be quantized, |x * mask| on [0, max_c(max|x_c| |mask_c|)];
    each group's amax from its histogram.

    The histograms are made inside the graph (graph.histogram_probes, the same bins as Histogram.add), each
    right after its tensor, so a run returns `bins` counts per tensor instead of the raw activations: fetched
    as graph outputs, those were all alive at the end of a run, then copied to numpy (the int8 export's peak
    at the default 640 px: medium model 7.1x the kept weights in this pass against 5.3x in the first)."""
    from .graph import histogram_probes

    hists = {g.tensor: Histogram(float((g.channel_max * np.abs(g.mask)).max()), config.bins) for g in groups}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    masks = {g.tensor: None if np.all(g.mask == 1.0) else g.mask for g in groups}  # x * 1.0 is x exactly
    probes = histogram_probes(probe, {t: (h.bins, h.scale, masks[t]) for t, h in hists.items()})
    sess = session(probe, store=store)
    del probe
    names = [name for g in groups for name in probes[g.tensor]]
    for feed in _run_progress(progress, feeds, "calibration: histograms"):
        out = sess.run(names, dict(feed))
        for i, g in enumerate(groups):
            counts, seen_max, size = out[3 * i:3 * i + 3]
            hists[g.tensor].add_counts(counts, seen_max, size)
        del out
    del sess
    for g in groups:
        g.amax = amax_from_histogram(hists[g.tensor], config.calibration, config.percentile)


class _QdqWriter:
    """Fresh names and new initializers of one insert_qdq pass (written through the store as they are made)."""

    def __init__(self, model: onnx.ModelProto, store: TensorStore):
        self.fresh = Namer(model)
        self.store = store
        self.inits: list[onnx.TensorProto] = []

    def init(self, arr: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.inits.append(self.store.new(arr, name))
        return name

    def quantized(self, values: np.ndarray, base: str, fmt: QFormat) -> str:
        """A new initializer of fmt's type holding fmt.encode()d values."""
        name = self.fresh(base)
        self.inits.append(new_quantized(self.store, values, name, fmt))
        return name

    def zero_point(self, base: str, fmt: QFormat, channels: int | None = None) -> str:
        name = self.fresh(base)
        self.inits.append(zero_point(self.store, name, fmt, channels))
        return name


def insert_qdq(model: onnx.ModelProto, groups: list[GemmGroup], store: TensorStore | None = None,
               fmt: QFormat = INT8) -> onnx.ModelProto:
    """A copy of `model` with Q/DQ on every group's input and per-channel weights in `fmt` (int8 or fp8).

    store: reads each FP32 weight and writes its int8 version at once (an export's graph, tensor by tensor);
    default: an in-memory model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    idx = GraphIndex(g, store)
    before: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes to insert before it
    replace: dict[str, list[onnx.NodeProto]] = {}
    writer = _QdqWriter(out, idx.store)
    order = {n.name: i for i, n in enumerate(g.node)}  # names are unique: ensure_node_names ran
    for grp in groups:
        first = min(grp.nodes, key=lambda n: order[n.name])
        pre, x, outlier_in = _group_inputs(grp, writer)
        before.setdefault(first.name, []).extend(pre)
        scale = np.float32(max(grp.amax, 1e-8) / fmt.qmax)
        for node in grp.nodes:
            w = idx.array(node.input[1]).astype(np.float32, copy=False)
            replace[node.name] = _quantized_matmul(node, w, grp, x, scale, outlier_in, writer, fmt)
            del w
    new_nodes = []
    for n in g.node:
        new_nodes.extend(before.get(n.name, []))
        new_nodes.extend(replace.get(n.name, [n]))
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(writer.inits)
    prune_initializers(out)
    return out


def _group_inputs(grp: GemmGroup, writer: _QdqWriter) -> tuple[list[onnx.NodeProto], str, str | None]:
    """Nodes before the group's first GEMM: x * mask (smoothing, outliers zeroed) to quantize, and the
    outlier channels gathered for their FP32 GEMM. Returns (nodes, quantized input, outlier input)."""
    fresh, pre, x = writer.fresh, [], grp.tensor
    mask = grp.mask
    if not np.all(mask == 1.0):
        scaled = fresh(x + "_smoothed")
        pre.append(helper.make_node("Mul", [x, writer.init(mask, x + "_qmask")], [scaled], name=scaled))
        x = scaled
    outlier_in = None
    if len(grp.outliers):
        outlier_in = fresh(grp.tensor + "_outliers")
        pre.append(helper.make_node("Gather", [grp.tensor, writer.init(grp.outliers, grp.tensor + "_outlier_idx")],
                                    [outlier_in], axis=-1, name=outlier_in))
    return pre, x, outlier_in


def _quantized_matmul(node: onnx.NodeProto, w: np.ndarray, grp: GemmGroup, x: str, scale: np.float32,
                      outlier_in: str | None, writer: _QdqWriter, fmt: QFormat = INT8) -> list[onnx.NodeProto]:
    """`node` (x @ W) as Q/DQ(x) @ DQ(8-bit W) [+ outliers @ W[outlier rows] in FP32]."""
    fresh, init = writer.fresh, writer.init
    # one weight-sized scratch array, scaled, rounded and clipped in place: each temporary of a FLUX-width weight
    # (3072 x 12288) is 151 MB, and the Q/DQ graph is written while the calibration's memory is still held
    ws = w * grp.smooth[:, None] if grp.smooth is not None else w.copy()
    ws[grp.outliers] = 0.0
    wscale = fmt.scale(np.maximum(ws.max(axis=0), -ws.min(axis=0)))
    ws /= wscale
    wq = fmt.encode(ws, overwrite=True)
    del ws
    wname = node.input[1]
    wdq = fresh(wname + "_dq")
    # A dedicated Q/DQ pair per consumer, same scale value in its own initializer: onnxruntime
    # fuses Q -> DQ -> MatMul into an integer GEMM (MatMulIntegerToFloat) only when the pair
    # feeds one MatMul, and its common-subexpression pass would merge pairs that share inputs.
    # TensorRT takes either form.
    s_name, zp_name = init(np.array(scale, np.float32), x + "_scale"), writer.zero_point(x + "_zp", fmt)
    q, dq = fresh(grp.tensor + "_q"), fresh(grp.tensor + "_dq")
    nodes = [helper.make_node("QuantizeLinear", [x, s_name, zp_name], [q], name=q),
             helper.make_node("DequantizeLinear", [q, s_name, zp_name], [dq], name=dq),
             helper.make_node("DequantizeLinear",
                              [writer.quantized(wq, wname + f"_{fmt.name}", fmt),
                               init(wscale.astype(np.float32), wname + "_scale"),
                               writer.zero_point(wname + "_zp", fmt, wq.shape[1])],
                              [wdq], axis=1, name=wdq)]
    y = node.output[0]
    if outlier_in is None:
        return nodes + [helper.make_node("MatMul", [dq, wdq], [y], name=node.name)]
    yq, yo = fresh(y + "_int8path"), fresh(y + "_fp32path")
    return nodes + [helper.make_node("MatMul", [dq, wdq], [yq], name=node.name),
                    helper.make_node("MatMul", [outlier_in, init(w[grp.outliers], wname + "_outlier_rows")],
                                     [yo], name=yo),
                    helper.make_node("Add", [yq, yo], [y], name=fresh(y + "_join"))]


def sensitivity(model: onnx.ModelProto, groups: list[GemmGroup], feed: Mapping[str, np.ndarray],
                progress: Callable | None = None, fmt: QFormat = INT8) -> None:
    """Each group's own damage: output error when only it is quantized (relative L2), on one feed."""
    ref = session(model).run(None, dict(feed))[0]
    for grp in _run_progress(progress, groups, "calibration: layer sensitivity"):
        got = session(insert_qdq(model, [grp], fmt=fmt)).run(None, dict(feed))[0]
        grp.sensitivity = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def quantize(model: onnx.ModelProto, feeds: Iterable[Mapping[str, np.ndarray]], config: Int8Config = Int8Config(),
             progress: Callable | None = None, store: TensorStore | None = None,
             say: Callable[[str], None] | None = None) -> tuple[onnx.ModelProto, Int8Report]:
    """Calibrate on `feeds` and return the Q/DQ model (FP32 I/O) and what was done.

    store: for a graph whose weights are on disk (tensors.GraphRewrite: calibration sessions read them
    from there, int8 weights are written there one at a time); default: an in-memory model.
    """
    model_f = onnx.ModelProto()
    model_f.CopyFrom(model)
    gemm_to_matmul(model_f, store)
    ensure_node_names(model_f)
    feeds = list(feeds)
    if not feeds:
        raise ValueError(f"{config.number_format.upper()} calibration needs at least one input feed")
    if config.keep_sensitive and store is not None and store.sink is not None:
        # one trial quantisation per GEMM input: a full model each, fine in memory, not streamed to disk
        raise ValueError("keep_sensitive works on in-memory models only")
    groups, skipped = calibrate(model_f, feeds, config, progress, store, say)
    if config.keep_sensitive and groups:
        sensitivity(model_f, groups, feeds[0], progress, config.fmt)
        worst = sorted(groups, key=lambda g: -(g.sensitivity or 0.0))[: config.keep_sensitive]
        skipped += [f"{g.tensor} (sensitivity {g.sensitivity:.3g})" for g in worst]
        groups = [g for g in groups if g not in worst]
    conv_plan, conv_amax = (_calibrate_convs(model_f, feeds, config, progress, store) if config.convs else (None, {}))
    attention = _calibrate_attention(model_f, feeds, config, progress, store) if config.attention else None
    out = insert_qdq(model_f, groups, store, config.fmt)
    report = Int8Report(config, groups, skipped, len(feeds))
    if attention is not None:
        from .fp8 import insert_attention_qdq

        writer = _QdqWriter(out, store if store is not None else TensorStore.in_memory())
        report.attention_matmuls = insert_attention_qdq(out, attention, writer, config.fmt)
        out.graph.initializer.extend(writer.inits)
    if conv_plan is not None and conv_plan.convs:
        from .int8_conv import insert_conv_qdq

        writer = _QdqWriter(out, store if store is not None else TensorStore.in_memory())
        report.convs = insert_conv_qdq(out, conv_plan, conv_amax, writer, config.fmt)
        report.requantized_outputs = len(conv_plan.requantized)
        out.graph.initializer.extend(writer.inits)
        prune_initializers(out)
    return out, report


def _calibrate_convs(model: onnx.ModelProto, feeds: list[Mapping[str, np.ndarray]], config: Int8Config,
                     progress: Callable | None, store: TensorStore | None):
    """The encoder convs' plan and per-tensor amax of their inputs and re-quantized outputs (the GEMM
    passes, one channel per tensor: no smoothing, no outlier split)."""
    from .int8_conv import plan_convs

    plan = plan_convs(model, config.exclude)
    groups = [GemmGroup(t, [], 1) for t in plan.tensors()]
    if groups:
        _channel_ranges(model, groups, feeds, progress, store)
        _activation_ranges(model, groups, feeds, config, progress, store)
    return plan, {g.tensor: g.amax for g in groups}


def _calibrate_attention(model: onnx.ModelProto, feeds: list[Mapping[str, np.ndarray]], config: Int8Config,
                         progress: Callable | None, store: TensorStore | None):
    """fp8.plan_attention's q, k and v ranges from the GEMM passes (one channel per tensor); with `max`
    calibration the first, scalar-sized pass decides alone (a histogram's max is that same max)."""
    from .fp8 import plan_attention

    plan = plan_attention(model, config.exclude)
    groups = [GemmGroup(t, [], 1) for t in plan.calibrated()]
    if groups:
        _channel_ranges(model, groups, feeds, progress, store)
        if config.calibration == "max":
            for g in groups:
                g.amax = float(g.channel_max.max())
        else:
            _activation_ranges(model, groups, feeds, config, progress, store)
    plan.amax.update({g.tensor: g.amax for g in groups})
    return plan

"""`ditf optimize-cpu EXPORT`: write the CPU variant (cpu_variant.py says what it is and why).

Rewrites of model.onnx, graph only (the weights stay in model.onnx.data, referenced, not copied):

- Attention: every `softmax(a * Q @ (b * K^T)) @ V` over [B, heads, S, D] tensors (what torch's
  scaled_dot_product_attention exports to at opset 20: the transformer's joint attention and the
  VAE's single-head mid-block attention) becomes onnxruntime's MultiHeadAttention (scale a * b),
  whose float32 CPU kernel is a flash attention: scores are computed block by block in L2-sized
  tiles, never as a heads x S x S tensor. Same arithmetic, another summation order.
- INT8 convolutions (int8 exports made with --int8-convs): DQ -> Conv -> Q as QLinearConv, which
  onnxruntime's own QDQ fusion does for only some of them (integer_convs says why).
- INT8 linear layers need nothing: onnxruntime fuses every Q/DQ MatMul of calib/int8.py into
  MatMulIntegerToFloat by itself (checked on its optimised graph by the tests).
- RMSNorm: onnxruntime's transformers optimizer (onnxruntime_fusions), weight-free.

Then the variant must pass the export's own parity gates against its PyTorch reference
(reference.safetensors, the manifest's precision) before it is kept; files are written under
temporary names and renamed, the record last, so an interrupted run leaves no usable variant.
Needs `onnx` (pip install 'ditf-runtime[optimize]').
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .cpu_variant import RECORD_FILE, VARIANT_FILE, VariantRecord, source_hashes
from .errors import BackendError, DitfError
from .files import file_record
from .manifest import MODEL_DATA_FILE, MODEL_FILE, REFERENCE_FILE, Manifest, ManifestError
from .onnx_names import Namer

MS_DOMAIN = "com.microsoft"


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise DitfError("ditf optimize-cpu needs the onnx package: pip install 'ditf-runtime[optimize]'") from exc
    return onnx


@dataclass
class _Graph:
    """Producers, consumers and constants of a graph, plus fresh names.

    base_dir: the folder of the model file, where its external data (model.onnx.data) is. The graph is loaded
    without its weights; a constant read from external data is read from there, never from the current
    directory (onnx's default), where another export's model.onnx.data would give the wrong bytes.
    """

    model: object
    base_dir: str | os.PathLike | None = None
    producer: dict = field(default_factory=dict)
    consumers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = self.model.graph
        self.inits = {i.name: i for i in g.initializer}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.fresh = Namer(self.model)

    def array(self, name: str) -> np.ndarray:
        """An initializer's value, read from the model's external data where it is stored there."""
        from onnx import numpy_helper
        from onnx.external_data_helper import uses_external_data

        tensor = self.inits[name]
        if not uses_external_data(tensor):
            return numpy_helper.to_array(tensor)
        if self.base_dir is None:
            raise DitfError(f"initializer {name!r} is stored in external data, but the folder of the model file "
                            "was not given: pass base_dir (the folder of model.onnx)")
        try:
            return numpy_helper.to_array(tensor, base_dir=str(self.base_dir))
        except (OSError, ValueError) as exc:
            raise DitfError(f"cannot read initializer {name!r} from the external data in {self.base_dir}: {exc}; "
                            "the export folder is incomplete or damaged") from exc

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant (initializer or Constant node), else None."""
        from onnx import numpy_helper

        if name in self.inits:
            arr = self.array(name)
        elif name in self.producer and self.producer[name].op_type == "Constant":
            arr = numpy_helper.to_array(self.producer[name].attribute[0].t)
        else:
            return None
        return float(arr.reshape(-1)[0]) if arr.size == 1 else None

    def only_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scaled(g: _Graph, name: str) -> tuple[str, float]:
    """(x, c) for name = Mul(x, c) with a scalar constant c; (name, 1.0) otherwise."""
    node = g.producer.get(name)
    if node is not None and node.op_type == "Mul":
        for a, b in ((0, 1), (1, 0)):
            c = g.scalar(node.input[b])
            if c is not None:
                return node.input[a], c
    return name, 1.0


def _untransposed_key(g: _Graph, name: str, shapes) -> str | None:
    """K [B, N, L, D] for K^T [B, N, D, L] built as Transpose(K, 0132) or as the exporter's
    Reshape(Transpose(Reshape(K, [B*N, L, D]), 021), [B, N, D, L])."""
    node = g.producer.get(name)
    if node is None:
        return None
    if node.op_type == "Transpose" and list(_attr(node, "perm", [])) == [0, 1, 3, 2]:
        return node.input[0]
    if node.op_type != "Reshape":
        return None
    mid = g.producer.get(node.input[0])
    if mid is None or mid.op_type != "Transpose" or list(_attr(mid, "perm", [])) != [0, 2, 1]:
        return None
    first = g.producer.get(mid.input[0])
    if first is None or first.op_type != "Reshape":
        return None
    k = first.input[0]
    kt = shapes.get(name, ((),))[0]
    ks = shapes.get(k, ((),))[0]
    if len(ks) == 4 and len(kt) == 4 and (ks[0], ks[1], ks[2], ks[3]) == (kt[0], kt[1], kt[3], kt[2]):
        return k
    return None


def fuse_attention(model, shapes, base_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """Replace every matched dense attention by MultiHeadAttention; returns counts (found / fused).
    base_dir: the folder of the model file (its external data)."""
    from onnx import helper, numpy_helper

    g = _Graph(model, base_dir)
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    replace: dict[int, list] = {}  # id(PV MatMul) -> new nodes
    dead: set[int] = set()
    for sm in softmaxes:
        scores = g.producer.get(sm.input[0])
        pv = g.only_consumer(sm.output[0], "MatMul")
        if scores is None or scores.op_type != "MatMul" or pv is None or pv.input[0] != sm.output[0]:
            continue
        if _attr(sm, "axis", -1) not in (-1, 3) or len(g.consumers.get(scores.output[0], [])) != 1:
            continue
        q, qc = _scaled(g, scores.input[0])
        kt, kc = _scaled(g, scores.input[1])
        k = _untransposed_key(g, kt, shapes)
        v = pv.input[1]
        qs, vs = shapes.get(q, ((),))[0], shapes.get(v, ((),))[0]
        if k is None or len(qs) != 4 or len(vs) != 4 or qs[1] != vs[1]:
            continue
        heads, dqk, dv = qs[1], qs[3], vs[3]
        names = {t: g.fresh(f"{pv.output[0]}_mha_{t}") for t in ("q", "k", "v", "qt", "kt", "vt", "o", "o4")}
        qk_shape = g.fresh(f"{pv.output[0]}_mha_qk_shape")
        v_shape = g.fresh(f"{pv.output[0]}_mha_v_shape")
        out_shape = g.fresh(f"{pv.output[0]}_mha_out_shape")
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array([0, 0, heads * dqk], np.int64), qk_shape),
            numpy_helper.from_array(np.array([0, 0, heads * dv], np.int64), v_shape),
            numpy_helper.from_array(np.array([0, 0, heads, dv], np.int64), out_shape),
        ])
        new = []
        for src, t, shape in ((q, "q", qk_shape), (k, "k", qk_shape), (v, "v", v_shape)):
            new += [helper.make_node("Transpose", [src], [names[t + "t"]], perm=[0, 2, 1, 3], name=names[t + "t"]),
                    helper.make_node("Reshape", [names[t + "t"], shape], [names[t]], name=names[t])]
        new += [
            helper.make_node("MultiHeadAttention", [names["q"], names["k"], names["v"]], [names["o"]], name=names["o"],
                             domain=MS_DOMAIN, num_heads=int(heads), scale=float(qc * kc)),
            helper.make_node("Reshape", [names["o"], out_shape], [names["o4"]], name=names["o4"]),
            helper.make_node("Transpose", [names["o4"]], [pv.output[0]], perm=[0, 2, 1, 3],
                             name=pv.name or names["o4"]),
        ]
        replace[id(pv)] = new
        dead.update({id(sm), id(scores)})
    nodes = []
    for n in model.graph.node:
        if id(n) in dead:
            continue
        nodes.extend(replace.get(id(n), [n]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _prune(model)
    if replace and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return {"attention_found": len(softmaxes), "attention_fused": len(replace)}


def integer_convs(model, base_dir: str | os.PathLike | None = None) -> dict[str, int]:
    """DQ(x) -> Conv(., DQ(w int8), bias) -> Q(y) as one QLinearConv (int8 in, int8 out, int32 bias).

    What an int8 export with quantized encoder convs asks for; onnxruntime's own QDQ fusion does it for
    only some of them in a whole graph (its propagation passes move the Q/DQ pairs of the others), so
    the variant states it explicitly. The bias is rounded to int32 at scale x_scale * w_scale[k] (at
    most half a step of the conv's own accumulator). base_dir: the folder of the model file, where the
    per-channel scales and biases are (external from 256 channels on, so in every real-size VAE).
    """
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(model, base_dir)
    replaced: dict[int, object] = {}
    dead: set[int] = set()
    for conv in [n for n in model.graph.node if n.op_type == "Conv"]:
        dq_x, dq_w = g.producer.get(conv.input[0]), g.producer.get(conv.input[1])
        q_y = g.only_consumer(conv.output[0], "QuantizeLinear")
        if (dq_x is None or dq_w is None or q_y is None or dq_x.op_type != "DequantizeLinear"
                or dq_w.op_type != "DequantizeLinear" or dq_w.input[0] not in g.inits
                or g.inits[dq_w.input[0]].data_type != TensorProto.INT8 or len(dq_x.input) < 3
                or len(q_y.input) < 3 or len(dq_w.input) < 3):
            continue
        x_scale = g.scalar(dq_x.input[1])
        w_scale = g.array(dq_w.input[1]) if dq_w.input[1] in g.inits else None
        if x_scale is None or w_scale is None or _attr(dq_w, "axis", 1) != 0:
            continue
        inputs = [dq_x.input[0], dq_x.input[1], dq_x.input[2], dq_w.input[0], dq_w.input[1], dq_w.input[2],
                  q_y.input[1], q_y.input[2]]
        if len(conv.input) > 2 and conv.input[2]:
            if conv.input[2] not in g.inits:
                continue
            bias = g.array(conv.input[2]).astype(np.float64)
            q_bias = np.round(bias / (np.float64(x_scale) * w_scale.astype(np.float64)))
            if np.abs(q_bias).max(initial=0) >= 2**31 - 1:
                continue
            name = g.fresh(conv.input[2] + "_int32")
            model.graph.initializer.append(numpy_helper.from_array(q_bias.astype(np.int32), name))
            inputs.append(name)
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        replaced[id(q_y)] = helper.make_node("QLinearConv", inputs, [q_y.output[0]], name=conv.name, **attrs)
        dead.add(id(conv))
    nodes = []
    for n in model.graph.node:
        if id(n) not in dead:
            nodes.append(replaced.get(id(n), n))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _prune(model)
    return {"int8_convs": len(replaced)}


def onnxruntime_fusions(model) -> dict[str, int]:
    """Fusions of onnxruntime's own transformers optimizer that its session-time optimizer does not apply:
    RMSNorm (q/k norms: Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul) into SimplifiedLayerNormalization, one
    pass instead of six. Its other candidates find nothing on these graphs (the exporter already writes
    LayerNormalization and Gelu ops; its MMDiT attention fusion expects the legacy exporter's patterns, and
    fuse_attention does that job); the bias fusions need the weights, which this rewrite never loads."""
    import logging

    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    before = sum(n.op_type == "SimplifiedLayerNormalization" for n in model.graph.node)
    quiet = logging.getLogger("fusion_base"), logging.getLogger("onnx_model")
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        wrapped = BertOnnxModel(model)
        wrapped.disable_shape_inference()
        wrapped.fuse_simplified_layer_norm()
        wrapped.prune_graph()
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    after = sum(n.op_type == "SimplifiedLayerNormalization" for n in model.graph.node)
    return {"rms_norm_fused": after - before}


def _prune(model) -> None:
    """Drop nodes whose outputs nothing reads any more (the old K^T and scaling chains), then initializers."""
    graph = model.graph
    while True:
        needed = {o.name for o in graph.output} | {i for n in graph.node for i in n.input}
        keep = [n for n in graph.node if any(o in needed for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def shapes_at(export_dir: Path, manifest: Manifest):
    """Every tensor's shape at the manifest's optimisation-profile shapes (else the reference's inputs)."""
    from .onnx_shapes import graph_only, infer_shapes

    opt = (manifest.tensorrt_profiles or {}).get("opt")
    if not opt:
        from safetensors.numpy import load_file

        opt = {k: v.shape for k, v in load_file(str(export_dir / REFERENCE_FILE)).items()
               if k in {s.name for s in manifest.inputs}}
    return infer_shapes(graph_only(export_dir / MODEL_FILE), opt)


def make_cpu_variant(export_dir: str | os.PathLike, *, threads: int | None = None,
                     say: Callable[[str], None] = lambda msg: None) -> VariantRecord:
    """Write EXPORT/model.cpu.onnx and its record after the variant passed parity; returns the record."""
    onnx = _onnx()
    export_dir = Path(export_dir)
    manifest = Manifest.load(export_dir)
    manifest.verify_files(export_dir, names=(MODEL_FILE, MODEL_DATA_FILE, REFERENCE_FILE))
    model = onnx.load(str(export_dir / MODEL_FILE), load_external_data=False)
    rewrites = fuse_attention(model, shapes_at(export_dir, manifest), base_dir=export_dir)
    rewrites.update(integer_convs(model, base_dir=export_dir))
    rewrites.update(onnxruntime_fusions(model))
    say(f"attention: {rewrites['attention_fused']} of {rewrites['attention_found']} fused into MultiHeadAttention; "
        f"{rewrites['int8_convs']} Q/DQ convolutions as QLinearConv; {rewrites['rms_norm_fused']} RMSNorms as "
        "SimplifiedLayerNormalization")
    if not rewrites["attention_fused"] and not rewrites["int8_convs"]:
        raise DitfError(f"{export_dir / MODEL_FILE}: no attention or INT8 convolution matched the patterns this "
                        "rewrite knows; there is nothing to gain from a CPU variant")
    (export_dir / RECORD_FILE).unlink(missing_ok=True)  # from here on, no record means no variant
    fd, tmp_name = tempfile.mkstemp(prefix=f".{VARIANT_FILE}.", suffix=".tmp", dir=export_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # The initializers keep their external-data references (location model.onnx.data, offsets):
        # saving without loading them writes the graph only.
        onnx.save_model(model, str(tmp))
        os.chmod(tmp, 0o644)
        parity = _parity(export_dir, manifest, tmp, threads)
        say(f"parity against the PyTorch reference: {parity}")
        if not parity:
            raise DitfError(f"the CPU variant failed the export's parity gates ({parity}); nothing was written")
        os.replace(tmp, export_dir / VARIANT_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    record = VariantRecord(
        source=source_hashes(manifest), files={VARIANT_FILE: file_record(export_dir / VARIANT_FILE)},
        rewrites=rewrites, parity=parity.to_dict(), tools=_tools(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    record.save(export_dir)
    return record


def _parity(export_dir: Path, manifest: Manifest, graph: Path, threads: int | None):
    """The export's reference inputs (image and noise, or the image alone: DINOv2) through `graph` on the CPU,
    judged at the manifest's precision."""
    from safetensors.numpy import load_file

    from .backends.onnxrt import create_session
    from .manifest import FEATURES_OUTPUT
    from .parity import compare

    reference = load_file(str(export_dir / REFERENCE_FILE))
    inputs = [spec.name for spec in manifest.inputs]
    missing = {*inputs, FEATURES_OUTPUT} - set(reference)
    if missing:
        raise ManifestError(f"{export_dir / REFERENCE_FILE} lacks tensors {sorted(missing)}")
    try:
        session = create_session(graph, threads=threads)
    except BackendError as exc:
        raise DitfError(f"onnxruntime cannot open the rewritten graph: {exc}") from exc
    got = session.run([FEATURES_OUTPUT], {name: reference[name] for name in inputs})[0]
    expected = reference[FEATURES_OUTPUT]
    if manifest.geometry.frame_axis is not None:  # video: judged per frame map
        got, expected = (a.reshape(-1, *a.shape[-3:]) for a in (got, expected))
    return compare(got, expected, manifest.precision)


def _tools() -> dict[str, str]:
    import onnx
    import onnxruntime

    from ._version import __version__

    return {"ditf_runtime": __version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}

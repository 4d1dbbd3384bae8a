"""Small ONNX graph tools shared by the precision rewrites (fp16/bf16 islands, INT8 Q/DQ).

The rewrites work on a proto and a `TensorStore` (calib/tensors.py): for an export, the graph loaded
without its weights, initializers read and written one at a time; for a small in-memory model (tests),
the store reads and writes inline tensors. `save` writes the one external-data file beside an in-memory
model (every initializer over 1 KiB external, one file: docs/DESIGN.md, "The export folder").
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from ditf_runtime.onnx_names import Namer

from .tensors import EXTERNAL_THRESHOLD, TensorStore


def load(path: str | os.PathLike) -> onnx.ModelProto:
    """The model with its external weights read into memory (small models only: see tensors.load_graph)."""
    return onnx.load(str(path), load_external_data=True)


def save(model: onnx.ModelProto, path: str | os.PathLike, keep_in_memory: bool = False) -> Path:
    """Write an in-memory model to `path` + `path.data` (every initializer over 1 KiB external, one file).

    onnx moves the weights out of `model` while writing; `keep_in_memory` reads them back.
    """
    path = Path(path)
    data = path.with_name(path.name + ".data")
    for p in (path, data):
        if p.exists():
            p.unlink()  # onnx appends to an existing data file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=EXTERNAL_THRESHOLD, convert_attribute=False)
    if keep_in_memory:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    return path


class GraphIndex:
    """Producers, consumers and initializers of the top-level graph (subgraphs are left alone).

    Initializer values are read through `store` only when asked for (`array`); `dims` never reads.
    """

    def __init__(self, graph: onnx.GraphProto, store: TensorStore | None = None):
        self.graph = graph
        self.store = store if store is not None else TensorStore.in_memory()
        self.inits = {i.name: i for i in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.outputs = {o.name for o in graph.output}
        # Constant nodes count as constants too (shape-only users never need a cast)
        self.constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.constants

    def array(self, name: str) -> np.ndarray:
        if name in self.inits:
            return self.store.read(self.inits[name])
        return numpy_helper.to_array(self._constant(name))

    def dims(self, name: str) -> tuple[int, ...]:
        """The shape of a constant, without reading its values."""
        tensor = self.inits[name] if name in self.inits else self._constant(name)
        return tuple(int(d) for d in tensor.dims)

    def data_type(self, name: str) -> int:
        return (self.inits[name] if name in self.inits else self._constant(name)).data_type

    def _constant(self, name: str) -> TensorProto:
        node = self.producer[name]
        return next(a.t for a in node.attribute if a.name == "value")


def gemm_to_matmul(model: onnx.ModelProto, store: TensorStore | None = None) -> int:
    """Rewrite Gemm(A, B, C) (transA = 0) as MatMul(A, B') + Add(C'), so one code path handles linears."""
    idx = GraphIndex(model.graph, store)
    store = idx.store
    fresh = Namer(model)
    nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or attrs.get("transA", 0) or node.input[1] not in idx.inits:
            nodes.append(node)
            continue
        w = idx.array(node.input[1]).astype(np.float32)
        w = (w.T if attrs.get("transB", 0) else w) * np.float32(attrs.get("alpha", 1.0))
        wname = fresh(node.input[1] + "_gemm")
        model.graph.initializer.append(store.new(np.ascontiguousarray(w), wname))
        del w
        if len(node.input) > 2 and node.input[2]:
            mm_out = fresh(node.output[0] + "_mm")
            nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=node.name + "_mm"))
            c = node.input[2]
            if attrs.get("beta", 1.0) != 1.0:
                cval = idx.array(c).astype(np.float32) * np.float32(attrs["beta"])
                c = fresh(c + "_beta")
                model.graph.initializer.append(store.new(cval, c))
            nodes.append(helper.make_node("Add", [mm_out, c], [node.output[0]], name=node.name + "_bias"))
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], wname], [node.output[0]], name=node.name))
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        prune_initializers(model)
    return count


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique name (rewrites key nodes by name)."""
    seen: set[str] = set()
    fresh = Namer(model)
    for n in model.graph.node:
        if not n.name or n.name in seen:
            n.name = fresh(n.op_type)
        seen.add(n.name)


def prune_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def cast(inp: str, out: str, to: int, name: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [inp], [out], to=to, name=name)


def add_outputs(model: onnx.ModelProto, names: Iterable[str], elem_type: int = TensorProto.FLOAT) -> None:
    """Expose internal tensors as graph outputs (untyped shape)."""
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have:
            model.graph.output.append(helper.make_tensor_value_info(n, elem_type, None))


def reduction_probes(model: onnx.ModelProto, tensors: dict[str, int],
                     channels: dict[str, int] | None = None) -> dict[str, tuple[str, str]]:
    """For each tensor (name -> elem type) add cheap outputs: max |x| and a non-finite flag.

    Returns name -> (absmax output, nonfinite output). The flag is sum(x * 0): NaN iff any x is
    inf or NaN. Where `channels` gives a tensor's last-axis size C, absmax is per channel ([C]).
    Scalars instead of the tensors themselves keep memory flat on large models.

    Each probe's nodes go right after the node that makes its tensor: onnxruntime orders a graph by a
    depth-first walk from its outputs taken in node order, so probes appended at the end would run after
    the whole graph and keep every probed tensor alive until then (measured: 3.6x the kept weights of a
    FLUX stand-in in an fp16 range check); placed here, and run in this order (`session` asks onnxruntime for
    its priority-based order, which follows node order), each tensor is reduced and freed as it is made.
    """
    channels = channels or {}
    probes: dict[str, tuple[str, str]] = {}
    after: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # tensor -> its probe's nodes
    fresh = Namer(model)
    zero = fresh("probe_zero")
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
    for t, elem in tensors.items():
        nodes, x = after[t], t
        if elem != TensorProto.FLOAT:
            x = fresh(t + "_f32")
            nodes.append(cast(t, x, TensorProto.FLOAT, x + "_cast"))
        absx = fresh(t + "_abs")
        nodes.append(helper.make_node("Abs", [x], [absx], name=absx))
        amax = fresh(t + "_absmax")
        if t in channels:
            flat = fresh(t + "_flat")
            nodes += [helper.make_node("Reshape", [absx, _const(model, fresh, [-1, channels[t]])], [flat], name=flat),
                      helper.make_node("ReduceMax", [flat, _const(model, fresh, [0])], [amax], keepdims=0, name=amax)]
        else:
            nodes.append(helper.make_node("ReduceMax", [absx], [amax], keepdims=0, name=amax))
        zx = fresh(t + "_x0")
        flag = fresh(t + "_nonfinite")
        nodes += [helper.make_node("Mul", [x, zero], [zx], name=zx),
                  helper.make_node("ReduceSum", [zx], [flag], keepdims=0, name=flag)]
        probes[t] = (amax, flag)
    _insert_after_producers(model.graph, after)
    add_outputs(model, [n for pair in probes.values() for n in pair])
    return probes


def histogram_probes(model: onnx.ModelProto, tensors: dict[str, tuple[int, np.float32, np.ndarray | None]]
                     ) -> dict[str, tuple[str, str, str]]:
    """For each tensor x (name -> (bins, bin scale, mask)) add outputs: the histogram of |x * mask| and its max.

    The histogram is stats.Histogram.add's, computed inside the graph: bin = min(int(|x * mask| * scale),
    bins - 1) (float32 products, truncation: the same bins numpy gives), counted by ScatterElements(add) into
    `bins` int32 counts. mask: [C] over x's last axis, or None (x itself). Returns name -> (counts output,
    max |x * mask| output, element count output): the caller adds counts per run (int32 per run and tensor;
    the element count tells an overflow, never reached below 2**31 elements).

    Like reduction_probes, each probe runs right after the node that makes its tensor, so a calibration run
    holds one tensor's probe at a time instead of every raw activation as a graph output (which onnxruntime
    keeps alive until the run ends, then copies to numpy).
    """
    probes: dict[str, tuple[str, str, str]] = {}
    after: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    fresh = Namer(model)
    flat_shape = _const(model, fresh, [-1])
    zero_name = fresh("hist_zero")
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int32), zero_name))
    for t, (bins, scale, mask) in tensors.items():
        nodes, x = after[t], t
        if mask is not None:
            masked = fresh(t + "_hmasked")
            mask_name = fresh(t + "_hmask")
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(mask, np.float32), mask_name))
            nodes.append(helper.make_node("Mul", [x, mask_name], [masked], name=masked))
            x = masked
        absx, scaled, index, top, flat, valid, ones, counts, amax, size = (
            fresh(t + suffix) for suffix in ("_habs", "_hscaled", "_hindex", "_htop", "_hflat", "_hvalid", "_hones",
                                             "_hcounts", "_habsmax", "_hsize"))
        scale_name, top_name, zeros_name = fresh(t + "_hscale"), fresh(t + "_hlast"), fresh(t + "_hzeros")
        model.graph.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32), scale_name),
                                        numpy_helper.from_array(np.asarray(bins - 1, np.int32), top_name),
                                        numpy_helper.from_array(np.zeros(bins, np.int32), zeros_name)])
        # The ones ScatterElements adds come from the data (index >= 0 holds for every bin), not from
        # ConstantOfShape(Shape(x)): where x's shape is static, onnxruntime would fold that into an initializer
        # as large as x, one per probe, held for the session's life.
        nodes += [
            helper.make_node("Abs", [x], [absx], name=absx),
            helper.make_node("ReduceMax", [absx], [amax], keepdims=0, name=amax),
            helper.make_node("Size", [absx], [size], name=size),
            helper.make_node("Mul", [absx, scale_name], [scaled], name=scaled),
            helper.make_node("Cast", [scaled], [index], to=TensorProto.INT32, name=index),
            helper.make_node("Min", [index, top_name], [top], name=top),
            helper.make_node("Reshape", [top, flat_shape], [flat], name=flat),
            helper.make_node("GreaterOrEqual", [flat, zero_name], [valid], name=valid),
            helper.make_node("Cast", [valid], [ones], to=TensorProto.INT32, name=ones),
            helper.make_node("ScatterElements", [zeros_name, flat, ones], [counts], axis=0, reduction="add",
                             name=counts),
        ]
        probes[t] = (counts, amax, size)
    _insert_after_producers(model.graph, after)
    have = {o.name for o in model.graph.output}
    for t, (counts, amax, size) in probes.items():
        for name, elem in ((counts, TensorProto.INT32), (amax, TensorProto.FLOAT), (size, TensorProto.INT64)):
            if name not in have:
                model.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return probes


def _insert_after_producers(graph: onnx.GraphProto, after: dict[str, list[onnx.NodeProto]]) -> None:
    """Put each tensor's extra nodes right after the node that produces it (graph inputs: first)."""
    produced = {o for node in graph.node for o in node.output}
    ordered = [n for t, nodes in after.items() if t not in produced for n in nodes]
    for node in graph.node:
        ordered.append(node)
        for o in node.output:
            ordered.extend(after.get(o, ()))
    del graph.node[:]
    graph.node.extend(ordered)


def _const(model: onnx.ModelProto, fresh: Namer, values) -> str:
    name = fresh("probe_const")
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


def has_external_tensors(model: onnx.ModelProto) -> bool:
    return any(uses_external_data(t) for t in model.graph.initializer)


def session(model: onnx.ModelProto | str | os.PathLike, threads: int | None = None, store: TensorStore | None = None,
            disabled_optimizers: Sequence[str] = ()):
    """A CPU onnxruntime session (ditf_runtime's create_session) of a file or a model proto.

    A proto whose weights live on disk (loaded with tensors.load_graph, or being rewritten through `store`)
    is written without them to a small file in the store's folder and opened from there. An in-memory model at or
    over the runtime's in-memory limit (protobuf's 2 GB) is never serialised: it is written with external
    data to a temporary folder and opened by path. disabled_optimizers: onnxruntime graph transformers to skip.

    Nodes run in the graph's order (priority_order): calibration and range checks place each probe right after
    the node whose tensor it reduces, so the tensor is freed as soon as it is made; onnxruntime's default order
    did not follow that (bf16 range check, medium model, 256x256: 2.56 GB resident against 1.43 GB).

    Without onnxruntime's CPU arena: a calibration run's VAE frees image-sized tensors before the transformer
    makes larger ones (attention scores); in the arena those stay held beside them. On the FLUX.1-dev stand-in at
    640 px an int8 calibration run held a fully used 2.2 GB arena region beside 4.1 GB of weights (2.11x the kept
    weights at its peak).
    """
    from ditf_runtime.backends.onnxrt import MAX_IN_MEMORY_MODEL_BYTES, create_session

    def open_session(source):
        return create_session(source, threads=threads, disabled_optimizers=disabled_optimizers, priority_order=True,
                              memory_arena=False)

    if not isinstance(model, onnx.ModelProto):
        return open_session(model)
    if has_external_tensors(model):
        if store is None or store.base_dir is None:
            raise ValueError("this model's weights are on disk: pass the TensorStore that reads them")
        store.flush()
        # Opened by path from a small file beside the weights, not as bytes: onnxruntime maps the external
        # data of a model file, but reads it into memory (and then prepacks a second copy) for bytes.
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".onnx", dir=store.base_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(model.SerializeToString())
            return open_session(tmp)
        finally:
            os.unlink(tmp)
    if model.ByteSize() < MAX_IN_MEMORY_MODEL_BYTES:
        return open_session(model.SerializeToString())
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ditf-calib-") as tmp:
        return open_session(save(model, Path(tmp) / "model.onnx", keep_in_memory=True))

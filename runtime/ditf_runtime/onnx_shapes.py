"""Every tensor's shape in an exported graph at one concrete input size, without reading its weights.

Used by graph rewrites (`ditf optimize-cpu`) and by FLOP accounting (ditf_calib.flops). Needs the
`onnx` package (the runtime's `optimize` extra); nothing on the extraction path imports this module.

onnxruntime's symbolic shape inference follows the dynamo exporter's shape arithmetic (Shape, Slice,
Concat, ...) where onnx's own inference stops; with the graph inputs made concrete every shape
becomes a number. It needs the values of small initializers (shape constants) only, so large ones
(weights) are turned into typed graph inputs: nothing big is read, whatever the model's size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

# Initializers with at most this many elements are read; larger ones become typed inputs.
SMALL_INITIALIZER = 4096


def graph_only(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at `path` without its weights: small initializers read, large ones typed inputs."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    keep, typed = [], []
    for init in model.graph.initializer:
        if int(np.prod(init.dims, dtype=np.int64)) <= SMALL_INITIALIZER:
            if uses_external_data(init):
                load_external_data_for_tensor(init, str(path.parent))
                init.data_location = TensorProto.DEFAULT
                del init.external_data[:]
            keep.append(init)
        else:
            typed.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    model.graph.input.extend(typed)
    return model


def infer_shapes(model: onnx.ModelProto,
                 input_shapes: Mapping[str, Iterable[int]]) -> dict[str, tuple[tuple[int, ...], int]]:
    """Tensor name -> (concrete shape, elem type), with the graph inputs fixed to `input_shapes`.

    Tensors whose shape stays unknown are left out (callers say which one they needed).
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_shapes:
            shape = [int(v) for v in input_shapes[inp.name]]
            dims = inp.type.tensor_type.shape.dim
            if len(dims) != len(shape):
                raise ValueError(f"graph input {inp.name} has {len(dims)} axes; got shape {shape}")
            for d, v in zip(dims, shape):
                d.Clear()
                d.dim_value = v
    # The tool's public infer_shapes() writes a temporary model into the working directory when a
    # shape stays unknown; running its steps directly keeps what it found and writes nothing.
    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
    inference._preprocess(m)
    while inference.run_:
        inference._infer_impl()
    out: dict[str, tuple[tuple[int, ...], int]] = {}
    for name, vi in inference.known_vi_.items():
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if None not in dims:
            out[name] = (tuple(int(d) for d in dims), int(t.elem_type))
    return out

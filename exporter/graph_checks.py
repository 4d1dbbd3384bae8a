"""Static checks on an exported graph, and its metadata.

TensorRT 10 parses opset-20 plain ops; float64, complex and Einsum are where exports of diffusers
models usually go wrong (float64 RoPE, complex rotary math), so an export containing them fails.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ditf_calib.tensors import all_graphs
from ditf_runtime.manifest import graph_metadata

FORBIDDEN_OPS = {"Einsum"}
FORBIDDEN_TYPES = {onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.COMPLEX64: "complex64",
                   onnx.TensorProto.COMPLEX128: "complex128"}


class GraphCheckError(RuntimeError):
    pass


def check_graph(path: Path) -> dict[str, int]:
    """Raise GraphCheckError listing every forbidden op or dtype, or weights outside the one data file
    beside the graph (the manifest records exactly model.onnx and model.onnx.data); return op counts."""
    model = onnx.load(str(path), load_external_data=False)
    problems: list[str] = []
    data_file = Path(path).name + ".data"
    for init in model.graph.initializer:
        location = next((e.value for e in init.external_data if e.key == "location"), None)
        if init.data_location == onnx.TensorProto.EXTERNAL and location != data_file:
            problems.append(f"initializer {init.name} is stored in {location!r}, not {data_file}")
    counts: dict[str, int] = {}
    for g in all_graphs(model.graph):
        for node in g.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            if node.op_type in FORBIDDEN_OPS:
                problems.append(f"op {node.op_type} ({node.name})")
            if node.op_type == "Cast":
                to = next((a.i for a in node.attribute if a.name == "to"), None)
                if to in FORBIDDEN_TYPES:
                    problems.append(f"Cast to {FORBIDDEN_TYPES[to]} ({node.name})")
        for init in g.initializer:
            if init.data_type in FORBIDDEN_TYPES:
                problems.append(f"initializer {init.name} is {FORBIDDEN_TYPES[init.data_type]}")
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            t = vi.type.tensor_type.elem_type
            if t in FORBIDDEN_TYPES:
                problems.append(f"tensor {vi.name} is {FORBIDDEN_TYPES[t]}")
    if problems:
        raise GraphCheckError("the exported graph is not shippable (ops/dtypes TensorRT will not take, or weights "
                              "outside its data file): " + "; ".join(problems[:10]))
    return counts


def finalize(path: Path, manifest) -> None:
    """Name the output's axes after the manifest and write static metadata (docs/DESIGN.md: static
    fields only, never run-time results)."""
    model = onnx.load(str(path), load_external_data=False)
    for out_vi, spec in zip(model.graph.output, manifest.outputs):
        for dim, want in zip(out_vi.type.tensor_type.shape.dim, spec.shape):
            if isinstance(want, str):
                dim.dim_param = want
    static = graph_metadata(manifest)  # the runtime compares these with the manifest on load
    del model.metadata_props[:]
    for k, v in static.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))  # external data references are kept as they are

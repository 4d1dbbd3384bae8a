"""Fresh tensor and node names for graph rewrites: `ditf optimize-cpu` here, the precision rewrites
of ditf_calib. Reads only a graph's names, so it needs nothing installed (the caller has onnx)."""

from __future__ import annotations


class Namer:
    """Fresh tensor/node names for one rewrite of `model`: `base` itself when free, else `base_1`, ...

    Deterministic (the same rewrite of the same graph gives the same names, so exports are
    reproducible byte for byte) and readable in Netron / TensorRT's layer names.
    """

    def __init__(self, model) -> None:  # an onnx.ModelProto
        g = model.graph
        self.used = {i.name for i in g.initializer} | {v.name for v in list(g.input) + list(g.output)}
        for n in g.node:
            self.used.update(n.input)
            self.used.update(n.output)
            self.used.add(n.name)

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

"""Which layer and timestep give flux-mini its best correspondence: PCK@0.1 on a validation benchmark.

The feature graph is the exporter's own PyTorch module (ditf_export.build: the module every export is made
from and judged against), run directly, so a sweep costs no ONNX export. The validation pairs come from
their own creature stream (seed 7): neither the training stream (0), the export's gate (2) nor the default
benchmark the README reports (1). Prints one table (rows: layer; columns: timestep) and the best setting.

    python bench/sweep_mini.py [--model flux-mini | FOLDER] [--pairs 100] [--layers 0,1,2,3,4,5]
                               [--timesteps 100,260,500,750] [--ensemble 4]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

VALIDATION_SEED = 7


def features_of(graph, images: list[np.ndarray], noises: list[np.ndarray], batch: int = 16) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(graph(torch.from_numpy(np.stack(images[i:i + batch])),
                             torch.from_numpy(np.stack(noises[i:i + batch]))).numpy())
    return np.concatenate(out)


def main() -> None:
    from ditf_export.build import build_graph
    from ditf_export.plan import plan
    from ditf_export.request import ExportRequest
    from ditf_export.semantic_gate import pck_on_pairs
    from ditf_runtime.manifest import Preprocess
    from ditf_runtime.noise import default_noise
    from ditf_runtime.preprocess import to_model_array
    from ditf_runtime.synthetic.benchmark import creature_pairs

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="flux-mini")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--layers", default="0,1,2,3,4,5")
    ap.add_argument("--timesteps", default="100,260,500,750")
    ap.add_argument("--ensemble", type=int, default=4)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--discard", default="none")
    args = ap.parse_args()
    layers = [int(v) for v in args.layers.split(",")]
    timesteps = [float(v) for v in args.timesteps.split(",")]
    setting = {"pairs": args.pairs, "seed": VALIDATION_SEED, "size": args.size, "alpha": 0.1}
    images = []
    for pair in creature_pairs(args.pairs, seed=VALIDATION_SEED, size=args.size):
        images += [to_model_array(c.image, (args.size, args.size), Preprocess(long_side=args.size))
                   for c in (pair.source, pair.target)]
    table: dict[tuple[int, float], float] = {}
    start = time.perf_counter()
    for layer in layers:
        for t in timesteps:
            the_plan = plan(ExportRequest(model=args.model, out="unused", layer=layer, timestep=t,
                                          discard=args.discard, ensemble=args.ensemble, image_size=args.size))
            graph = build_graph(the_plan).graph
            noises = [default_noise(p, the_plan.io.geometry, args.ensemble) for p in images]
            table[layer, t], points = pck_on_pairs(features_of(graph, images, noises), setting)
    print(f"flux-mini validation sweep: {args.model}, {args.pairs} creature pairs (seed {VALIDATION_SEED}), "
          f"{args.size} px, E={args.ensemble}, discard {args.discard}; PCK@0.1 per point ({points} points); "
          f"{time.perf_counter() - start:.0f} s")
    print("| layer | " + " | ".join(f"t={t:g}" for t in timesteps) + " |")
    print("| --- | " + " | ".join("---" for _ in timesteps) + " |")
    for layer in layers:
        print(f"| {layer} | " + " | ".join(f"{100 * table[layer, t]:.1f}" for t in timesteps) + " |")
    best = max(table, key=table.get)
    print(f"best: layer {best[0]}, t={best[1]:g}: {100 * table[best]:.1f}")


if __name__ == "__main__":
    main()

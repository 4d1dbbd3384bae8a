"""Do the features correspond? Ground-truth PCK@0.1 of flux-mini at every precision, beside what learned nothing.

One benchmark (procedural creatures, `ditf make-benchmark`, seed 1: never seen in training, which drew seed 0),
every row evaluated with `ditf eval-spair`'s own code (ditf_runtime.evaluate) on the exported graphs:

- flux-mini trained: fp32, fp16, bf16, int8, int8 with --int8-convs, fp8 (calibrated on creatures of seed 5);
- the paper's ablation on the trained model: the raw block input (--head raw --discard none), + AdaLN
  (--discard none), + channel discard (the registry default);
- the same architecture with freshly initialised random weights (transformer and VAE);
- raw pixels: each image average-pooled to an 8-pixel grid, RGB as the feature (a colour/position baseline).

    python bench/bench_semantic.py [--pairs 200] [--work /work/cache/semantic] [--rows fp32,int8,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

BENCHMARK_SEED, CALIBRATION_SEED = 1, 5
ROWS = ("fp32", "fp16", "bf16", "int8", "int8-convs", "fp8", "raw-head", "adaln-no-discard", "random-weights", "pixels")


def export_row(row: str, work: Path, calib: Path, random_folder: Path) -> Path:
    from ditf_export.export import export
    from ditf_export.request import ExportRequest

    out = work / f"export-{row}"
    if (out / "manifest.json").is_file():
        return out
    kw: dict = {"model": "flux-mini", "out": out, "force": True, "progress": lambda msg: None}
    precision = {"fp16": "fp16", "bf16": "bf16", "int8": "int8", "int8-convs": "int8", "fp8": "fp8"}.get(row, "fp32")
    kw["precision"] = precision
    if precision in ("fp16", "int8", "fp8"):
        kw["calib_images"] = calib
    if row == "int8-convs":
        kw["int8_convs"] = True
    if row == "random-weights":
        kw.update(model=str(random_folder), layer=_mini_default("layer"), timestep=_mini_default("timestep"),
                  discard="none", ensemble=_mini_default("ensemble"), image_size=192, text_max_length=16)
    if row == "adaln-no-discard":
        kw["discard"] = "none"
    if row == "raw-head":
        if "head" not in {f.name for f in fields(ExportRequest)}:
            raise RuntimeError("this ditf-export has no --head option")
        kw.update(head="raw", discard="none")
    export(ExportRequest(**kw))
    return out


def gate_row(folder: Path) -> str:
    """What a graph that cannot run here scored in its export's semantic gate (run on its emulated twin)."""
    from ditf_runtime.manifest import Manifest

    row = next(r for r in Manifest.load(folder).parity["results"] if "pck_truth" in r)
    truth = row["pck_truth"]
    return (f"not runnable on onnxruntime's CPU provider (no bf16 kernels); its export's gate, on its emulated "
            f"twin, {truth['points']} points of the gate's pairs: {100 * truth['graph']:.1f} vs float32 "
            f"{100 * truth['reference']:.1f}")


def _mini_default(name: str):
    from ditf_export import catalog

    return getattr(catalog.model_spec("flux-mini"), name).value


def main() -> None:
    from ditf_export.train_mini import random_twin as random_weights_folder
    from ditf_runtime import load
    from ditf_runtime.synthetic.baselines import PixelFeatures
    from ditf_runtime.evaluate import evaluate
    from ditf_runtime.synthetic.benchmark import write_benchmark
    from ditf_runtime.synthetic.creatures import draw

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--work", type=Path, default=Path("/work/cache/semantic"))
    ap.add_argument("--rows", default=",".join(ROWS))
    args = ap.parse_args()
    rows = args.rows.split(",")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    bench = work / f"creatures-seed{BENCHMARK_SEED}-{args.pairs}"
    if not (bench / "benchmark.json").is_file():
        write_benchmark(bench, pairs=args.pairs, seed=BENCHMARK_SEED, size=192)
    calib = work / "calibration-creatures"
    if not calib.is_dir():
        calib.mkdir()
        for i in range(10):
            draw(CALIBRATION_SEED, i, 192).image.save(calib / f"creature-{i:02d}.png")
    from ditf_export.loading import resolve_source

    random_folder = random_weights_folder(resolve_source("flux-mini").path, work / "flux-mini-random")
    results = {}
    for row in rows:
        start = time.perf_counter()
        try:
            if row == "pixels":
                res = evaluate(PixelFeatures(), bench)
            else:
                folder = export_row(row, work, calib, random_folder)
                if row == "bf16":  # onnxruntime's CPU provider has no bf16 kernels: the export's own gate row
                    results[row] = gate_row(folder)
                    print(f"{row}: {results[row]}", file=sys.stderr)
                    continue
                with load(folder) as extractor:
                    res = evaluate(extractor, bench)
        except Exception as exc:  # a refused export is a result too: say why
            results[row] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            print(f"{row}: {results[row]}", file=sys.stderr)
            continue
        results[row] = res
        print(f"{row}: {res.all_per_image:.4f} per image, {res.all_per_point:.4f} per point "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    label = {"fp32": "flux-mini trained, fp32", "fp16": "flux-mini trained, fp16", "bf16": "flux-mini trained, bf16",
             "int8": "flux-mini trained, int8", "int8-convs": "flux-mini trained, int8 + --int8-convs",
             "fp8": "flux-mini trained, fp8 (E4M3 Q/DQ, run as dequantise + fp32 here)",
             "raw-head": "ablation: raw block input (--head raw, no discard)",
             "adaln-no-discard": "ablation: + AdaLN (--discard none)",
             "random-weights": "same architecture, random weights", "pixels": "raw pixels (RGB, 8 px cells)"}
    ref = results.get("fp32")
    print(f"\nPCK@0.1 on {args.pairs} creature pairs (seed {BENCHMARK_SEED}, 192 px), `ditf eval-spair`'s protocol")
    print("| model | PCK per image | PCK per point | vs trained fp32 (per point) |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        res = results.get(row)
        if isinstance(res, str) and row == "bf16":
            print(f"| {label[row]} | {res} | | |")
            continue
        if isinstance(res, str) or res is None:
            print(f"| {label[row]} | refused or failed: {res} | | |")
            continue
        delta = "" if ref is None or isinstance(ref, str) else f"{100 * (res.all_per_point - ref.all_per_point):+.1f}"
        print(f"| {label[row]} | {100 * res.all_per_image:.1f} | {100 * res.all_per_point:.1f} | {delta} |")


if __name__ == "__main__":
    main()

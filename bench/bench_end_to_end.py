"""CPU end to end: the authors' recipe in PyTorch vs ditf's graphs on onnxruntime, with a roofline.

Same medium FLUX-architecture transformer (random weights, real diffusers classes: hidden 768, 4+4
blocks, layer 7, 512 text tokens), a VAE the size of FLUX's, one image at 512x512, E = 8, 2 threads
(the project's CPU goal: >= 8x the authors' recipe at fp32, more with int8). Pipelines, measured side by side in one run:

- authors' recipe (PyTorch eager, fp32): the image repeated E times, the VAE run E times (posterior
  sample), diffusers' own FluxTransformer2DModel.forward with the conditioning path and modulation
  linears live, stopped at block K by a hook, then ensemble mean, discard, LayerNorm and modulation;
- ditf fp32: the exported graph (model.onnx: VAE once, conditioning baked), and its CPU variant
  (model.cpu.onnx from `ditf optimize-cpu`: flash attention);
- ditf int8: the calibrated Q/DQ export (linear layers int8), as written (model.onnx) and as its CPU
  variant; with --int8-convs also an export whose encoder convolutions are int8 (QLinearConv in the
  variant), if it passes the export's int8 gates.

Printed: seconds per image (best of --repeats after a warm-up, pipelines taking turns, with the
spread), the speed-up over the authors' recipe, accuracy against the recipe with the posterior mean
on both sides (fp32: cosine >= 0.99999, rel <= 1e-4; int8: the manifest's int8 gates), then the
roofline: the machine's peaks measured here (before and after the pipelines, best kept), and per
part (VAE encoder, transformer, head) the FLOPs counted from the ONNX (torch's FlopCounterMode for
the recipe), the floor at those peaks, the measured time (each part of a graph timed alone), the
achieved GFLOP/s and the fraction of the floor reached.

    python bench/bench_end_to_end.py [--size 512] [--ensemble 8] [--threads 2] [--repeats 2] [--no-int8]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import AuthorsRecipe, build_medium  # noqa: E402
from roofline import (PARTS, ROOFLINE_HEADER, Timing, ort_session, part_runs, peak_runs, peaks_from,  # noqa: E402
                      roofline_rows, time_interleaved)

ROOT = Path(__file__).resolve().parents[1]
GOAL = {"fp32": 8.0, "int8": 12.0}  # the project's CPU goal: >= 8x fp32-accurate, >= 12x with int8


def export_all(folder: Path, embeds: Path, layer: int, size: int, out: Path, int8: bool, int8_convs: bool,
               calib_size: int) -> dict[str, Path]:
    """fp32 and int8 exports (int8: linear layers; "int8+convs": the encoder's convolutions too, kept only if it
    passes the export's own int8 gates), each with its CPU variant; name -> export folder."""
    from ditf_export.errors import ParityError
    from ditf_export.export import ExportRequest, export
    from ditf_runtime.cpu_rewrite import make_cpu_variant

    common = dict(model=str(folder), layer=layer, discard="none", prompt_embeds=embeds, parity_sizes=((64, 96),))
    dirs = {"fp32": out / "fp32"}
    export(ExportRequest(out=dirs["fp32"], image_size=size, **common))
    # INT8 calibration runs the graph at the export's image size with every GEMM input probed: at 512x512 on
    # this model the process grew past 17 GB and was killed on the 24 GB machine; calibrate at a smaller side.
    common["image_size"] = calib_size
    if int8:
        calib = ROOT / "examples" / "images"
        dirs["int8"] = out / "int8"
        export(ExportRequest(out=dirs["int8"], precision="int8", calib_images=calib, **common))
    if int8 and int8_convs:
        try:
            export(ExportRequest(out=out / "int8-convs", precision="int8", calib_images=calib, int8_convs=True,
                                 **common))
            dirs["int8+convs"] = out / "int8-convs"
        except ParityError as exc:
            print(f"int8 with --int8-convs: the export refused it (its own gates), no rows for it:\n{exc}")
    for d in dirs.values():
        make_cpu_variant(d)
    return dirs


def accuracy(label: str, ours: np.ndarray, reference: np.ndarray, precision: str) -> str:
    from ditf_runtime.parity import compare

    r = compare(ours, reference, precision)
    return (f"  {label:<42} cosine min {r.min_cosine:.6f}, rel {r.rel_error:.2e}, NN {r.nn_agreement:.3f} "
            f"({'within' if r else 'OUTSIDE'} the {precision} gates)")


RECIPE = "authors' recipe, PyTorch eager"


def time_group(name: str, export_dir: Path, recipe, image, noise, io, sizes, threads: int, repeats: int) -> dict:
    """One precision's two graphs (model.onnx, CPU variant), measured alongside the recipe and the peak kernels:
    end to end (all taking turns), then each graph's parts (taking turns with the peak kernels again). Fewer
    sessions are alive at once than with every graph in one group (a dense-attention session holds GBs), and each
    group's fractions of peak compare with peaks measured under the same load."""
    from ditf_calib.flops import account

    feed = {"image": image.numpy(), "noise": noise.numpy()}
    graphs = {f"ditf {name}, model.onnx": export_dir / "model.onnx",
              f"ditf {name}, CPU variant": export_dir / "model.cpu.onnx"}
    peak, work = peak_runs(threads)
    sessions = {label: ort_session(path, threads) for label, path in graphs.items()}
    outputs = {label: sess.run(["features"], feed)[0] for label, sess in sessions.items()}  # also the warm-up
    runs = {RECIPE: lambda: recipe(image, noise, sample=True)}
    runs.update({label: (lambda sess=sess: sess.run(["features"], feed)) for label, sess in sessions.items()})
    whole = time_interleaved({**runs, **peak}, repeats, warmup=False)
    del sessions, runs
    gc.collect()
    reports = {label: account(path, io, sizes) for label, path in graphs.items()}
    peaks, parts = peaks_from(whole, work), {}
    for label, path in graphs.items():  # one graph's part sessions alive at a time
        timed = time_interleaved({**part_runs(path, reports[label], feed, threads), **peak}, max(2, repeats - 1))
        parts[label] = {p: timed[p] for p in PARTS}
        peaks = peaks.merged(peaks_from(timed, work))
        del timed
        gc.collect()
    return {"precision": name.split("+")[0], "timings": {k: v for k, v in whole.items() if k in graphs or k == RECIPE},
            "outputs": outputs, "reports": reports, "peaks": peaks, "parts": parts}


def measure_group(name: str, export_dir: Path, folder: Path, embeds: Path, layer: int, size: int, ensemble: int,
                  threads: int, repeats: int, count_recipe: bool) -> dict:
    """One precision's group in a process of its own (its sessions' and the recipe's memory leaves with it: in one
    process, groups measured one after the other reached 24.0 GB on the 24 GB machine). The recipe's warm-up is its
    reference run (posterior mean); with count_recipe, also its FLOP count."""
    import resource

    from ditf_calib.graph_io import Sizes, diffusion_io
    from ditf_runtime.manifest import Manifest

    torch.set_num_threads(threads)
    image, noise = inputs(size, ensemble)
    recipe = AuthorsRecipe(folder, layer, embeds)
    recipe_flops = recipe.count_flops(image, noise) if count_recipe else None
    reference = recipe(image, noise, sample=False)
    recipe.best.clear()  # the warm-up's times are not a measurement
    geometry = Manifest.load(export_dir).geometry
    io = diffusion_io(geometry.latent_channels, geometry.feature_channels, geometry.vae_stride,
                      geometry.feature_stride // geometry.vae_stride)
    sizes = Sizes(batch=1, ensemble=ensemble, height=size, width=size)
    group = time_group(name, export_dir, recipe, image, noise, io, sizes, threads, repeats)
    group.update(recipe_flops=recipe_flops, reference=reference, recipe_parts=dict(recipe.best),
                 peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return group


def inputs(size: int, ensemble: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The image and the noise every pipeline gets (same seed in every process)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    noise = torch.randn(1, ensemble, 16, size // 8, size // 8, generator=g)
    return image, noise


def in_child(fn, *args):
    """fn(*args) in a fresh spawned process: what it allocated (GBs, not all returned to the system by the
    allocators) is gone when it returns."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ensemble", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--blocks", type=int, default=4, help="double blocks; as many single blocks")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 exports and their rows")
    ap.add_argument("--calib-size", type=int, default=256, help="long side of the INT8 calibration images")
    ap.add_argument("--int8-convs", action="store_true",
                    help="also an int8 export with the encoder's convolutions quantized (--int8-convs; on these "
                         "random-weight models it fails the export's int8 gates, which the run then prints)")
    args = ap.parse_args()

    load = os.getloadavg()
    s, e = args.size, args.ensemble
    with tempfile.TemporaryDirectory(prefix="ditf-bench-e2e-") as tmp:
        tmp = Path(tmp)
        folder, embeds, layer = build_medium(tmp, args.hidden, args.blocks, args.text_tokens)
        t0 = time.perf_counter()
        dirs = in_child(export_all, folder, embeds, layer, s, tmp, not args.no_int8, args.int8_convs, args.calib_size)
        export_s = time.perf_counter() - t0
        groups = {name: in_child(measure_group, name, d, folder, embeds, layer, s, e, args.threads, args.repeats,
                                 i == 0)
                  for i, (name, d) in enumerate(dirs.items())}
    first = next(iter(groups.values()))
    reference, recipe_flops = first["reference"], first["recipe_flops"]
    print(f"\nmedium FLUX-architecture model: hidden {args.hidden}, {args.blocks}+{args.blocks} blocks, layer {layer}, "
          f"{args.text_tokens} text tokens, FLUX-size VAE; image {s}x{s}, E={e}, {args.threads} threads; best of "
          f"{args.repeats} (pipelines taking turns, one group per precision, each in a process of its own; the recipe "
          f"ran in every group), spread = (worst - best) / best; exports took {export_s:.0f} s; load average "
          f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after; peak RSS per group: "
          + ", ".join(f"{name} {g['peak_rss'] / 1e9:.1f} GB" for name, g in groups.items()))
    recipe_best = Timing([t for g in groups.values() for t in g["timings"][RECIPE].times])
    print_pipelines(recipe_best, groups, reference)
    # torch's FlopCounterMode misses CPU attention: add the attention the ONNX counts (the VAE's E times)
    dense = groups["fp32"]["reports"]["ditf fp32, model.onnx"]
    recipe_flops["vae"] += e * dense.part("vae").flops["attention"]
    recipe_flops["transformer"] += dense.part("transformer").flops["attention"]
    recipe_parts = {part: min(g["recipe_parts"][part] for g in groups.values()) for part in first["recipe_parts"]}
    print_roofline(recipe_best, recipe_flops, recipe_parts, groups, e, args.text_tokens)


def print_pipelines(authors: Timing, groups: dict, reference) -> None:
    print(f"{'pipeline':<44}{'s/image':>9}{'spread':>8}{'speed-up':>10}{'goal':>7}")
    print(f"{RECIPE:<44}{authors.best:>9.2f}{100 * authors.spread:>7.0f}%{1:>9.2f}x")
    for g in groups.values():
        for label, t in g["timings"].items():
            if label != RECIPE:
                print(f"{label:<44}{t.best:>9.2f}{100 * t.spread:>7.0f}%{authors.best / t.best:>9.2f}x"
                      f"{GOAL[g['precision']]:>6.0f}x")
    print("accuracy against the authors' recipe (posterior mean on both sides):")
    for g in groups.values():
        for label, out in g["outputs"].items():
            print(accuracy(label, out, reference, g["precision"]))


def print_roofline(authors: Timing, recipe_flops, recipe_parts, groups: dict, ensemble: int, text_tokens: int) -> None:
    print("\nroofline. FLOPs: convolutions, linear layers and attention (the ONNX's, counted by ditf_calib.flops; the "
          "recipe's convolutions and matmuls by torch's FlopCounterMode, its attention from the ONNX); floor: each "
          "node at its kind's peak or at memory bandwidth, whichever is slower, with the peaks measured in the same "
          "group; floor/t: the fraction of that floor reached (the recipe's transformer time includes its head; the "
          "head's floor assumes DRAM traffic, its tensors fit in cache)")
    fp32 = groups["fp32"]
    fp32_report = fp32["reports"]["ditf fp32, model.onnx"]
    for name, g in groups.items():
        print(f"{name} group peaks: {g['peaks']}")
    print(ROOFLINE_HEADER)
    flops = dict(recipe_flops)
    flops["total"] = sum(recipe_flops.values())
    print("\n".join(roofline_rows(RECIPE, flops, _recipe_floors(fp32_report, fp32["peaks"], ensemble),
                                  {**recipe_parts, "total": sum(recipe_parts.values())})))
    for g in groups.values():
        peaks = g["peaks"]
        for label, report in g["reports"].items():
            flops = {p: report.part(p).gemm_flops for p in PARTS}
            flops["total"] = sum(flops.values())
            floors = {p: report.floor_seconds(peaks.flops, peaks.bandwidth, p) for p in PARTS}
            floors["total"] = sum(floors.values())
            times = {p: g["parts"][label][p].best for p in PARTS}
            times["total"] = sum(times.values())
            print("\n".join(roofline_rows(label, flops, floors, times)))
    text = fp32_report.part("transformer")
    print(f"transformer FLOPs on text tokens: {text.text_flops / 1e9:.0f} of {text.gemm_flops / 1e9:.0f} GFLOP "
          f"({100 * text.text_flops / text.gemm_flops:.0f}%: the {text_tokens} prompt tokens)")
    _verdict(authors.best, groups)


def _recipe_floors(report, peaks, ensemble: int) -> dict[str, float]:
    """The recipe's floor: our graph's, with the VAE E times (the same module on E copies)."""
    floors = {p: report.floor_seconds(peaks.flops, peaks.bandwidth, p) for p in PARTS}
    floors["vae"] *= ensemble
    floors["total"] = sum(floors.values())
    return floors


def _verdict(authors_s: float, groups: dict) -> None:
    """What the roofline allows: the best possible speed-up of each precision on this machine, also if every 3x3
    convolution ran as Winograd F(2x2, 3x3) (2.25x fewer multiplies, transforms for free: an upper bound)."""
    for precision in ("fp32", "int8"):
        floors = [(label, r.floor_seconds(g["peaks"].flops, g["peaks"].bandwidth),
                   r.floor_seconds(g["peaks"].flops, g["peaks"].bandwidth, conv3x3_speedup=2.25))
                  for g in groups.values() if g["precision"] == precision for label, r in g["reports"].items()]
        if not floors:
            continue
        label, floor, winograd = min(floors, key=lambda x: x[1])
        print(f"{precision}: the lowest roofline floor is {label}'s, {floor:.2f} s, so at most "
              f"{authors_s / floor:.1f}x over the recipe on this machine ({authors_s / winograd:.1f}x if every 3x3 "
              f"convolution were Winograd F(2x2,3x3) at the same peak); goal {GOAL[precision]:.0f}x needs "
              f"{authors_s / GOAL[precision]:.2f} s")


if __name__ == "__main__":
    main()

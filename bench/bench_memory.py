"""The runtime's memory estimate (ditf_runtime.memory) against measured peak RSS, side by side.

Each shape runs in a fresh process (peak RSS is per process): load the export, run the graph twice on
onnxruntime's CPU provider (a server or a batch job runs its session many times: the second run is
where a session's memory planning would show), read VmHWM after each run. Printed per shape: the graph
(model.onnx with dense attention, or the CPU variant model.cpu.onnx with fused attention), the predicted
weights and activations, the measured ones (RSS after loading minus before; peak minus after loading,
after run 1 and after run 2) and predicted / measured after run 2 (the estimate is meant to be an upper
bound: ratios >= 1, not far above).

    python bench/bench_memory.py                       # flux-tiny: model.onnx at 256..1024 px, E 1..8, batch 1..2,
                                                       # its CPU variant at 512..2048 px
    python bench/bench_memory.py --medium              # also a FLUX-like model with FLUX's VAE widths
    python bench/bench_memory.py --export DIR --shape 640x640x8x1 [--cpu-variant] ...
    python bench/bench_memory.py --precisions [--keep DIR]   # the medium model exported fp32, fp16, bf16, int8:
                                                       # the whole run's estimate (weights + activations)
                                                       # against the measured peak, per precision; fp16 also
                                                       # with onnxruntime's ConstantFolding skipped (no saving:
                                                       # its CPU provider widens fp16 weights to fp32 anyway;
                                                       # --no-unfolded leaves those rows out)

Needs up to ~8 GB at the largest default shape: run it under the shared lock on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TINY_SHAPES = ("256x256x2x1", "512x512x1x1", "512x512x8x1", "768x768x1x1", "768x768x2x1", "768x768x8x1",
               "768x768x2x2", "1024x512x2x1", "1024x1024x1x1", "1024x1024x8x1")
TINY_VARIANT_SHAPES = ("512x512x2x1", "1024x1024x2x1", "1536x1536x2x1", "2048x2048x2x1", "2048x2048x8x1",
                       "1024x1024x2x2")
MEDIUM_SHAPES = ("256x256x1x1", "512x512x1x1", "512x512x4x1", "640x640x2x1", "768x768x1x1")
MEDIUM_VARIANT_SHAPES = ("512x512x4x1", "1024x1024x2x1", "1536x1536x1x1")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PRECISION_SHAPES = ("256x256x1x1", "512x512x1x1", "512x512x4x1", "768x768x1x1")

CHILD = r"""
import json, sys
import numpy as np

def status():
    found = {}
    for line in open("/proc/self/status"):
        key, value = line.split(":", 1)
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found

export, h, w, e, b, choice = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
import time
import ditf_runtime
if len(sys.argv) > 7 and sys.argv[7] == "unfolded":  # the session skips ConstantFolding (as the exporter's do)
    import functools
    import ditf_runtime.backends.onnxrt as onnxrt
    onnxrt.create_session = functools.partial(onnxrt.create_session, disabled_optimizers=("ConstantFolding",))
before = status()["VmRSS"]
extractor = ditf_runtime.load(export, threads=2, max_memory=1 << 50, cpu_variant=choice)  # measure, never refuse
loaded = status()["VmRSS"]
g = extractor.geometry
rng = np.random.default_rng(0)
image = rng.uniform(-1, 1, (b, 3, h, w)).astype(np.float32)
noise = rng.standard_normal((b, e, g.latent_channels, h // g.vae_stride, w // g.vae_stride)).astype(np.float32)
peaks, seconds = [], []
for _ in range(2):
    start = time.perf_counter()
    extractor.run(image, noise)
    seconds.append(time.perf_counter() - start)
    peaks.append(status()["VmHWM"])
print(json.dumps({"before": before, "loaded": loaded, "peaks": peaks, "seconds": seconds,
                  "fused": extractor.graph.fused_attention}))
"""


def measure(export: Path, h: int, w: int, e: int, b: int, variant: bool, unfolded: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(export), str(h), str(w), str(e), str(b),
                          "on" if variant else "off", "unfolded" if unfolded else "default"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(export: Path, shapes: list[str], variant: bool = False) -> list[float]:
    """Prints one row per shape; returns the ratios predicted / measured (activations, after run 2)."""
    from ditf_runtime.manifest import Manifest
    from ditf_runtime.memory import RunShape, estimate

    manifest = Manifest.load(export)
    mib = 1 << 20
    graph = "model.cpu.onnx (fused attention)" if variant else "model.onnx (dense attention)"
    print(f"\n{manifest.model_name}, {graph}: {manifest.geometry.feature_channels} channels, "
          f"workload {manifest.workload}")
    print(f"{'H x W, E, B':<20}{'weights pred/meas MiB':>23}{'activations pred / run 1 / run 2 MiB':>38}"
          f"{'ratio':>7}")
    ratios = []
    for text in shapes:
        h, w, e, b = (int(v) for v in text.split("x"))
        got = measure(export, h, w, e, b, variant)
        assert got["fused"] == variant, f"{export}: expected fused attention {variant}, the graph says {got['fused']}"
        predicted = estimate(manifest, RunShape(b, e, h, w, fused_attention=variant))
        weights = got["loaded"] - got["before"]
        run1, run2 = (peak - got["loaded"] for peak in got["peaks"])
        ratios.append(predicted.activations / max(run2, 1))
        print(f"{f'{h}x{w}, E={e}, B={b}':<20}"
              f"{f'{predicted.weights / mib:.0f} / {weights / mib:.0f}':>23}"
              f"{f'{predicted.activations / mib:.0f} / {run1 / mib:.0f} / {run2 / mib:.0f}':>38}"
              f"{ratios[-1]:>7.2f}", flush=True)
    return ratios


def precision_table(exports: dict[str, Path], shapes: list[str], unfolded: bool = True) -> list[float]:
    """One row per precision and shape: the whole run's estimate (what the guard compares with the free memory
    before loading) against the measured peak RSS increase after run 2; returns those ratios."""
    from ditf_runtime.manifest import Manifest
    from ditf_runtime.memory import RunShape, estimate

    mib = 1 << 20
    names = sorted({Manifest.load(export).model_name for export in exports.values()})
    print(f"\n{', '.join(names)} by precision, model.onnx, onnxruntime CPU, 2 threads; total = whole run (weights + "
          "activations), measured = peak RSS after run 2 minus RSS before loading")
    print(f"{'precision':<16}{'H x W, E, B':<20}{'weights pred/meas MiB':>23}{'total pred / meas MiB':>23}"
          f"{'ratio':>7}{'before':>8}{'s/run':>7}")
    # "before": the ratio under the rule ditf used on the CPU until fp16/bf16 were widened there (stored weight
    # bytes, 2-byte scores), which is still the GPU rule
    ratios = []
    for precision, export in exports.items():
        manifest = Manifest.load(export)
        for unfolded in ((False, True) if precision == "fp16" and unfolded else (False,)):
            for text in shapes:
                h, w, e, b = (int(v) for v in text.split("x"))
                label = precision + (" unfolded" if unfolded else "")
                try:
                    got = measure(export, h, w, e, b, False, unfolded)
                except subprocess.CalledProcessError as exc:  # bf16: no CPU kernels (runs on a GPU only)
                    print(f"{label:<16}{text:<20}not run: {exc.stderr.strip().splitlines()[-1][:120]}", flush=True)
                    break
                predicted = estimate(manifest, RunShape(b, e, h, w))
                old = estimate(manifest, RunShape(b, e, h, w), device="cuda")
                weights, total = got["loaded"] - got["before"], got["peaks"][1] - got["before"]
                if not unfolded:
                    ratios.append(predicted.total / max(total, 1))
                print(f"{label:<16}{f'{h}x{w}, E={e}, B={b}':<20}"
                      f"{f'{predicted.weights / mib:.0f} / {weights / mib:.0f}':>23}"
                      f"{f'{predicted.total / mib:.0f} / {total / mib:.0f}':>23}"
                      f"{predicted.total / max(total, 1):>7.2f}{old.total / max(total, 1):>8.2f}"
                      f"{got['seconds'][1]:>7.2f}", flush=True)
    return ratios


def export_precisions(out: Path, precisions: list[str]) -> dict[str, Path]:
    """The medium model (export_model's) at each precision, under out/ (an export already there is reused)."""
    from ditf_export.export import ExportRequest, export
    from ditf_runtime.manifest import MANIFEST_FILE

    fp32 = export_model("medium", out) if not (out / "medium" / MANIFEST_FILE).is_file() else out / "medium"
    examples = Path(__file__).resolve().parents[1] / "examples" / "images"
    model, embeds = out / "medium-model", out / "embeds.safetensors"
    exports = {}
    for precision in precisions:
        folder = fp32 if precision == "fp32" else out / f"medium-{precision}"
        if not (folder / MANIFEST_FILE).is_file():
            # calibration (int8) and the fp16 range check on examples/images at 256 px: ranges, not speed, matter
            export(ExportRequest(model=str(model), out=folder, layer=3, discard="none", prompt_embeds=embeds,
                                 parity_sizes=((64, 96),), precision=precision, image_size=256,
                                 calib_images=examples if precision in ("fp16", "int8") else None))
        exports[precision] = folder
    return exports


def summary(name: str, ratios: list[float]) -> None:
    if ratios:
        ordered = sorted(ratios)
        print(f"{name}: predicted / measured {ordered[0]:.2f}-{ordered[-1]:.2f}, median "
              f"{ordered[len(ordered) // 2]:.2f}, over {len(ratios)} shapes")


def export_model(kind: str, tmp: Path) -> Path:
    from ditf_export.export import ExportRequest, export

    out = tmp / kind
    if kind == "flux-tiny":
        export(ExportRequest(model="flux-tiny", out=out))
        return out
    import torch
    from safetensors.torch import save_file

    from ditf_export.tiny import save_pipeline_folder, tiny_flux_transformer, tiny_vae

    # bench_end_to_end.py's medium model: hidden 768 (6 heads of 128), 2 + 2 blocks, FLUX's VAE widths.
    overrides = dict(num_layers=2, num_single_layers=2, attention_head_dim=128, num_attention_heads=6,
                     axes_dims_rope=(16, 56, 56), joint_attention_dim=256, pooled_projection_dim=128)
    folder = save_pipeline_folder(
        tmp / "medium-model", {"transformer": tiny_flux_transformer(0, massive=(), **overrides),
                               "vae": tiny_vae(1, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                               norm_num_groups=32)}, False, "FluxPipeline")
    g = torch.Generator().manual_seed(0)
    save_file({"prompt_embeds": torch.randn(1, 512, 256, generator=g),
               "pooled_prompt_embeds": torch.randn(1, 128, generator=g)}, str(tmp / "embeds.safetensors"))
    export(ExportRequest(model=str(folder), out=out, layer=3, discard="none",
                         prompt_embeds=tmp / "embeds.safetensors", parity_sizes=((64, 96),)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, default=None, help="Measure this export folder instead.")
    ap.add_argument("--shape", action="append", default=None, help="HxWxExB (repeatable).")
    ap.add_argument("--cpu-variant", action="store_true", help="With --export: run its CPU variant.")
    ap.add_argument("--medium", action="store_true", help="Also a FLUX-like model with FLUX's VAE widths.")
    ap.add_argument("--precisions", action="store_true",
                    help="The medium model at fp32, fp16, bf16 and int8: whole-run estimate against measured peak.")
    ap.add_argument("--keep", type=Path, default=None, help="With --precisions: export into (and reuse) this folder.")
    ap.add_argument("--no-unfolded", dest="unfolded", action="store_false",
                    help="With --precisions: skip the fp16 rows with ConstantFolding skipped (a quarter of the time).")
    args = ap.parse_args()
    if args.precisions:
        shapes = args.shape or list(PRECISION_SHAPES)
        if args.keep is not None:
            ratios = precision_table(export_precisions(args.keep, list(PRECISIONS)), shapes, args.unfolded)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ratios = precision_table(export_precisions(Path(tmp), list(PRECISIONS)), shapes, args.unfolded)
        print()
        summary("whole run, every precision", ratios)
        return
    if args.export is not None:
        summary("this export", table(args.export, args.shape or list(TINY_SHAPES), args.cpu_variant))
        return
    from ditf_runtime.cpu_rewrite import make_cpu_variant

    dense, fused = [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DITF_CACHE"] = str(Path(tmp) / "cache")  # flux-tiny is built there, not in the user's cache
        models = [("flux-tiny", TINY_SHAPES, TINY_VARIANT_SHAPES)]
        if args.medium:
            models.append(("medium", MEDIUM_SHAPES, MEDIUM_VARIANT_SHAPES))
        for kind, shapes, variant_shapes in models:
            export = export_model(kind, Path(tmp))
            make_cpu_variant(export)
            dense += table(export, args.shape or list(shapes))
            fused += table(export, args.shape or list(variant_shapes), variant=True)
    print()
    summary("model.onnx", dense)
    summary("CPU variant", fused)


if __name__ == "__main__":
    main()

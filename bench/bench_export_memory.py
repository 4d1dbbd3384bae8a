"""Export peak memory and time, per precision, on a FLUX.1-dev stand-in with the real dimensions.

    python bench/bench_export_memory.py --standin [--precisions fp32,fp16,bf16,int8,fp8]   (minutes per precision)
    python bench/bench_export_memory.py --medium [--precisions int8]                   (the same table, medium model)
    python bench/bench_export_memory.py --video-standin wan2.1-1.3b [--precisions fp32,bf16]   (or cogvideox-2b)
    python bench/bench_export_memory.py [--hidden 1024 --double 4 --single 12]         (medium model, layer sweep)

--standin: bench/standin.py's FLUX.1-dev stand-in (hidden 3072, T5 width 4096, the real VAE, random bf16
shards; cached in /work/cache), exported at layer 4, which keeps ~4.1 GB of fp32 weights with the same
per-block shapes as a FLUX.1-dev export at layer 28. Each precision runs `ditf-export` in a fresh process
(--prompt-embeds, so no text encoder; int8/fp8 and the fp16/bf16 range checks use examples/images at the
export's default size, long side 640, unless --image-size says otherwise: what a user gets). Peak RSS is
VmHWM; the ratio is (peak - baseline) / kept fp32 weights, the baseline being an interpreter with torch,
diffusers, onnx and onnxruntime imported. A sampler thread also gives the peak of each export step (a step
runs from one progress line to the next; it is named by the line that began it), and the table names the
step where each precision peaks. Then the measured ratios are applied to FLUX.1-dev's own kept weights at
layers 28 and 18 (computed from its config, not guessed).

--video-standin NAME: bench/video_standin.py's Wan 2.1 1.3B or CogVideoX-2b stand-in (the real widths, the real VAE,
random bf16 shards, exactly the 16 blocks an export at the registry's default layer 15 reads; cached in /work/cache),
exported at layer 15 with the real model's default long side (832 / 720) and --prompt-embeds: its kept fp32
weights are the real model's at layer 15, so the table is the real export's (nothing extrapolated). fp16/bf16 take
no --calib-images here: their range check runs on the export's random parity clips (9 frames at its small parity
sizes), as `ditf-export --precision bf16` without --calib-images does.

--medium: the same per-precision table on bench/medium.py's model (hidden 768, 4+4 blocks, layer 6,
massive channels 5 and 77 discarded; cached in /work/cache): a minute or two per precision, for profiling.

Without --standin or --medium: a medium FLUX-architecture model (real diffusers classes, random weights)
exported at several layers at fp32, beside a plain `from_pretrained` of the whole transformer: peak memory
follows the kept blocks, not the whole model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "examples" / "images"

# Peak RSS is read from /proc/self/status VmHWM: it starts afresh at exec, whereas ru_maxrss carries
# the forking parent's RSS over into the child.
STATUS = '''
def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
'''

CHILD_BASELINE = STATUS + r"""
import json, torch, diffusers, onnx, onnxruntime, transformers
print(json.dumps({"peak_rss": status("VmHWM")}))
"""

CHILD_FULL_LOAD = STATUS + r"""
import json, sys, torch, diffusers, onnx, onnxruntime, transformers
from diffusers import FluxTransformer2DModel
m = FluxTransformer2DModel.from_pretrained(sys.argv[1], subfolder="transformer")
n = sum(p.numel() * p.element_size() for p in m.parameters())
touched = sum(float(p.float().sum()) for p in m.parameters())  # an exporter reads every weight
print(json.dumps({"peak_rss": status("VmHWM"), "weights": n}))
"""

# One export with the peak RSS of every step: a thread samples VmRSS; each progress line closes a step.
CHILD_EXPORT = STATUS + r"""
import json, sys, threading, time
from pathlib import Path
import torch, diffusers, onnx, onnxruntime, transformers
from ditf_export.export import ExportRequest, export

kw = json.loads(sys.argv[1])
steps, peak, t0 = [], [0], time.perf_counter()
def sample():
    while True:
        peak[0] = max(peak[0], status("VmRSS"))
        time.sleep(0.1)
threading.Thread(target=sample, daemon=True).start()
def say(msg):
    peak[0] = max(peak[0], status("VmRSS"))
    steps.append({"t": round(time.perf_counter() - t0, 1), "peak_rss": peak[0], "msg": msg})
    print(msg, file=sys.stderr, flush=True)
    peak[0] = 0
for key in ("out", "prompt_embeds", "calib_images"):
    if kw.get(key):
        kw[key] = Path(kw[key])
if "parity_sizes" in kw:
    kw["parity_sizes"] = tuple(map(tuple, kw["parity_sizes"]))
export(ExportRequest(progress=say, force=True, **kw))
say("end")
print(json.dumps({"peak_rss": status("VmHWM"), "wall": time.perf_counter() - t0, "steps": steps}))
"""


def run(code: str, *args: str, echo: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, stdout=subprocess.PIPE,
                         stderr=None if echo else subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def kept_fp32_bytes(folder: Path, layer: int) -> int:
    """fp32 bytes of the transformer tensors an export at `layer` reads, from the shard headers (no load)."""
    from safetensors import safe_open

    from ditf_export.catalog import adapter_for
    from ditf_export.loading import _weight_files, resolve_source

    source = resolve_source(str(folder))
    adapter = adapter_for(source.family)
    total = 0
    for key, path in _weight_files(folder / "transformer").items():
        if adapter.needed_weight(key, source.transformer_config, layer):
            with safe_open(str(path), framework="pt") as f:
                shape = f.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= d
            total += 4 * n
    return total


def flux_dev_kept_bytes(layer: int) -> int:
    """fp32 bytes FLUX.1-dev (19 double + 38 single blocks) keeps at `layer`: its config on the meta device."""
    import torch
    from diffusers import FluxTransformer2DModel

    from ditf_export.families.flux import FluxAdapter
    from standin import FLUX_DEV, FLUX_DEV_BLOCKS

    config = {**FLUX_DEV, "num_layers": FLUX_DEV_BLOCKS[0], "num_single_layers": FLUX_DEV_BLOCKS[1]}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    adapter = FluxAdapter()
    return sum(4 * p.numel() for k, p in model.state_dict().items() if adapter.needed_weight(k, config, layer))


def steps_named(steps: list[dict]) -> list[dict]:
    """Each step with its duration and the line that began it (a step's peak is recorded at the line that
    ends it: the sampler's peak since the line before)."""
    named, last, began = [], 0.0, "start"
    for step in steps:
        named.append({**step, "took": step["t"] - last, "phase": began})
        last, began = step["t"], step["msg"]
    return named


def peak_phase(steps: list[dict]) -> dict:
    """The step whose peak is the run's highest."""
    return max(steps_named(steps), key=lambda s: s["peak_rss"])


def step_table(steps: list[dict], base: int, kept: int) -> list[str]:
    """Each step's duration and peak (steps over 1 s or 0.5x), named by the line that began it."""
    lines = []
    for step in steps_named(steps):
        ratio = (step["peak_rss"] - base) / kept
        if step["took"] >= 1.0 or ratio > 0.5:
            lines.append(f"    {step['took']:7.1f} s  peak {ratio:5.2f}x  during: {step['phase'][:90]}")
    return lines


def bench_precisions(args) -> None:
    """Every precision's export in a fresh process: wall, peak RSS over the kept fp32 weights, the peaking step."""
    video = args.video_standin is not None
    if video:
        from video_standin import IMAGE_SIZE, STANDIN_LAYER, build_video_standin

        folder, layer, discard = build_video_standin(args.video_standin, args.cache), STANDIN_LAYER, None
        args.image_size = args.image_size or IMAGE_SIZE[args.video_standin]
        title = (f"{args.video_standin} stand-in (real widths and VAE, random bf16 shards, the 16 blocks layer {layer} "
                 f"reads), layer {layer}")
    elif args.medium:
        from medium import DEFAULT_OUT, LAYER, MASSIVE, build_medium

        folder, layer = build_medium(args.cache or DEFAULT_OUT), LAYER
        discard = ",".join(map(str, MASSIVE))
        title = f"medium FLUX-architecture model (bench/medium.py: hidden 768, 4+4 blocks; random weights), layer {layer}"
    else:
        from standin import DEFAULT_OUT, STANDIN_LAYER, build_standin

        folder, layer, discard = build_standin(args.cache or DEFAULT_OUT), STANDIN_LAYER, None
        title = (f"FLUX.1-dev stand-in (hidden 3072, T5 width 4096, real VAE; random bf16 shards), layer {layer}")
    kept = kept_fp32_bytes(folder, layer)
    base = run(CHILD_BASELINE)["peak_rss"]
    gb = 1e-9
    rows = []
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        for precision in args.precisions.split(","):
            kw = dict(model=str(folder), out=str(Path(tmp) / precision), layer=layer, discard=discard,
                      prompt_embeds=str(folder / "prompt_embeds.safetensors"), precision=precision,
                      image_size=args.image_size,
                      calib_images=str(IMAGES) if precision != "fp32" and not video else None)
            print(f"\n== {precision}: ditf-export of {folder.name} at layer {layer}", file=sys.stderr)
            r = run(CHILD_EXPORT, json.dumps(kw), echo=args.verbose)
            rows.append((precision, r))
            print(f"{precision}: {r['wall']:.0f} s, peak {(r['peak_rss'] - base) * gb:.2f} GB above baseline "
                  f"= {(r['peak_rss'] - base) / kept:.2f}x the kept weights, during: {peak_phase(r['steps'])['phase']}",
                  file=sys.stderr)

    size = f"--image-size {args.image_size}" if args.image_size else "the export's default image size (long side 640)"
    if video:
        size = f"--image-size {args.image_size}; range checks on the random parity clips, no calibration images"
    print(f"\n{title}: kept fp32 weights {kept * gb:.2f} GB; calibration and range checks at {size}")
    print(f"interpreter baseline (torch, diffusers, onnx, onnxruntime imported): {base * gb:.2f} GB")
    print(f"{'precision':<10}{'wall':>9}{'peak RSS GB':>13}{'above base':>12}{'/ kept':>8}  peaks during")
    for precision, r in rows:
        print(f"{precision:<10}{r['wall'] / 60:>7.1f}m{r['peak_rss'] * gb:>13.2f}{(r['peak_rss'] - base) * gb:>12.2f}"
              f"{(r['peak_rss'] - base) / kept:>7.2f}x  {peak_phase(r['steps'])['phase'][:80]}")
    print("\nwhere the time goes and the peak per step (steps over 1 s or 0.5x):")
    for precision, r in rows:
        print(f"  {precision}:")
        print("\n".join(step_table(r["steps"], base, kept)))
    if args.medium or video:
        return

    layers = {28: flux_dev_kept_bytes(28), 18: flux_dev_kept_bytes(18)}
    print("\nExtrapolated to FLUX.1-dev (RAM = baseline + ratio x kept fp32 weights; time x kept-weights ratio):")
    print(f"{'precision':<10}" + "".join(f"{f'layer {k} ({v * gb:.1f} GB kept)':>30}" for k, v in layers.items()))
    for precision, r in rows:
        ratio, wall = (r["peak_rss"] - base) / kept, r["wall"]
        cells = "".join(f"{f'{(base + ratio * v) * gb:.1f} GB, ~{wall * v / kept / 60:.0f} min':>30}"
                        for v in layers.values())
        print(f"{precision:<10}{cells}")


def bench_medium(args) -> None:
    from ditf_export.tiny import build_flux_tiny

    heads = args.hidden // 64
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_flux_tiny(
            Path(tmp) / "medium", with_text=False, num_layers=args.double, num_single_layers=args.single,
            attention_head_dim=64, num_attention_heads=heads, axes_dims_rope=(8, 28, 28),
        )
        import torch
        from safetensors.torch import save_file

        embeds = Path(tmp) / "embeds.safetensors"  # --prompt-embeds keeps text encoders out of the measurement
        save_file({"prompt_embeds": torch.randn(1, 32, 32), "pooled_prompt_embeds": torch.randn(1, 32)}, str(embeds))
        base = run(CHILD_BASELINE)
        full = run(CHILD_FULL_LOAD, str(folder))
        total_layers = args.double + args.single
        rows = []
        for layer in sorted({1, args.double, total_layers // 2 + 1, total_layers - 1}):
            kw = dict(model=str(folder), out=str(Path(tmp) / f"out-{layer}"), layer=layer, discard="none",
                      text_max_length=32, prompt_embeds=str(embeds), parity_sizes=[[64, 96]])
            r = run(CHILD_EXPORT, json.dumps(kw))
            rows.append((layer, kept_fp32_bytes(folder, layer), r["peak_rss"]))

    mb = 1 / 2**20
    print(f"\nFLUX-architecture model: hidden {args.hidden}, {args.double} double + {args.single} single blocks, "
          f"transformer weights {full['weights'] * mb:.0f} MiB (fp32)")
    print(f"interpreter baseline (torch, diffusers, onnx, onnxruntime imported): {base['peak_rss'] * mb:.0f} MiB")
    print(f"{'what':<28}{'weights read MiB':>18}{'peak RSS MiB':>14}{'(RSS-base)/weights':>20}")
    print(f"{'full from_pretrained':<28}{full['weights'] * mb:>18.0f}{full['peak_rss'] * mb:>14.0f}"
          f"{(full['peak_rss'] - base['peak_rss']) / full['weights']:>20.2f}")
    for layer, w, rss in rows:
        print(f"{'ditf-export --layer ' + str(layer):<28}{w * mb:>18.0f}{rss * mb:>14.0f}"
              f"{(rss - base['peak_rss']) / w:>20.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--standin", action="store_true", help="the real-dimension FLUX.1-dev stand-in, per precision")
    which.add_argument("--medium", action="store_true", help="bench/medium.py's model, per precision (fast)")
    which.add_argument("--video-standin", choices=("wan2.1-1.3b", "cogvideox-2b"), default=None,
                       help="a real-dimension video DiT stand-in truncated at layer 15, per precision")
    ap.add_argument("--precisions", default=None, help="default: fp32,fp16,bf16,int8,fp8 (video: fp32,bf16)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="--standin/--medium: the export's --image-size, which calibration and the held-out "
                         "images use (default: the export's own, long side 640)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="--standin/--medium: where the model is built once and reused (default: /work/cache/...)")
    ap.add_argument("--scratch", type=Path, default=None, help="--standin/--medium: folder for the exports (default: tmp)")
    ap.add_argument("--verbose", action="store_true", help="show the exports' progress lines")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--double", type=int, default=4)
    ap.add_argument("--single", type=int, default=12)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/standin.py, bench/medium.py
    if args.precisions is None:
        args.precisions = "fp32,bf16" if args.video_standin else "fp32,fp16,bf16,int8,fp8"
    bench_precisions(args) if args.standin or args.medium or args.video_standin else bench_medium(args)


if __name__ == "__main__":
    main()

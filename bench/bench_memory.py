"""The runtime's memory estimate (ditf_runtime.memory) against measured peak RSS, side by side.

Each shape runs in a fresh process (peak RSS is per process): load the export, run the graph once on
onnxruntime's CPU provider, read VmHWM. Printed per shape: the predicted weights and activations, the
measured ones (RSS after loading minus before; peak minus after loading) and predicted / measured
(the estimate is meant to be an upper bound: ratios >= 1, not far above).

    python bench/bench_memory.py                       # flux-tiny at 256..1024 px, E 1..8, batch 1..2
    python bench/bench_memory.py --medium              # also a FLUX-like model with FLUX's VAE widths
    python bench/bench_memory.py --export DIR --shape 640x640x8x1 ...

Needs up to ~8 GB at the largest default shape: run it under the shared lock on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TINY_SHAPES = ("256x256x2x1", "512x512x1x1", "512x512x8x1", "768x768x1x1", "768x768x2x1", "768x768x8x1",
               "768x768x2x2", "1024x512x2x1", "1024x1024x1x1", "1024x1024x8x1")
MEDIUM_SHAPES = ("256x256x1x1", "512x512x1x1", "512x512x4x1", "640x640x2x1", "768x768x1x1")

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

export, h, w, e, b = sys.argv[1], *map(int, sys.argv[2:6])
import ditf_runtime
before = status()["VmRSS"]
extractor = ditf_runtime.load(export, threads=2, max_memory=1 << 50)  # measure, never refuse
loaded = status()["VmRSS"]
g = extractor.geometry
rng = np.random.default_rng(0)
image = rng.uniform(-1, 1, (b, 3, h, w)).astype(np.float32)
noise = rng.standard_normal((b, e, g.latent_channels, h // g.vae_stride, w // g.vae_stride)).astype(np.float32)
extractor.run(image, noise)
print(json.dumps({"before": before, "loaded": loaded, "peak": status()["VmHWM"]}))
"""


def measure(export: Path, h: int, w: int, e: int, b: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(export), str(h), str(w), str(e), str(b)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(export: Path, shapes: list[str]) -> None:
    from ditf_runtime.manifest import Manifest
    from ditf_runtime.memory import RunShape, estimate

    manifest = Manifest.load(export)
    mib = 1 << 20
    print(f"\n{manifest.model_name}: {manifest.geometry.feature_channels} channels, "
          f"workload {manifest.workload}")
    print(f"{'H x W, E, B':<20}{'weights pred/meas MiB':>24}{'activations pred/meas MiB':>28}{'ratio':>8}")
    for text in shapes:
        h, w, e, b = (int(v) for v in text.split("x"))
        got = measure(export, h, w, e, b)
        predicted = estimate(manifest, RunShape(b, e, h, w))
        weights, activations = got["loaded"] - got["before"], got["peak"] - got["loaded"]
        print(f"{f'{h}x{w}, E={e}, B={b}':<20}"
              f"{f'{predicted.weights / mib:.0f} / {weights / mib:.0f}':>24}"
              f"{f'{predicted.activations / mib:.0f} / {activations / mib:.0f}':>28}"
              f"{predicted.activations / max(activations, 1):>8.2f}", flush=True)


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
    ap.add_argument("--medium", action="store_true", help="Also a FLUX-like model with FLUX's VAE widths.")
    args = ap.parse_args()
    if args.export is not None:
        table(args.export, args.shape or list(TINY_SHAPES))
        return
    with tempfile.TemporaryDirectory() as tmp:
        table(export_model("flux-tiny", Path(tmp)), args.shape or list(TINY_SHAPES))
        if args.medium:
            table(export_model("medium", Path(tmp)), args.shape or list(MEDIUM_SHAPES))


if __name__ == "__main__":
    main()

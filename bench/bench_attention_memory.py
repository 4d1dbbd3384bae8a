"""Peak memory vs image size: dense attention (model.onnx) vs the CPU variant's fused attention.

flux-tiny exported with its defaults (layer 3, E = 2, 32 text tokens), then one image at each --sizes
through `ditf_runtime.load(export, cpu_variant="off" | "on")`, each run in its own process whose peak
resident memory during the run is reported (Linux VmHWM, reset after loading), with its RSS after
loading. Dense attention materialises heads x N x N scores per sequence (at 2048x2048: the VAE's
single-head attention over 65,536 latent cells, 17 GB, and the transformer's 2 x 4 x 16,416^2, 8.6 GB);
the fused kernel never does. Each process runs under an
address-space cap (--cap-gib) so a run that would not fit fails alone instead of pushing the shared
machine out of memory; the formula's estimate (ditf_runtime.cpu_variant.attention_bytes) is printed
beside every measurement.

    python bench/bench_attention_memory.py [--sizes 512,1024,1536,2048] [--cap-gib 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
cap = int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import ditf_runtime
export, size, choice, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[5])
ex = ditf_runtime.load(export, cpu_variant=choice, threads=threads, verify=False)
def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to now: loading has its own peak
    f.write("5")
base = status_kb("VmRSS")
g = ex.geometry
rng = np.random.default_rng(0)
image = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
noise = rng.standard_normal((1, ex.manifest.feature.ensemble, g.latent_channels, size // g.vae_stride,
                             size // g.vae_stride)).astype(np.float32)
t = time.perf_counter()
try:
    ex.run(image, noise)
    ok, err = True, ""
except Exception as exc:  # an allocation refused under the cap
    ok, err = False, str(exc).splitlines()[0][:160]
print(json.dumps({"ok": ok, "error": err, "seconds": time.perf_counter() - t, "graph": ex.graph.path.name,
                  "peak_kb": status_kb("VmHWM"), "base_kb": base}))
"""


def estimate_gb(manifest, size: int, fused: bool) -> float:
    """Attention bytes of one run by the documented formula: the VAE's mid-block attention (one head over the
    latent cells, C channels) plus the largest transformer attention (heads x (text + image) tokens)."""
    from ditf_runtime.cpu_variant import attention_bytes

    g, e = manifest.geometry, manifest.feature.ensemble
    cells = (size // g.vae_stride) ** 2
    tokens = (size // g.feature_stride) ** 2 + TEXT_TOKENS
    vae = attention_bytes(1, 1, cells, cells, VAE_CHANNELS, fused=fused)
    transformer = attention_bytes(e, HEADS, tokens, tokens, g.feature_channels // HEADS, fused=fused)
    return max(vae, transformer) / 1e9


# flux-tiny's attention shapes (exporter/tiny.py): 4 heads of 16; a 32-channel VAE mid-block; 32 text tokens
HEADS, VAE_CHANNELS, TEXT_TOKENS = 4, 32, 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,1024,1536,2048")
    ap.add_argument("--cap-gib", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ditf_export.export import ExportRequest, export
    from ditf_runtime.cpu_rewrite import make_cpu_variant
    from ditf_runtime.manifest import Manifest

    with tempfile.TemporaryDirectory(prefix="ditf-bench-attn-mem-") as tmp:
        tmp = Path(tmp)
        os.environ["DITF_CACHE"] = str(tmp / "cache")  # flux-tiny is built there, not in the user's cache
        out = tmp / "flux-tiny"
        export(ExportRequest(model="flux-tiny", out=out))
        make_cpu_variant(out)
        manifest = Manifest.load(out)
        cap = int(args.cap_gib * 2**30)
        print(f"flux-tiny (layer {manifest.feature.layer}, E={manifest.feature.ensemble}), {args.threads} threads, one "
              f"image per process, address space capped at {args.cap_gib:.0f} GiB; peak RSS of the whole process, "
              f"attention estimate: the larger of the VAE's and the transformer's attention by the formula")
        print(f"{'size':>6}  {'graph':<16}{'peak RSS GB':>12}{'after load':>11}{'attention est. GB':>18}{'s':>7}")
        for size in sizes:
            for choice, fused in (("off", False), ("on", True)):
                proc = subprocess.run([sys.executable, "-c", CHILD, str(out), str(size), choice, str(cap),
                                       str(args.threads)], capture_output=True, text=True)
                est = estimate_gb(manifest, size, fused)
                try:
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    r = {"ok": False, "error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:160],
                         "graph": choice, "peak_kb": 0, "base_kb": 0, "seconds": float("nan")}
                peak = f"{r['peak_kb'] / 1e6:12.2f}" if r["ok"] else f"{'over cap':>12}"
                print(f"{size:>6}  {r['graph']:<16}{peak}{r['base_kb'] / 1e6:11.2f}{est:18.2f}{r['seconds']:7.1f}"
                      + ("" if r["ok"] else f"  ({r['error']})"), flush=True)


if __name__ == "__main__":
    main()

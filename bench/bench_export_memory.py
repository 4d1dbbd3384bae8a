"""Export peak memory grows with the kept blocks, not the whole model.

Builds a medium FLUX-architecture checkpoint (random weights, real diffusers classes, saved with
save_pretrained), then in fresh processes:
  - loads the whole transformer with diffusers' from_pretrained (what a naive exporter does), and
  - runs the full `ditf-export` at several layers,
recording peak RSS (ru_maxrss) and the bytes of transformer weights each export read. Prints a table
and the ratio (export peak RSS - interpreter baseline) / kept weight bytes.

    python bench/bench_export_memory.py [--hidden 1024] [--double 4] [--single 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Peak RSS is read from /proc/self/status VmHWM: it starts afresh at exec, whereas ru_maxrss carries
# the forking parent's RSS over into the child.
PEAK = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024"

CHILD_BASELINE = r"""
import json, torch, diffusers, onnx, onnxruntime, transformers
print(json.dumps({"peak_rss": PEAK}))
""".replace("PEAK", PEAK)

CHILD_FULL_LOAD = r"""
import json, sys, torch, diffusers, onnx, onnxruntime, transformers
from diffusers import FluxTransformer2DModel
m = FluxTransformer2DModel.from_pretrained(sys.argv[1], subfolder="transformer")
n = sum(p.numel() * p.element_size() for p in m.parameters())
touched = sum(float(p.float().sum()) for p in m.parameters())  # an exporter reads every weight
print(json.dumps({"peak_rss": PEAK, "weights": n}))
""".replace("PEAK", PEAK)

CHILD_EXPORT = r"""
import json, sys
from pathlib import Path
from ditf_export.catalog import adapter_for
from ditf_export.export import ExportRequest, export
from ditf_export.loading import resolve_source, load_truncated_transformer
layer = int(sys.argv[2])
m = export(ExportRequest(model=sys.argv[1], out=Path(sys.argv[3]), layer=layer, discard="none",
                         text_max_length=32, parity_sizes=((64, 96),)))
peak = PEAK
src = resolve_source(sys.argv[1])
_, report = load_truncated_transformer(src, adapter_for(src.family), layer)
print(json.dumps({"peak_rss": peak, "weights": report.bytes_read}))
""".replace("PEAK", PEAK)


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--double", type=int, default=4)
    ap.add_argument("--single", type=int, default=12)
    args = ap.parse_args()

    from ditf_export.tiny import build_flux_tiny

    heads = args.hidden // 64
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_flux_tiny(
            Path(tmp) / "medium", with_text=False, num_layers=args.double, num_single_layers=args.single,
            attention_head_dim=64, num_attention_heads=heads, axes_dims_rope=(8, 28, 28),
        )
        # --prompt-embeds keeps text encoders out of the measurement
        import torch
        from safetensors.torch import save_file

        embeds = Path(tmp) / "embeds.safetensors"
        save_file({"prompt_embeds": torch.randn(1, 32, 32), "pooled_prompt_embeds": torch.randn(1, 32)}, str(embeds))
        base = run(CHILD_BASELINE)
        full = run(CHILD_FULL_LOAD, str(folder))
        total_layers = args.double + args.single
        rows = []
        for layer in sorted({1, args.double, total_layers // 2 + 1, total_layers - 1}):
            code = CHILD_EXPORT.replace("text_max_length=32,", f"text_max_length=32, prompt_embeds=Path({str(embeds)!r}),")
            r = run(code, str(folder), str(layer), str(Path(tmp) / f"out-{layer}"))
            rows.append((layer, r["weights"], r["peak_rss"]))

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


if __name__ == "__main__":
    main()

"""INT8 and FP8 on the medium FLUX-architecture model: accuracy on held-out real images, CPU speed vs fp32 and
the authors' recipe, measured side by side in one run.

The model is bench/medium.py's (hidden 768, 4 double + 4 single blocks, layer 6, 512 text tokens, a VAE
the size of FLUX's, planted massive channels 5 and 77, discarded; E = 8). Every graph is written by
ditf-export's own loop, exactly as the command does:

    ditf-export --model <medium> --layer 6 --prompt-embeds <file> --discard 5,77 --ensemble 8 \\
        --precision int8 --calib-images examples/images [--calib-method M] --out <dir>

Besides one int8 export per --methods entry, one with the VAE encoder's convolutions quantized too (the
first method, `--int8-convs`), unless --no-int8-convs, and one fp8 export (`--precision fp8`, max calibration;
onnxruntime's CPU runs it as dequantise + FP32, so its speed row is not what a GPU does), unless --no-fp8.
On these random weights the export's own gates may refuse one; the run then prints the refusal's reason
instead of its rows.

Accuracy (from each export's own parity report, against the FP32 PyTorch module on the same inputs, after
discard): the held-out real images (cat-a, cat-b: split off examples/images, never calibrated on) at the
export's default size, which decide the INT8 gate, and the random-pixel inputs, reported beside them.

Speed: one image at --speed-size, E = 8, onnxruntime CPUExecutionProvider with --threads threads, best of
--repeats after a warm-up; the authors' recipe (bench_end_to_end.AuthorsRecipe: PyTorch eager fp32, the
image repeated E times, the VAE run E times, the full conditioning path) timed once (it takes a minute or
more per image here) unless --recipe-repeats says otherwise.

    python bench/bench_precision.py [--methods max,percentile,mse,entropy] [--speed-size 512] [--threads 2]
        [--no-int8-convs] [--exports DIR]   (keep the exports in DIR/fp32, DIR/int8-<method>,
        DIR/int8-<method>-convs; ones already there are reused)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def export_one(folder: Path, out: Path, precision: str, method: str, image_size: int,
               int8_convs: bool = False) -> tuple[dict, float]:
    from ditf_export.export import ExportRequest, export
    from ditf_runtime.manifest import Manifest

    from medium import LAYER, MASSIVE

    if (out / "manifest.json").is_file():  # --exports DIR: made by an earlier run (or by the command itself)
        return Manifest.load(out).parity, float("nan")
    t0 = time.perf_counter()
    manifest = export(ExportRequest(
        model=str(folder), out=out, layer=LAYER, discard=",".join(map(str, MASSIVE)), ensemble=8,
        image_size=image_size, prompt_embeds=folder / "prompt_embeds.safetensors", precision=precision,
        calib_images=ROOT / "examples" / "images" if precision != "fp32" else None,
        calib_method=method if precision in ("int8", "fp8") else "max", int8_convs=int8_convs,
        progress=lambda line: None))
    return manifest.parity, time.perf_counter() - t0


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def row_text(row: dict) -> str:
    nn = "n/a" if row["nn_agreement"] is None else f"{row['nn_agreement']:.3f}"
    pck = "n/a" if row["pck_agreement"] is None else f"{row['pck_agreement']:.3f}"
    return (f"cos min {row['min_cosine']:.5f} mean {row['mean_cosine']:.6f}, rel {row['rel_error']:.3f}, "
            f"NN {nn} ({row['nn_points']}), PCK {pck} ({row['pck_points']})")


def export_all(folder: Path, tmp: Path, methods: list[str], convs_methods: list[str], image_size: int,
               fp8: bool = True) -> tuple[dict[str, tuple[Path, dict, float]], dict[str, str]]:
    """fp32, int8 per method, int8 + encoder convs per convs method: name -> (folder, parity, seconds), and
    name -> the reason of each export the exporter refused (a refused INT8 export is a result too)."""
    plans = [("fp32", "fp32", "max", False, "fp32")]
    plans += [(f"int8 {m}", "int8", m, False, f"int8-{m}") for m in methods]
    plans += [(f"int8 {m} + encoder convs", "int8", m, True, f"int8-{m}-convs") for m in convs_methods]
    plans += [("fp8 max", "fp8", "max", False, "fp8-max")] if fp8 else []
    exports, refused = {}, {}
    for name, precision, method, convs, folder_name in plans:
        out = tmp / folder_name
        try:
            parity, took = export_one(folder, out, precision, method, image_size, int8_convs=convs)
        except Exception as exc:  # say why, keep going
            lines = str(exc).splitlines() or [type(exc).__name__]
            print(f"{name}: export refused: {lines[0]}\n  " + "\n  ".join(lines[1:6]))
            gates = [line.split("FAIL: ", 1)[1] for line in lines if "FAIL: " in line and "not gated" not in line]
            refused[name] = lines[0].rstrip(":") + (f" ({'; '.join(gates)})" if gates else "")
            continue
        exports[name] = (out, parity, took)
        print(f"{name}: " + (f"exported in {took:.0f} s" if took == took else f"reused {out}"))
    return exports, refused


def print_accuracy(exports: dict[str, tuple[Path, dict, float]]) -> None:
    print("\naccuracy vs the FP32 PyTorch module (each export's parity report); [gate] rows decide, the others "
          "are reported")
    width = max(map(len, exports), default=10) + 1
    for name, (out, parity, _) in exports.items():
        if name == "fp32":
            continue
        for row in parity["results"]:
            what = row.get("inputs") or f"random pixels {row['height']}x{row['width']} B={row['batch']}"
            mark = "[gate]" if row.get("gates", True) else "      "
            print(f"{name:<{width}}{mark} {what}\n{'':{width + 7}}{row_text(row)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="max", help="comma list of INT8 calibration methods to export and compare")
    ap.add_argument("--image-size", type=int, default=640, help="the exports' default long side (FLUX's 640)")
    ap.add_argument("--speed-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--recipe-repeats", type=int, default=1)
    ap.add_argument("--no-int8-convs", action="store_true",
                    help="skip the int8 export whose encoder convolutions are quantized too (--int8-convs)")
    ap.add_argument("--no-fp8", action="store_true", help="skip the fp8 export")
    ap.add_argument("--model", type=Path, default=None, help="medium model folder (default: built into /work/cache)")
    ap.add_argument("--exports", type=Path, default=None, help="keep (and reuse) the exports in this folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ditf_runtime.backends.onnxrt import create_session

    from bench_end_to_end import AuthorsRecipe
    from medium import DEFAULT_OUT, LAYER, MASSIVE, build_medium

    folder = args.model or build_medium(DEFAULT_OUT)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="ditf-bench-precision-") as tmp:
        tmp = args.exports or Path(tmp)
        convs = methods[:1] if not args.no_int8_convs else []
        exports, refused = export_all(folder, tmp, methods, convs, args.image_size, fp8=not args.no_fp8)

        s, e = args.speed_size, 8
        g = torch.Generator().manual_seed(0)
        image = torch.rand(1, 3, s, s, generator=g) * 2 - 1
        noise = torch.randn(1, e, 16, s // 8, s // 8, generator=g)
        feed = {"image": image.numpy(), "noise": noise.numpy()}
        latency, outputs = {}, {}
        for name, (out, _, _) in exports.items():
            sess = create_session(out / "model.onnx", threads=args.threads)
            latency[name] = best_of(lambda: sess.run(["features"], feed), args.repeats)
            outputs[name] = sess.run(["features"], feed)[0]
            del sess
        recipe = AuthorsRecipe(folder, LAYER, folder / "prompt_embeds.safetensors", discard=MASSIVE)
        # no warm-up: a minute or more per run, and its first run is no slower than the next
        recipe_s = min(_timed(lambda: recipe(image, noise, sample=True)) for _ in range(args.recipe_repeats))

    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    print(f"\nFLUX-architecture model {folder.name}: hidden {hidden}, {config['num_layers']}+"
          f"{config['num_single_layers']} blocks, layer {LAYER}, FLUX-size VAE, "
          f"discard {','.join(map(str, MASSIVE))}, E=8; exports at long side {args.image_size}")
    print(f"speed: one {s}x{s} image, E={e}, onnxruntime CPU {args.threads} threads, best of {args.repeats}; "
          f"authors' recipe PyTorch eager fp32 (VAE x E), best of {args.recipe_repeats}")
    print(f"{'pipeline':<34}{'s/image':>9}{'vs recipe':>10}{'vs fp32':>9}  gate")
    print(f"{'authors recipe (PyTorch fp32)':<34}{recipe_s:>9.2f}{1.0:>10.2f}{'-':>9}")
    fp32_s = latency.get("fp32")
    for name, (out, parity, _) in exports.items():
        vs32 = f"{fp32_s / latency[name]:>9.2f}" if fp32_s else f"{'-':>9}"
        print(f"{name:<34}{latency[name]:>9.2f}{recipe_s / latency[name]:>10.2f}{vs32}  "
              f"{'PASS' if parity['passed'] else 'FAIL'}")
    for name, reason in refused.items():
        print(f"{name:<34}{'-':>9}{'-':>10}{'-':>9}  refused: {reason}")
    print_accuracy(exports)
    ref = outputs.get("fp32")
    if ref is not None:
        from ditf_runtime.parity import compare

        for name, got in outputs.items():
            if name != "fp32":
                print(f"{name} vs fp32 graph on the speed input (random pixels {s}x{s}, E=8): "
                      f"{compare(got, ref, 'fp8' if name.startswith('fp8') else 'int8')}")


if __name__ == "__main__":
    main()

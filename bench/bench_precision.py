"""CPU latency and accuracy of one exported graph at fp32, fp16, int8 (and bf16 accuracy, emulated).

A medium FLUX-architecture transformer (random weights, real diffusers classes, planted massive
channels 7 and 41, discarded), the small test VAE, random prompt embeddings; exported once at fp32
by ditf-export's own loop, then rewritten by ditf_calib exactly as `--precision` does:

- fp16: typed FP16 islands (GEMMs, attention, convs), the rest FP32; timed as onnxruntime runs it
  (its CPU provider computes FP16 GEMMs in FP32 behind casts, so that row's accuracy is optimistic:
  the "fp16 (emulated)" row, the Cast-emulated twin, shows FP16's rounding as a GPU would);
- int8: explicit Q/DQ calibrated on examples/images (the runtime's preprocessing, seeded noise);
- bf16: accuracy only, on the Cast-emulated twin (onnxruntime CPU has no bf16 kernels: its latency
  here would mean nothing).

Latency: onnxruntime CPUExecutionProvider, `--threads` intra-op threads, one image (B=1), E=1,
median of `--repeats` runs after one warm-up, the graphs taking turns run by run. Accuracy: against the FP32 graph on onnxruntime
(which matches PyTorch to ~1e-6, see the export's parity report), on a random batch and on the
example images at the same size, after channel discard: per-token cosine, relative error, NN agreement.

    python bench/bench_precision.py [--hidden 512] [--blocks 2] [--size 256] [--threads 2] [--int8-sweep]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build(tmp: Path, hidden: int, blocks: int, text_tokens: int) -> tuple[Path, int]:
    from safetensors.torch import save_file

    from ditf_export.tiny import save_pipeline_folder, tiny_flux_transformer, tiny_vae

    overrides = dict(num_layers=blocks, num_single_layers=blocks, attention_head_dim=64,
                     num_attention_heads=hidden // 64, axes_dims_rope=(8, 28, 28),
                     joint_attention_dim=256, pooled_projection_dim=128)
    folder = save_pipeline_folder(tmp / "medium", {"transformer": tiny_flux_transformer(0, **overrides),
                                                   "vae": tiny_vae(1)}, False, "FluxPipeline")
    g = torch.Generator().manual_seed(0)
    save_file({"prompt_embeds": torch.randn(1, text_tokens, 256, generator=g),
               "pooled_prompt_embeds": torch.randn(1, 128, generator=g)}, str(tmp / "embeds.safetensors"))
    return folder, 2 * blocks - 1


def sessions(paths: dict[str, Path], threads: int) -> dict:
    from ditf_runtime.backends.onnxrt import create_session

    return {name: create_session(p, threads=threads) for name, p in paths.items()}


def latencies(sess: dict, feed: dict, repeats: int) -> dict[str, float]:
    """Median per graph; the graphs take turns run by run, so load from other processes hits all alike."""
    for s in sess.values():
        s.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sess}
    for _ in range(repeats):
        for name, s in sess.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def accuracy(path: Path, feeds: list[dict], refs: list[np.ndarray], precision: str):
    from ditf_calib.graph import session
    from ditf_runtime.parity import compare

    sess = session(path)
    return [compare(sess.run(None, f)[0], r, precision) for f, r in zip(feeds, refs)]


def fmt(results) -> str:
    return " | ".join(f"cos min {r.min_cosine:.5f} mean {r.mean_cosine:.6f}, rel {r.rel_error:.3f}, "
                      f"NN {r.nn_agreement:.3f} ({r.nn_points})" for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=2, help="double blocks; as many single blocks")
    ap.add_argument("--text-tokens", type=int, default=256)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--int8-sweep", action="store_true", help="also compare INT8 calibration settings")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ditf_calib import graph as G
    from ditf_calib.data import load_calibration_set
    from ditf_calib.graph_io import Sizes, diffusion_io
    from ditf_calib.int8 import Int8Config, quantize
    from ditf_calib.precision import to_low_precision
    from ditf_export.export import ExportRequest, export

    with tempfile.TemporaryDirectory(prefix="ditf-bench-precision-") as tmp:
        tmp = Path(tmp)
        folder, layer = build(tmp, args.hidden, args.blocks, args.text_tokens)
        t0 = time.perf_counter()
        export(ExportRequest(model=str(folder), out=tmp / "fp32", layer=layer, discard="7,41", ensemble=1,
                             image_size=args.size, prompt_embeds=tmp / "embeds.safetensors",
                             parity_sizes=((64, 96),)))
        print(f"exported fp32 in {time.perf_counter() - t0:.1f} s")
        fp32 = G.load(tmp / "fp32" / "model.onnx")
        paths = {"fp32": tmp / "fp32" / "model.onnx"}

        def write(model, name: str) -> Path:
            d = tmp / name.replace(" ", "_").replace("(", "").replace(")", "")
            d.mkdir()
            return G.save(model, d / "model.onnx")

        paths["fp16"] = write(to_low_precision(fp32, "fp16")[0], "fp16")
        paths["fp16 (emulated)"] = write(to_low_precision(fp32, "fp16", emulate=True)[0], "fp16-emulated")
        paths["bf16 (emulated)"] = write(to_low_precision(fp32, "bf16", emulate=True)[0], "bf16")

        io = diffusion_io(latent_channels=16, feature_channels=args.hidden, vae_stride=8, patch_size=2)
        calib = load_calibration_set(ROOT / "examples" / "images", io=io, long_side=args.size, ensemble=2)
        s = args.size
        evals = [io.random_inputs(Sizes(batch=2, ensemble=2, height=s, width=s), seed=7), calib.batched((s, s))]
        ref_sess = G.session(paths["fp32"])
        refs = [ref_sess.run(None, f)[0] for f in evals]
        base = Int8Config(protect_channels=(7, 41), protect_width=args.hidden)
        configs = {"int8": base}
        if args.int8_sweep:
            configs.update({
                "int8 percentile": Int8Config(calibration="percentile", protect_channels=(7, 41),
                                              protect_width=args.hidden),
                "int8 mse": Int8Config(calibration="mse", protect_channels=(7, 41), protect_width=args.hidden),
                "int8 entropy": Int8Config(calibration="entropy", protect_channels=(7, 41), protect_width=args.hidden),
                "int8 no smoothing": Int8Config(smooth_alpha=None, protect_channels=(7, 41), protect_width=args.hidden),
                "int8 alpha 0.8": Int8Config(smooth_alpha=0.8, protect_channels=(7, 41), protect_width=args.hidden),
                "int8 no outlier split": Int8Config(outlier_ratio=float("inf")),
                "int8 keep 4 sensitive": Int8Config(keep_sensitive=4, protect_channels=(7, 41), protect_width=args.hidden),
                "int8 + encoder convs": Int8Config(convs=True, protect_channels=(7, 41), protect_width=args.hidden),
            })
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            q, _ = quantize(fp32, list(calib.feeds()), cfg)
            paths[name] = write(q, name)
            print(f"{name}: calibrated on {len(calib)} images in {time.perf_counter() - t0:.1f} s")

        feed = {"image": evals[0]["image"][:1], "noise": evals[0]["noise"][:1, :1]}
        timed = {n: p for n, p in paths.items() if "emulated" not in n}
        lat = latencies(sessions(timed, args.threads), feed, args.repeats)
        rows = []
        for name, path in paths.items():
            size_mb = (path.stat().st_size + path.with_name(path.name + ".data").stat().st_size) / 1e6
            rows.append((name, size_mb, lat.get(name), accuracy(path, evals, refs, name.split()[0])))
        print(f"\nmedium FLUX-architecture model: hidden {args.hidden}, {args.blocks}+{args.blocks} blocks "
              f"(layer {layer}), {args.text_tokens} text tokens, {s}x{s}, B=1 E=1, onnxruntime CPU "
              f"{args.threads} threads, median of {args.repeats}")
        print("accuracy vs the fp32 graph: [random images B=2 E=2] | [5 example images B=5 E=2], after discard")
        fp32_lat = rows[0][2]
        print(f"{'graph':24s} {'MB':>7s} {'latency s':>10s} {'vs fp32':>8s}  accuracy")
        for name, mb, lat, acc in rows:
            lat_s = f"{lat:10.3f}" if lat is not None else f"{'-':>10s}"
            ratio = f"{fp32_lat / lat:7.2f}x" if lat else f"{'-':>8s}"
            print(f"{name:24s} {mb:7.1f} {lat_s} {ratio}  {fmt(acc) if name != 'fp32' else '(reference)'}")


if __name__ == "__main__":
    main()

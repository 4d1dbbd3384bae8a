"""What FP8 quantizes, decided by measurement: variants of the Q/DQ quantizer on one fp32 export, judged on
held-out real images against the fp32 graph itself (onnxruntime CPU, which runs FP8 Q/DQ as dequantise +
FP32 compute).

    python bench/bench_fp8_choices.py --export EXPORT_DIR [--variants all] [--calib-size 640]

EXPORT_DIR: an fp32 `ditf-export` folder (flux-tiny, or bench/medium.py's model at layer 6). Calibration and
held-out images are the export's own split of examples/images (ditf_calib.split: cat-a and cat-b held out),
calibrated at --calib-size, judged at the export's default long side, E = 2, the export's discard applied
(the graph's output). Variants (int8.Int8Config):

    int8              the int8 export's defaults (SmoothQuant 0.5, massive channels split off to FP32)
    fp8               --precision fp8's defaults (calib/fp8.py: no SmoothQuant, massive channels split off)
    fp8 smooth        fp8 with SmoothQuant alpha 0.5
    fp8 no split      fp8 without the FP32 path of the massive channels (one scale over all channels)
    fp8 attention     fp8 + Q/DQ on attention's QK^T and PV inputs
    fp8 convs         fp8 + the VAE encoder's convolutions

Each row: per-token cosine min / mean, relative error, NN agreement, PCK agreement (ditf_runtime.parity),
the quantizer's time, and the weights' size in the written data file.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"


def variants():
    from ditf_calib.fp8 import fp8_config
    from ditf_calib.int8 import Int8Config

    fp8 = fp8_config(Int8Config())
    return {
        "int8": Int8Config(),
        "fp8": fp8,
        "fp8 smooth": replace(fp8, smooth_alpha=0.5),
        "fp8 no split": replace(fp8, outlier_ratio=float("inf"), protect_channels=()),
        "fp8 attention": replace(fp8, attention=True),
        "fp8 convs": replace(fp8, convs=True),
    }


@dataclass
class HeldOut:
    """An fp32 export's manifest, its calibration images (the export's own split of examples/images) and the
    held-out images with the fp32 graph's outputs on them: what a quantizer is calibrated on and judged by."""

    manifest: object
    calibration: object  # ditf_calib.data.CalibrationSet
    feeds: list  # the held-out images, one feed each, at the export's default long side, E = 2
    references: list  # the fp32 graph's features on them
    held_out: tuple[Path, ...]
    size: int

    @classmethod
    def of(cls, export: Path, calib_side: int | None = None, side: int | None = None) -> "HeldOut":
        """calib_side, side: long sides of the calibration and held-out images (default: the export's)."""
        from ditf_calib import graph as G
        from ditf_calib.data import load_calibration_set
        from ditf_calib.graph_io import diffusion_io
        from ditf_calib.split import split_images
        from ditf_runtime.manifest import Manifest

        manifest = Manifest.load(export)
        geo = manifest.geometry
        io = diffusion_io(latent_channels=geo.latent_channels, feature_channels=geo.feature_channels,
                          vae_stride=geo.vae_stride, patch_size=geo.feature_stride // geo.vae_stride)
        size = side or manifest.preprocess.long_side
        split = split_images(IMAGES, None)
        calibration = load_calibration_set(split.calibration, io=io, long_side=(calib_side or size,), ensemble=2)
        feeds = list(load_calibration_set(split.held_out, io=io, long_side=size, ensemble=2, seed=1).feeds())
        fp32 = G.session(export / "model.onnx")
        references = [fp32.run(None, f)[0] for f in feeds]
        return cls(manifest, calibration, feeds, references, tuple(split.held_out), size)

    def judge(self, model_path: Path, precision: str):
        """The quantized graph on the held-out images against the fp32 graph (ditf_runtime.parity)."""
        from ditf_calib import graph as G
        from ditf_runtime.parity import compare

        sess = G.session(model_path)
        got = [sess.run(None, f)[0] for f in self.feeds]
        return compare([g[0] for g in got], [r[0] for r in self.references], precision)

    def describe(self) -> str:
        return (f"held-out {', '.join(Path(p).name for p in self.held_out)} at long side {self.size}, E=2, vs the "
                f"fp32 graph (onnxruntime CPU); calibrated on {len(self.calibration)} images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--variants", default="all", help="comma list of the variants above, or all")
    ap.add_argument("--calib-size", type=int, default=None, help="default: the export's long side")
    ap.add_argument("--size", type=int, default=None, help="held-out images' long side (default: the export's)")
    args = ap.parse_args()

    from ditf_calib.int8 import quantize
    from ditf_calib.tensors import GraphRewrite

    data = HeldOut.of(args.export, args.calib_size, args.size)
    manifest = data.manifest
    feeds = list(data.calibration.feeds())
    discard = tuple(manifest.feature.discard)
    chosen = variants() if args.variants == "all" else {k: variants()[k] for k in args.variants.split(",")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ditf-fp8-choices-") as tmp:
        for name, config in chosen.items():
            config = replace(config, protect_channels=discard if "no split" not in name else (),
                             protect_width=manifest.geometry.feature_channels)
            out = Path(tmp) / name.replace(" ", "-") / "model.onnx"
            out.parent.mkdir()
            t0 = time.perf_counter()
            with GraphRewrite(args.export / "model.onnx", out) as rw:
                qmodel, report = quantize(rw.model, feeds, config, store=rw.store)
                rw.commit(qmodel)
            took = time.perf_counter() - t0
            res = data.judge(out, "fp8")
            data_mb = (out.parent / "model.onnx.data").stat().st_size / 1e6
            d = report.to_dict()
            rows.append((name, res, took, data_mb, d))
            print(f"{name}: {res}  ({took:.0f} s, data {data_mb:.1f} MB)", flush=True)
    fp32_mb = (args.export / "model.onnx.data").stat().st_size / 1e6
    print(f"\n{args.export.name}: {data.describe()}; fp32 data {fp32_mb:.1f} MB")
    print(f"{'variant':<15}{'cos min':>9}{'cos mean':>10}{'rel err':>9}{'NN':>7}{'PCK':>7}{'quantize s':>12}"
          f"{'data MB':>9}{'GEMMs':>7}{'attn':>6}{'convs':>7}")
    for name, r, took, mb, d in rows:
        nn = f"{r.nn_agreement:.3f}" if r.nn_points else "n/a"
        pck = f"{r.pck_agreement:.3f}" if r.pck_points else "n/a"
        print(f"{name:<15}{r.min_cosine:>9.5f}{r.mean_cosine:>10.6f}{r.rel_error:>9.4f}{nn:>7}{pck:>7}{took:>12.1f}"
              f"{mb:>9.1f}{d['linear_layers_quantized']:>7}{d.get('attention_matmuls_quantized', 0):>6}"
              f"{d['conv_layers_quantized']:>7}")
    print(json.dumps({name: {"min_cosine": r.min_cosine, "mean_cosine": r.mean_cosine, "rel_error": r.rel_error,
                             "nn": r.nn_agreement, "pck": r.pck_agreement} for name, r, *_ in rows}))


if __name__ == "__main__":
    main()

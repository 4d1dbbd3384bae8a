"""DiTF + DINOv2 fusion: fused vs single-model latency, measured side by side in one run.

    python bench/bench_fusion.py               # built-in flux-tiny + dinov2-tiny (fast; mostly overhead)
    python bench/bench_fusion.py --medium      # a FLUX-like transformer (hidden 512, 2+2 blocks) + a random
                                               # DINOv2 of dinov2-small's dimensions (384 wide, 12 layers)

Per image, median of --repeats runs, the configurations taking turns run by run (so load from other
processes hits all alike): each model alone through `ditf_runtime.load(...)`, then the fused extractor
with its two graphs in turn (parallel=False) and on two threads (parallel=True). Both onnxruntime
sessions use --threads intra-op threads each (default 1: on a 2-core machine two sessions of one thread
each are what "run concurrently" can mean; pass --threads 2 to compare). The fused overhead (decode once,
resample, normalise, concatenate) is reported beside. Not part of CI.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [ROOT / "examples" / "images" / name for name in ("cat-a.jpg", "cat-b.jpg", "astronaut.jpg")]


def export_models(tmp: Path, medium: bool) -> tuple[Path, Path, dict]:
    from ditf_export.export import ExportRequest, export
    from ditf_export.tiny import build_dinov2_tiny, build_flux_tiny

    say = lambda m: None  # noqa: E731
    if not medium:
        flux, dino = tmp / "flux", tmp / "dino"
        export(ExportRequest(model="flux-tiny", out=flux, progress=say))
        export(ExportRequest(model="dinov2-tiny", out=dino, progress=say))
        return flux, dino, {"ditf": "flux-tiny (256 px, E=2)", "dinov2": "dinov2-tiny (224 px)"}
    flux_dir = build_flux_tiny(tmp / "flux-medium", num_layers=2, num_single_layers=2, attention_head_dim=64,
                               num_attention_heads=8, axes_dims_rope=(8, 28, 28), joint_attention_dim=64,
                               pooled_projection_dim=64)
    dino_dir = build_dinov2_tiny(tmp / "dino-small", hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 mlp_ratio=4, image_size=518, layerscale_value=1.0)
    flux, dino = tmp / "flux", tmp / "dino"
    export(ExportRequest(model=str(flux_dir), out=flux, layer=3, discard="none", ensemble=2, image_size=512,
                         text_max_length=32, progress=say))
    export(ExportRequest(model=str(dino_dir), out=dino, image_size=448, progress=say))
    return flux, dino, {"ditf": "FLUX-like hidden 512, 2+2 blocks (layer 3, 512 px, E=2)",
                        "dinov2": "random DINOv2, dinov2-small's dimensions (448 px)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medium", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per session")
    args = parser.parse_args()

    import ditf_runtime
    from ditf_runtime.fusion import fuse_maps

    with tempfile.TemporaryDirectory(prefix="ditf-bench-fusion-") as tmp:
        flux, dino, names = export_models(Path(tmp), args.medium)
        options = dict(threads=args.threads, verify=False)
        runs = {
            "DiTF alone": ditf_runtime.load(flux, **options),
            "DINOv2 alone": ditf_runtime.load(dino, **options),
            "fused, in turn": ditf_runtime.load(flux, dino, parallel=False, **options),
            "fused, two threads": ditf_runtime.load(flux, dino, parallel=True, **options),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for extractor in runs.values():  # warm-up: first runs allocate
            extractor.extract(IMAGES[:1])
        for _ in range(args.repeats):
            for name, extractor in runs.items():
                start = time.perf_counter()
                extractor.extract(IMAGES)
                times[name].append((time.perf_counter() - start) / len(IMAGES))
        parts = runs["fused, in turn"].extract_parts(IMAGES[:1])[0]
        fuse_times = []
        for _ in range(20):
            start = time.perf_counter()
            fuse_maps(parts.maps, parts.weights)
            fuse_times.append(time.perf_counter() - start)
        for extractor in runs.values():
            extractor.close()

    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"DiTF: {names['ditf']}\nDINOv2: {names['dinov2']}\n{args.threads} onnxruntime thread(s) per session, "
          f"{len(IMAGES)} images, median of {args.repeats}\n")
    print(f"{'configuration':<22} {'s/image':>9} {'vs DiTF alone':>14}")
    for name, value in median.items():
        print(f"{name:<22} {value:9.3f} {value / median['DiTF alone']:13.2f}x")
    both = median["DiTF alone"] + median["DINOv2 alone"]
    print(f"\nsum of the two alone: {both:.3f} s/image")
    print(f"fused in turn / sum of singles: {median['fused, in turn'] / both:.2f}")
    print(f"fused on two threads / fused in turn: {median['fused, two threads'] / median['fused, in turn']:.2f}")
    print(f"fusion itself (resample + normalise + concatenate, one image): {1e3 * statistics.median(fuse_times):.2f} ms")
    print(f"(fused map {tuple(np.asarray(parts.fused()).shape)})")


if __name__ == "__main__":
    main()

"""TensorRT-RTX ahead-of-time build time per family and precision, on this machine (no GPU needed).

    python bench/bench_trt_build.py                      # every family, every precision it exports
    python bench/bench_trt_build.py --families flux,dit  # a subset

Each family's tiny random pipeline (ditf_export.tiny) is exported at layer 1 (image side 256, E = 2)
at fp32, fp16, bf16, int8 and fp8 (video: fp32 only; int8/fp8 calibrate on examples/images), then built with
`ditf_runtime.backends.trt.build_engine(..., tensorrt="rtx")` for the profile the tests use
(1x64x64 / 1x128x128 / 2x256x256; video 1x2x64x64 / 1x4x128x128 / 1x4x256x256) and once more for the
manifest's own profile (for 8.6; fp8, which needs >= 8.9: for 8.9). The table gives export and build wall
times and plan sizes. Not part of CI.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "examples" / "images"
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
VIDEO_FAMILIES = ("latte",)


def main() -> None:
    from ditf_export.export import ExportRequest, export
    from ditf_export.tiny import TINY_BUILDERS
    from ditf_runtime.backends import trt
    from ditf_runtime.manifest import Manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(TINY_BUILDERS), help="comma list of tiny families")
    args = parser.parse_args()
    rt = trt.import_flavor(trt.RTX)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-trt-") as tmp:
        root = Path(tmp)
        for family in args.families.split(","):
            model = TINY_BUILDERS[family](root / f"{family}-model")
            video = family in VIDEO_FAMILIES
            for precision in ("fp32",) if video else PRECISIONS:
                out = root / f"{family}-{precision}"
                started = time.perf_counter()
                export(ExportRequest(model=str(model), out=out, layer=1, ensemble=2, image_size=256,
                                     precision=precision,
                                     calib_images=IMAGES if precision in ("int8", "fp8") else None))
                exported = time.perf_counter() - started
                manifest = Manifest.load(out)
                sizes = ("1x2x64x64", "1x4x128x128", "1x4x256x256") if video else ("1x64x64", "1x128x128", "2x256x256")
                profile = trt.cli_profile(manifest, *sizes, ensemble=2)
                timings = []
                old_enough = "8.9" if precision == "fp8" else "8.6"
                for profiles, targets in (([profile], ()), (None, (old_enough,))):  # small profile; manifest's
                    started = time.perf_counter()
                    folder = trt.build_engine(out, manifest, profiles, tensorrt="rtx", compute_capabilities=targets,
                                              log=lambda _: None)  # fmt: skip
                    timings.append((time.perf_counter() - started, (folder / trt.ENGINE_FILE).stat().st_size))
                rows.append((family, precision, exported, timings))
                print(f"{family:7s} {precision:5s} export {exported:5.1f} s  build {timings[0][0]:4.1f} s "
                      f"(manifest profile {timings[1][0]:4.1f} s)", flush=True)  # fmt: skip

    print(f"\nTensorRT-RTX {rt.__version__}, CPU-only ahead-of-time builds")
    header = ("family", "precision", "export s", "build s", "plan MiB", "manifest-profile build s")
    print(f"{header[0]:8s}{header[1]:10s}{header[2]:>9s}{header[3]:>9s}{header[4]:>10s}{header[5]:>26s}")
    for family, precision, exported, ((small, size), (full, _)) in rows:
        print(f"{family:8s}{precision:10s}{exported:9.1f}{small:9.2f}{size / 2**20:10.1f}{full:26.2f}")
    total = sum(t[0][0] for *_, t in rows)
    print(f"{len(rows)} engines, {total:.1f} s of builds in all (the small profile)")


if __name__ == "__main__":
    main()

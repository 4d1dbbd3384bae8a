"""`make parity-gpu`: parity and speed of every precision on every GPU backend, beside PyTorch eager, one table.

    python bench/parity_gpu.py                       # on a GPU machine (no internet needed: models are random)
    python bench/parity_gpu.py --quick               # flux-tiny at a small size: the CPU-only part runs in CI
    python bench/parity_gpu.py --precisions fp32,bf16 --budget-s 480 --out /tmp/parity-gpu

Per model, precision and backend: parity of reference.safetensors (the export's own first gating inputs and
its PyTorch float32 features, judged by ditf_runtime.parity at the precision's gate: min cosine, relative
error, pass) and seconds per image (B = 1, best of --repeats after a warm-up, E = 8).

Models (random weights, built offline: bench/medium.py, bench/standin.py):
* medium: hidden 768, 4 + 4 blocks, layer 6, at 512 px;
* FLUX.1-dev stand-in (the real widths: hidden 3072, T5 4096, the real VAE) truncated at layers 1, 2 and 3
  (1 double; 2 double; 2 double + 1 single block), at 640 px, E = 8 (the paper's setting). A layer-28 export
  (19 double + 9 single blocks, 31 GB) would not fit the time: its seconds per image are extrapolated as
  t(1) + 18 (t(2) - t(1)) + 9 (t(3) - t(2)), the fixed part plus per-block times, printed beside them.

Backends: onnxruntime CUDA (model.onnx; CUDAExecutionProvider, else skipped), TensorRT-RTX (an engine built
here ahead of time for this card's compute capability; skipped where the builder has no such target, e.g.
9.0 on H100/H200, after TensorRT-RTX's own verdict), TensorRT (where it is installed; built on this card),
and PyTorch eager (the exported module itself, fp32 and bf16/fp16 where the precision says so) on the same
card and inputs. Precisions come from ditf_runtime.precision.Precision (a new member is a new row).

Everything before a device is needed runs anywhere: model folders, exports (with their references),
TensorRT-RTX engine builds (CPU, ahead of time); without a GPU the rows say "skipped: no GPU". Rows that
would start after --budget-s seconds are skipped with that reason, so the run ends in time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
EXAMPLES = ROOT / "examples" / "images"
NO_CALIBRATION = ("fp32", "bf16")  # every other precision calibrates or range-checks on examples/images
BACKENDS = ("pytorch eager", "onnxruntime-cuda", "tensorrt-rtx", "tensorrt")
LAYER_28 = (18, 9)  # from layer 1: 18 more double blocks and 9 single blocks


@dataclass
class Row:
    model: str
    size: int
    precision: str
    backend: str
    parity: str = ""
    seconds: float | None = None
    note: str = ""
    layer: int | None = None

    def cells(self) -> list[str]:
        secs = f"{self.seconds:.4f}" if self.seconds is not None else "-"
        model = self.model if self.layer is None else f"{self.model} l{self.layer}"
        return [model, f"{self.size}", self.precision, self.backend, self.parity or "-", secs, self.note]


@dataclass
class Model:
    name: str
    folder: Path
    size: int
    ensemble: int
    layers: tuple[int, ...]
    export_args: dict = field(default_factory=dict)


def device_or_none():
    from ditf_runtime.backends import trt

    return trt.gpu_or_none()


def models(args, out: Path) -> list[Model]:
    if args.quick:
        from ditf_export.tiny import build_flux_tiny

        folder = build_flux_tiny(out / "models" / "flux-tiny")
        return [Model("flux-tiny", folder, 128, 2, (3,), dict(discard="7,41", text_max_length=32))]
    from medium import LAYER, MASSIVE, build_medium
    from standin import build_standin

    medium = build_medium(out / "models" / "flux-medium")
    standin = build_standin(out / "models" / "flux-dev-standin")
    return [Model("medium", medium, 512, 8, (LAYER,), dict(discard=",".join(map(str, MASSIVE)),
                                                        prompt_embeds=medium / "prompt_embeds.safetensors")),
            Model("flux-dev-standin", standin, 640, 8, (1, 2, 3),
                  dict(discard="154,1446", prompt_embeds=standin / "prompt_embeds.safetensors"))]


def export_one(model: Model, layer: int, precision: str, out: Path) -> Path:
    from ditf_export.export import ExportRequest, export

    folder = out / "exports" / f"{model.name}-l{layer}-{precision}"
    if not (folder / "manifest.json").is_file():
        export(ExportRequest(model=str(model.folder), out=folder, layer=layer, ensemble=model.ensemble,
                             image_size=model.size, precision=precision, progress=lambda line: None,
                             calib_images=None if precision in NO_CALIBRATION else EXAMPLES, **model.export_args))
    return folder


def timing_inputs(model: Model, manifest, seed: int = 0):
    """One image at the model size (B = 1) and its E noise draws."""
    rng = np.random.default_rng(seed)
    g = manifest.geometry
    image = rng.uniform(-1, 1, (1, 3, model.size, model.size)).astype(np.float32)
    noise = rng.standard_normal((1, model.ensemble, g.latent_channels, model.size // g.vae_stride,
                                 model.size // g.vae_stride)).astype(np.float32)
    return image, noise


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up (TensorRT-RTX JIT-compiles here; onnxruntime plans its arena)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def judged(result) -> str:
    return f"cos {result.min_cosine:.5f} rel {result.rel_error:.1e} {'pass' if result else 'FAIL'}"


def run_extractor(folder: Path, model: Model, manifest, backend: str, repeats: int) -> tuple[str, float]:
    import ditf_runtime

    with ditf_runtime.load(folder, backend=backend, device="cuda") as extractor:
        parity = judged(extractor.verify_reference())
        image, noise = timing_inputs(model, manifest)
        return parity, best_of(lambda: extractor.run(image, noise), repeats)


def engine_row(folder: Path, manifest, flavor: str, device, row: Row, model: Model, repeats: int) -> None:
    """Build (TensorRT-RTX: ahead of time, on the CPU too) and, with a GPU, run an engine of the manifest's profile."""
    from ditf_runtime.backends import trt

    if not trt.installed(trt.RTX if flavor == "rtx" else trt.ENTERPRISE):
        row.note = f"skipped: {'TensorRT-RTX' if flavor == 'rtx' else 'TensorRT'} is not installed"
        return
    if flavor == "enterprise" and device is None:
        row.note = "skipped: no GPU (TensorRT builds on the card that runs it)"
        return
    targets = ()
    if flavor == "rtx" and device is not None:
        offered = {n.lower() for n in trt.import_flavor(trt.RTX).ComputeCapability.__members__}
        if device.sm not in offered:
            row.note = (f"skipped: TensorRT-RTX has no target for {device.gpu_name} (compute capability "
                        f"{device.compute_capability})")
            return
        targets = (device.compute_capability,)
    started = time.perf_counter()
    built = trt.build_engine(folder, manifest, None, tensorrt=flavor, compute_capabilities=targets, force=True,
                             log=lambda _: None)
    build_s = time.perf_counter() - started
    if device is None:
        row.note = f"skipped: no GPU (engine built in {build_s:.1f} s: {built.name})"
        return
    row.parity, row.seconds = run_extractor(folder, model, manifest, "tensorrt", repeats)
    row.note = f"engine {built.name}, built in {build_s:.1f} s"


def onnxruntime_row(folder: Path, manifest, device, row: Row, model: Model, repeats: int) -> None:
    import onnxruntime as ort

    if device is None:
        row.note = "skipped: no GPU"
    elif "CUDAExecutionProvider" not in ort.get_available_providers():
        row.note = "skipped: onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)"
    else:
        row.parity, row.seconds = run_extractor(folder, model, manifest, "onnxruntime", repeats)


def eager_row(model: Model, layer: int, precision: str, folder: Path, device, row: Row, repeats: int) -> None:
    """The exported PyTorch module itself on the card: float32 for fp32 / int8 / fp8 exports (no int8 kernels in
    eager), bf16 / fp16 where the precision says so; parity against the same reference."""
    if device is None:
        row.note = "skipped: no GPU"
        return
    import torch
    from ditf_export.build import build_graph
    from ditf_export.export import ExportRequest, plan
    from ditf_runtime.manifest import Manifest
    from ditf_runtime.parity import compare
    from safetensors.numpy import load_file

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    the_plan = plan(ExportRequest(model=str(model.folder), out=folder.parent / "unused", layer=layer,
                                  ensemble=model.ensemble, image_size=model.size, **model.export_args))
    graph = build_graph(the_plan).graph.to("cuda", dtype).eval()
    manifest = Manifest.load(folder)
    reference = load_file(str(folder / "reference.safetensors"))

    @torch.no_grad()
    def run(image, noise):
        out = graph(torch.from_numpy(image).to("cuda", dtype), torch.from_numpy(noise).to("cuda", dtype))
        torch.cuda.synchronize()
        return out

    got = run(reference["image"], reference["noise"]).float().cpu().numpy()
    row.parity = judged(compare(got, reference["features"], manifest.precision))
    image, noise = timing_inputs(model, manifest)
    row.seconds = best_of(lambda: run(image, noise), repeats)
    row.note = f"torch {torch.__version__}, {str(dtype).removeprefix('torch.')}"
    del graph
    torch.cuda.empty_cache()


def extrapolated(rows: list[Row]) -> list[Row]:
    """Layer-28 rows for each (model, precision, backend) timed at layers 1, 2 and 3."""
    out = []
    keys = {(r.model, r.precision, r.backend) for r in rows if r.layer is not None}
    for model, precision, backend in sorted(keys):
        times = {r.layer: r.seconds for r in rows if (r.model, r.precision, r.backend) == (model, precision, backend)}
        if all(times.get(k) is not None for k in (1, 2, 3)):
            double, single = times[2] - times[1], times[3] - times[2]
            total = times[1] + LAYER_28[0] * double + LAYER_28[1] * single
            size = next(r.size for r in rows if r.model == model)
            out.append(Row(f"{model} -> layer 28", size, precision, backend, "", total,
                           f"extrapolated: {double:.4f} s per double block, {single:.4f} s per single block"))
    return out


def print_table(rows: list[Row], device, started: float) -> None:
    header = ["model", "size", "precision", "backend", "parity vs reference.safetensors", "s/image", "notes"]
    cells = [header] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    card = f"{device.gpu_name} (compute capability {device.compute_capability})" if device else "no GPU"
    print(f"\nparity-gpu on {card}; {time.perf_counter() - started:.0f} s in all")
    for n, line in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |")
        if n == 0:
            print("| " + " | ".join("-" * w for w in widths) + " |")


def main(argv: list[str] | None = None) -> list[Row]:
    from ditf_runtime.precision import Precision

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="flux-tiny at 128 px (the CPU-only part, for CI)")
    ap.add_argument("--precisions", default=",".join(p.value for p in Precision))
    ap.add_argument("--out", type=Path, default=None, help="keep models, exports and engines here (reused)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=480.0, help="skip rows that would start after this")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    precisions = [Precision(p).value for p in args.precisions.split(",")]
    device = device_or_none()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="parity-gpu-") as tmp:
        out = args.out or Path(tmp)
        for model in models(args, out):
            for layer in model.layers:
                for precision in precisions:
                    made = [Row(model.name, model.size, precision, b, layer=layer if len(model.layers) > 1 else None)
                            for b in BACKENDS]
                    rows += made
                    if time.perf_counter() - started > args.budget_s:
                        for row in made:
                            row.note = f"skipped: past the {args.budget_s:.0f} s budget"
                        continue
                    try:
                        folder = export_one(model, layer, precision, out)
                    except Exception as exc:  # noqa: BLE001 - a refused export is a row, not the end of the run
                        for row in made:
                            row.note = f"export refused: {str(exc).splitlines()[0][:120]}"
                        continue
                    from ditf_runtime.manifest import Manifest

                    manifest = Manifest.load(folder)
                    for row in made:
                        try:
                            if row.backend == "pytorch eager":
                                eager_row(model, layer, precision, folder, device, row, args.repeats)
                            elif row.backend == "onnxruntime-cuda":
                                onnxruntime_row(folder, manifest, device, row, model, args.repeats)
                            else:
                                engine_row(folder, manifest, "rtx" if row.backend == "tensorrt-rtx" else "enterprise",
                                           device, row, model, args.repeats)
                        except Exception as exc:  # noqa: BLE001 - the first GPU run must report, not stop
                            row.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    rows += extrapolated(rows)
    print_table(rows, device, started)
    return rows


if __name__ == "__main__":
    failed = [r for r in main() if "FAIL" in r.parity or r.note.startswith("failed")]
    sys.exit(1 if failed else 0)

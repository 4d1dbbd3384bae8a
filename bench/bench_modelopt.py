"""NVIDIA ModelOpt's ONNX quantizer against calib/ (issue 24 item 5), on one fp32 export.

    python bench/bench_modelopt.py --export EXPORT_DIR --modelopt-python /path/to/venv/bin/python \\
        [--modes fp8,int8] [--side 256]

ModelOpt (`pip install "nvidia-modelopt[onnx]"`) lives in a virtual environment of its own (it brings a CUDA
build of torch, cupy and onnxruntime-gpu); --modelopt-python is that environment's interpreter. Both
quantizers get the same calibration inputs: the export's own split of examples/images (ditf_calib.split),
the calibration images at --side x --side (ModelOpt takes one shape per input), E = 2, on onnxruntime's
CPU provider (ModelOpt: calibration_eps=["cpu"], high_precision_dtype="fp32" so the rest of the graph stays
FP32 as in every ditf export). Each quantizer runs in a fresh process: wall time and peak RSS (VmHWM) are
its own. Accuracy: the held-out images (cat-a, cat-b) at the export's default long side against the fp32
graph, on this environment's onnxruntime CPU (ditf_runtime.parity's metrics).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_export_memory import STATUS
from bench_fp8_choices import HeldOut

MODELOPT_CHILD = STATUS + r'''
import json, sys, time
import numpy as np
src, out, mode, feeds = sys.argv[1:5]
mode, _, only = mode.partition(":")
# "fp8:linears": what calib/ quantizes (MatMul/Gemm, no attention Q/DQ); else ModelOpt's defaults
limits = dict(op_types_to_quantize=["MatMul", "Gemm"], disable_mha_qdq=True) if only == "linears" else {}
t0 = time.perf_counter()
import modelopt.onnx.quantization as moq
imported = time.perf_counter() - t0
data = dict(np.load(feeds))
t1 = time.perf_counter()
moq.quantize(onnx_path=src, quantize_mode=mode, calibration_data=data, calibration_eps=["cpu"],
             high_precision_dtype="fp32", use_external_data_format=True, output_path=out, log_level="WARNING",
             **limits)
print(json.dumps({"wall": time.perf_counter() - t1, "import": imported, "peak_rss": status("VmHWM")}))
'''

OURS_CHILD = STATUS + r'''
import json, sys, time
import numpy as np
src, out, mode, feeds, discard, width = sys.argv[1:7]
t0 = time.perf_counter()
from ditf_calib.fp8 import fp8_config
from ditf_calib.int8 import Int8Config, quantize
from ditf_calib.tensors import GraphRewrite
imported = time.perf_counter() - t0
data = dict(np.load(feeds))
n = len(next(iter(data.values())))
batches = [{k: v[i:i + 1] for k, v in data.items()} for i in range(n)]
config = Int8Config(protect_channels=tuple(int(c) for c in discard.split(",") if c), protect_width=int(width))
config = fp8_config(config) if mode == "fp8" else config
t1 = time.perf_counter()
with GraphRewrite(src, out) as rw:
    q, _ = quantize(rw.model, batches, config, store=rw.store)
    rw.commit(q)
print(json.dumps({"wall": time.perf_counter() - t1, "import": imported, "peak_rss": status("VmHWM")}))
'''


def run(python: str, code: str, *args: str) -> dict:
    done = subprocess.run([python, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["(no message)"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--modelopt-python", required=True)
    ap.add_argument("--modes", default="fp8,fp8:linears,int8",
                    help="fp8 / int8: ModelOpt's defaults (attention and Conv Q/DQ too); fp8:linears: linear "
                         "layers only")
    ap.add_argument("--side", type=int, default=None, help="calibration side (default: the export's long side)")
    ap.add_argument("--size", type=int, default=None, help="held-out images' long side (default: the export's)")
    args = ap.parse_args()

    data = HeldOut.of(args.export, args.side, args.size)
    manifest, geo = data.manifest, data.manifest.geometry
    side = args.side or data.size
    rows = []
    with tempfile.TemporaryDirectory(prefix="ditf-modelopt-") as tmp:
        feeds = Path(tmp) / "calib.npz"
        np.savez(feeds, **data.calibration.batched((side, side)))
        for mode in args.modes.split(","):
            ours = () if ":" in mode else (("calib/", sys.executable, OURS_CHILD,
                     (",".join(map(str, manifest.feature.discard)), str(geo.feature_channels))),)
            for who, python, code, extra in (("ModelOpt", args.modelopt_python, MODELOPT_CHILD, ()), *ours):
                out = Path(tmp) / f"{who.strip('/')}-{mode.replace(':', '-')}" / "model.onnx"
                out.parent.mkdir()
                t0 = time.perf_counter()
                r = run(python, code, str(args.export / "model.onnx"), str(out), mode, str(feeds), *extra)
                r["process"] = time.perf_counter() - t0
                if "error" not in r:
                    r["parity"] = data.judge(out, mode.split(":")[0])
                    r["data_mb"] = sum(p.stat().st_size for p in out.parent.iterdir() if p.suffix != ".onnx") / 1e6
                rows.append((who, mode, r))
                print(who, mode, {k: v for k, v in r.items() if k != "parity"}, r.get("parity"), flush=True)

    print(f"\n{args.export.name}: calibration images at {side}x{side} E=2; {data.describe()}")
    print(f"{'quantizer':<10}{'mode':<14}{'cos min':>9}{'cos mean':>10}{'rel err':>9}{'NN':>7}{'PCK':>7}"
          f"{'quantize s':>12}{'import s':>10}{'peak RSS GB':>13}{'data MB':>9}")
    for who, mode, r in rows:
        if "error" in r:
            print(f"{who:<10}{mode:<14}failed: {r['error']}")
            continue
        p = r["parity"]
        nn = f"{p.nn_agreement:.3f}" if p.nn_points else "n/a"
        pck = f"{p.pck_agreement:.3f}" if p.pck_points else "n/a"
        print(f"{who:<10}{mode:<14}{p.min_cosine:>9.5f}{p.mean_cosine:>10.6f}{p.rel_error:>9.4f}{nn:>7}{pck:>7}"
              f"{r['wall']:>12.1f}{r['import']:>10.1f}{r['peak_rss'] / 1e9:>13.2f}{r['data_mb']:>9.1f}")


if __name__ == "__main__":
    main()

"""INT8 on this CPU: onnxruntime's integer kernels with and without `session.x64quantprecision=1`.

ditf opens every session with the option (backends/onnxrt.py): on x86 CPUs without VNNI it replaces the
saturating U8S8 GEMM with exact U8U8 kernels; on VNNI CPUs it changes nothing. This runs one INT8 export's
reference inputs (reference.safetensors: what its gate judged) both ways, in turns, and prints accuracy
against the PyTorch features and the time of each, side by side, with the CPU class.

    python bench/bench_int8_kernels.py INT8_EXPORT_DIR [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import time_interleaved  # noqa: E402


def session(path: Path, threads: int, exact: bool):
    import onnxruntime as ort

    from ditf_runtime.backends.onnxrt import X64_QUANT_PRECISION

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = False
    options.add_session_config_entry(X64_QUANT_PRECISION, "1" if exact else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    from safetensors.numpy import load_file

    from ditf_runtime.cpu_info import this_cpu
    from ditf_runtime.manifest import REFERENCE_FILE, Manifest
    from ditf_runtime.parity import compare

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    manifest = Manifest.load(args.export_dir)
    if manifest.precision != "int8":
        sys.exit(f"{args.export_dir} is a {manifest.precision} export; pass an int8 one")
    ref = load_file(str(args.export_dir / REFERENCE_FILE))
    sessions = {"x64quantprecision=1 (ditf)": session(args.export_dir / "model.onnx", args.threads, True),
                "x64quantprecision=0 (onnxruntime default)": session(args.export_dir / "model.onnx", args.threads,
                                                                     False)}
    feeds = {name: {i.name: ref[i.name] for i in s.get_inputs()} for name, s in sessions.items()}
    timings = time_interleaved({name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()},
                               args.repeats)
    cpu = this_cpu()
    print(f"CPU: {cpu.model} -> {cpu.name}; with ditf's option: {cpu.int8_kernels}")
    print(f"export: {args.export_dir} ({manifest.model_name}, layer {manifest.feature.layer}); reference inputs "
          f"{list(ref['image'].shape)}; gate ran on {manifest.parity.get('machine', {}).get('cpu_class', '?')}")
    print(f"| session | cosine min | rel. error | NN agreement | seconds (best of {args.repeats}) |")
    print("| --- | --- | --- | --- | --- |")
    for name, s in sessions.items():
        res = compare(s.run(None, feeds[name])[0], ref["features"], "int8")
        print(f"| {name} | {res.min_cosine:.5f} | {res.rel_error:.4f} | {res.nn_agreement:.3f} | "
              f"{timings[name].best:.2f} |")
    names = list(sessions)
    print(f"time ratio default / ditf: {timings[names[1]].best / timings[names[0]].best:.2f}x")


if __name__ == "__main__":
    main()

"""onnxruntime session options on the CPU, each measured against the defaults ditf uses.

One export's CPU variant (default: the medium FLUX-architecture model of bench_end_to_end.py, exported
here), one image, each candidate timed in turns with the default session (best of --repeats after a
warm-up, both sessions alive together, nothing else), so load from other processes hits both alike:

- graph optimisation level: all (the default: includes the NCHWc layout transform of convolutions),
  extended, basic;
- threads: 1 instead of 2; intra-op spinning off; the second thread pinned to a core;
- memory: the CPU arena off; memory-pattern planning off;
- denormals flushed to zero.

    python bench/bench_cpu_options.py [EXPORT_DIR] [--size 512] [--ensemble 2] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roofline import time_interleaved  # noqa: E402


def candidates(threads: int) -> dict[str, dict]:
    """name -> {"level": ..., "threads": ..., "config": {session config entries}, "arena": bool, "pattern": bool}"""
    return {
        "optimisation level extended (no NCHWc)": {"level": "extended"},
        "optimisation level basic": {"level": "basic"},
        "1 intra-op thread": {"threads": 1},
        "intra-op spinning off": {"config": {"session.intra_op.allow_spinning": "0"}},
        "second thread pinned to core 2": {"config": {"session.intra_op_thread_affinities": "2"}}
        if threads == 2 else {},
        "CPU memory arena off": {"arena": False},
        "memory pattern off": {"pattern": False},
        "denormals as zero": {"config": {"session.set_denormal_as_zero": "1"}},
    }


def session(path: Path, threads: int, level: str = "all", config: dict | None = None, arena: bool = True,
            pattern: bool = True):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.intra_op_num_threads = threads
    o.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    o.enable_cpu_mem_arena = arena
    o.enable_mem_pattern = pattern
    for k, v in (config or {}).items():
        o.add_session_config_entry(k, v)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def medium_export(tmp: Path, size: int) -> Path:
    from recipe import build_medium

    from ditf_export.export import ExportRequest, export
    from ditf_runtime.cpu_rewrite import make_cpu_variant

    folder, embeds, layer = build_medium(tmp)
    out = tmp / "fp32"
    export(ExportRequest(model=str(folder), out=out, layer=layer, discard="none", prompt_embeds=embeds,
                         parity_sizes=((64, 96),), image_size=size))
    make_cpu_variant(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir", nargs="?", type=Path, default=None)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ensemble", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from ditf_runtime.manifest import Manifest

    with tempfile.TemporaryDirectory(prefix="ditf-bench-options-") as tmp:
        export_dir = args.export_dir or medium_export(Path(tmp), args.size)
        path = export_dir / "model.cpu.onnx"
        if not path.is_file():
            raise SystemExit(f"{export_dir} has no CPU variant: run `ditf optimize-cpu {export_dir}` first")
        g = Manifest.load(export_dir).geometry
        s, v = args.size, args.size // g.vae_stride
        rng = np.random.default_rng(0)
        feed = {"image": rng.uniform(-1, 1, (1, 3, s, s)).astype(np.float32),
                "noise": rng.standard_normal((1, args.ensemble, g.latent_channels, v, v)).astype(np.float32)}
        load = os.getloadavg()[0]
        print(f"{export_dir.name}/model.cpu.onnx, {s}x{s}, E={args.ensemble}, default {args.threads} threads; "
              f"best of {args.repeats}, each candidate in turns with the default; load average {load:.1f}")
        print(f"{'candidate':<42}{'s':>8}{'default s':>11}{'ratio':>8}  (ratio > 1: the candidate is slower)")
        for name, opts in candidates(args.threads).items():
            if not opts:
                continue
            base = session(path, args.threads)
            cand = session(path, opts.get("threads", args.threads), opts.get("level", "all"), opts.get("config"),
                           opts.get("arena", True), opts.get("pattern", True))
            t = time_interleaved({"default": lambda: base.run(None, feed), "candidate": lambda: cand.run(None, feed)},
                                 args.repeats)
            print(f"{name:<42}{t['candidate'].best:>8.2f}{t['default'].best:>11.2f}"
                  f"{t['candidate'].best / t['default'].best:>8.2f}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

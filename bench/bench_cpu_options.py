"""onnxruntime session options on the CPU, each measured against the defaults ditf uses.

One export's CPU variant (default: the medium FLUX-architecture model of bench_end_to_end.py, exported
here), one image. The defaults are ditf's own session (backends.onnxrt.create_session: onnxruntime's
defaults with memory-pattern planning off). Two tables:

- time: each candidate timed in turns with the default session (best of --repeats after a warm-up, both
  sessions alive together, nothing else), so load from other processes hits both alike;
- memory: the defaults and each memory option in a fresh process (peak RSS is per process), the same
  graph run twice (a server or a batch job runs its session many times), peak resident memory after
  run 1 and after run 2, and each run's seconds.

Candidates: graph optimisation level all (the default: includes the NCHWc layout transform of
convolutions), extended, basic; 1 thread instead of 2; intra-op spinning off; the second thread pinned
to a core; the CPU arena off; memory-pattern planning on (onnxruntime's own default); denormals flushed
to zero.

    python bench/bench_cpu_options.py [EXPORT_DIR] [--size 512] [--ensemble 2] [--threads 2] [--repeats 3]
                                      [--memory-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
        "memory pattern on (onnxruntime's default)": {"pattern": True},
        "denormals as zero": {"config": {"session.set_denormal_as_zero": "1"}},
    }


MEMORY_CANDIDATES = ("CPU memory arena off", "memory pattern on (onnxruntime's default)")


def default_session(path: Path, threads: int):
    from ditf_runtime.backends.onnxrt import create_session

    return create_session(path, threads=threads)


def session(path: Path, threads: int, level: str = "all", config: dict | None = None, arena: bool = True,
            pattern: bool = False):
    """A session with these options; the keyword defaults are create_session's (checked in `main`)."""
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


def feed_for(export_dir: Path, size: int, ensemble: int) -> dict:
    from ditf_runtime.manifest import Manifest

    g = Manifest.load(export_dir).geometry
    v = size // g.vae_stride
    rng = np.random.default_rng(0)
    return {"image": rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32),
            "noise": rng.standard_normal((1, ensemble, g.latent_channels, v, v)).astype(np.float32)}


MEMORY_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import bench_cpu_options as bench
from pathlib import Path

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

export_dir, size, ensemble, threads, name = Path(sys.argv[2]), *map(int, sys.argv[3:6]), sys.argv[6]
feed = bench.feed_for(export_dir, size, ensemble)
path = export_dir / "model.cpu.onnx"
if name == "defaults":
    s = bench.default_session(path, threads)
else:
    opts = bench.candidates(threads)[name]
    s = bench.session(path, opts.get("threads", threads), opts.get("level", "all"), opts.get("config"),
                      opts.get("arena", True), opts.get("pattern", False))
result = {"loaded": peak(), "peaks": [], "seconds": []}
for _ in range(2):
    t = time.perf_counter()
    s.run(None, feed)
    result["seconds"].append(time.perf_counter() - t)
    result["peaks"].append(peak())
print(json.dumps(result))
"""


def memory_table(export_dir: Path, size: int, ensemble: int, threads: int) -> None:
    """Each memory option in a fresh process, the graph run twice: peak RSS after each run."""
    print(f"\nmemory: peak resident memory of a fresh process (GB), the same graph run twice; "
          f"{size}x{size}, E={ensemble}, {threads} threads")
    print(f"{'session':<44}{'after load':>11}{'run 1':>8}{'run 2':>8}{'vs defaults':>12}{'run 1 s':>9}"
          f"{'run 2 s':>9}")
    base = None
    for name in ("defaults", *MEMORY_CANDIDATES):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(Path(__file__).resolve().parent),
                              str(export_dir), str(size), str(ensemble), str(threads), name],
                             check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or r["peaks"][1]
        print(f"{name:<44}{r['loaded'] / 1e9:>11.2f}{r['peaks'][0] / 1e9:>8.2f}{r['peaks'][1] / 1e9:>8.2f}"
              f"{r['peaks'][1] / base:>12.2f}{r['seconds'][0]:>9.2f}{r['seconds'][1]:>9.2f}", flush=True)


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
    ap.add_argument("--memory-only", action="store_true", help="Only the memory table.")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="ditf-bench-options-") as tmp:
        export_dir = args.export_dir or medium_export(Path(tmp), args.size)
        path = export_dir / "model.cpu.onnx"
        if not path.is_file():
            raise SystemExit(f"{export_dir} has no CPU variant: run `ditf optimize-cpu {export_dir}` first")
        s = args.size
        feed = feed_for(export_dir, s, args.ensemble)
        base = default_session(path, args.threads)
        mine = session(path, args.threads).get_session_options()
        theirs = base.get_session_options()
        for option in ("enable_cpu_mem_arena", "enable_mem_pattern", "graph_optimization_level"):
            if getattr(mine, option) != getattr(theirs, option):  # the candidates differ from ditf's defaults only
                raise SystemExit(f"bench session() and create_session disagree on {option}: update session()")
        if not args.memory_only:
            time_table(path, feed, args, base)
        del base
        memory_table(export_dir, s, args.ensemble, args.threads)


def time_table(path: Path, feed: dict, args, base) -> None:
    load = os.getloadavg()[0]
    print(f"{path.parent.name}/model.cpu.onnx, {args.size}x{args.size}, E={args.ensemble}, default {args.threads} "
          f"threads; best of {args.repeats}, each candidate in turns with the default; load average {load:.1f}")
    print(f"{'candidate':<44}{'s':>8}{'default s':>11}{'ratio':>8}  (ratio > 1: the candidate is slower)")
    for name, opts in candidates(args.threads).items():
        if not opts:
            continue
        cand = session(path, opts.get("threads", args.threads), opts.get("level", "all"), opts.get("config"),
                       opts.get("arena", True), opts.get("pattern", False))
        t = time_interleaved({"default": lambda: base.run(None, feed), "candidate": lambda: cand.run(None, feed)},
                             args.repeats)
        print(f"{name:<44}{t['candidate'].best:>8.2f}{t['default'].best:>11.2f}"
              f"{t['candidate'].best / t['default'].best:>8.2f}", flush=True)
        del cand
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

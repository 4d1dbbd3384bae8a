"""The machine's measured peaks and a per-part roofline of an exported graph (onnxruntime, CPU).

- Peaks, measured here with onnxruntime's own kernels at the shapes the medium model runs: fp32 GEMM
  (MatMul), fp32 convolution, int8 GEMM (the Q/DQ MatMul calib/int8.py writes, which onnxruntime runs
  as MatMulIntegerToFloat), int8 convolution (QLinearConv) and memory bandwidth (a large Add).
- FLOPs and bytes per part from the ONNX itself (ditf_calib.flops).
- Time per part: each part cut out of the graph (graph only, same weights file) and timed alone, fed
  with the tensors the whole graph computes at that boundary.
- Floor per part: every node at its kind's peak or at memory bandwidth, whichever is slower.

    python bench/roofline.py EXPORT_DIR [--size 512] [--ensemble 8] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARTS = ("vae", "transformer", "head")


# -- timing --------------------------------------------------------------------------------------------

@dataclass
class Timing:
    """Repeated wall-clock times of one thing; best-of is what tables quote, the spread says how noisy."""

    times: list[float]

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(worst - best) / best."""
        return (max(self.times) - self.best) / self.best if self.times else float("nan")

    def __str__(self) -> str:
        return f"{self.best:.2f} s (+{100 * self.spread:.0f}% over {len(self.times)})"


def time_interleaved(runs: dict, repeats: int, warmup: bool = True) -> dict[str, Timing]:
    """Each callable `repeats` times, taking turns, so load from other processes hits all alike."""
    if warmup:
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: Timing(v) for k, v in times.items()}


def ort_session(path, threads: int):
    from ditf_runtime.backends.onnxrt import create_session

    return create_session(path, threads=threads)


# -- peaks ---------------------------------------------------------------------------------------------

@dataclass
class Peaks:
    flops: dict[str, float]  # "gemm", "conv", "gemm-int8", "conv-int8" -> FLOP/s
    bandwidth: float  # bytes/s

    def merged(self, other: "Peaks") -> "Peaks":
        """The best of two measurements (the machine is shared: a slower one saw someone else's load)."""
        return Peaks({k: max(v, other.flops[k]) for k, v in self.flops.items()}, max(self.bandwidth, other.bandwidth))

    def __str__(self) -> str:
        f = self.flops
        return (f"fp32 GEMM {f['gemm'] / 1e9:.0f} GFLOP/s, fp32 conv {f['conv'] / 1e9:.0f}, int8 GEMM "
                f"{f['gemm-int8'] / 1e9:.0f} GOP/s, int8 conv {f['conv-int8'] / 1e9:.0f}, memory "
                f"{self.bandwidth / 1e9:.1f} GB/s")


def _model(nodes, inputs, outputs, inits):
    from onnx import helper

    return helper.make_model(helper.make_graph(nodes, "peak", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def _qdq(x: str, scale: float, zp_type=np.int8):
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(scale, np.float32), x + "_s"),
             numpy_helper.from_array(np.array(0, zp_type), x + "_z")]
    return ([helper.make_node("QuantizeLinear", [x, x + "_s", x + "_z"], [x + "_q"]),
             helper.make_node("DequantizeLinear", [x + "_q", x + "_s", x + "_z"], [x + "_dq"])], inits)


def _weight_dq(shape, axis: int):
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    k = shape[axis]
    inits = [numpy_helper.from_array(rng.integers(-127, 128, shape).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(k, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(k, np.int8), "wz")]
    return [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=axis)], inits


def peak_models(rows: int = 12288, hidden: int = 768, conv_channels: int = 512, conv_side: int = 64):
    """name -> (serialized model, feed, FLOPs or bytes). GEMM: [rows, hidden] x [hidden, 4*hidden] (the
    medium model's MLP at E=8); conv: 3x3, conv_channels -> conv_channels at conv_side^2 (the FLUX VAE's
    deepest stage at 512x512); bandwidth: z = x + y over 64 Mi floats."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    vi = helper.make_tensor_value_info
    n = 4 * hidden
    x2 = rng.standard_normal((rows, hidden)).astype(np.float32)
    c = conv_channels
    x4 = rng.standard_normal((1, c, conv_side, conv_side)).astype(np.float32)
    gemm_flops = 2.0 * rows * hidden * n
    conv_flops = 2.0 * c * c * 9 * conv_side * conv_side
    out = {}
    w = numpy_helper.from_array(rng.standard_normal((hidden, n)).astype(np.float32), "w")
    out["gemm"] = (_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", TensorProto.FLOAT, x2.shape)],
                          [vi("y", TensorProto.FLOAT, None)], [w]), {"x": x2}, gemm_flops)
    wc = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32), "w")
    out["conv"] = (_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                          [vi("x", TensorProto.FLOAT, x4.shape)], [vi("y", TensorProto.FLOAT, None)], [wc]),
                   {"x": x4}, conv_flops)
    qx, qi = _qdq("x", 0.03)
    wn, wi = _weight_dq((hidden, n), 1)
    out["gemm-int8"] = (_model(qx + wn + [helper.make_node("MatMul", ["x_dq", "w"], ["y"])],
                               [vi("x", TensorProto.FLOAT, x2.shape)], [vi("y", TensorProto.FLOAT, None)], qi + wi),
                        {"x": x2}, gemm_flops)
    qy, yi = _qdq("y", 0.5)
    wn, wi = _weight_dq((c, c, 3, 3), 0)
    out["conv-int8"] = (_model(qx + wn + [helper.make_node("Conv", ["x_dq", "w"], ["y"], pads=[1, 1, 1, 1])] + qy,
                               [vi("x", TensorProto.FLOAT, x4.shape)], [vi("y_dq", TensorProto.FLOAT, None)],
                               qi + wi + yi), {"x": x4}, conv_flops)
    big = 1 << 26
    ones = np.ones(big, np.float32)
    out["bandwidth"] = (_model([helper.make_node("Add", ["x", "y"], ["z"])],
                               [vi("x", TensorProto.FLOAT, [big]), vi("y", TensorProto.FLOAT, [big])],
                               [vi("z", TensorProto.FLOAT, [big])], []), {"x": ones, "y": ones}, 12.0 * big)
    return out


PEAK = "peak: "  # prefix of the microbenchmarks' names among other timed runs


def peak_runs(threads: int) -> tuple[dict, dict[str, float]]:
    """The microbenchmarks as runs to time (name -> callable, names prefixed PEAK) and their work (FLOPs, bytes)."""
    runs, work = {}, {}
    for name, (model, feed, amount) in peak_models().items():
        session = ort_session(model, threads)
        runs[PEAK + name] = lambda s=session, f=feed: s.run(None, f)
        work[PEAK + name] = amount
    return runs, work


def peaks_from(timings: dict[str, Timing], work: dict[str, float]) -> Peaks:
    rate = {name[len(PEAK):]: work[name] / timings[name].best for name in work}
    return Peaks({k: v for k, v in rate.items() if k != "bandwidth"}, rate["bandwidth"])


def measure_peaks(threads: int, repeats: int = 5) -> Peaks:
    runs, work = peak_runs(threads)
    return peaks_from(time_interleaved(runs, repeats), work)


# -- parts ---------------------------------------------------------------------------------------------

def part_models(model_path: Path, report) -> dict[str, tuple[Path, list[str], list[str]]]:
    """Each part as its own graph file beside model_path's weights: part -> (path, inputs, outputs).

    A part's inputs are the graph inputs it reads and every tensor an earlier part computes that it
    reads; its outputs, what later parts (or the graph's outputs) read of it. Shape arithmetic it
    needs comes along whatever part it was counted in."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path), load_external_data=False)
    nodes = list(model.graph.node)
    part_of = [c.part for c in report.nodes]
    order = {p: i for i, p in enumerate(PARTS)}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    graph_outputs = [o.name for o in model.graph.output]
    out = {}
    for part in PARTS:
        earlier = {o for i, n in enumerate(nodes) if order[part_of[i]] < order[part] for o in n.output}
        mine = {i for i, p in enumerate(part_of) if p == part}
        later_reads = {t for i, n in enumerate(nodes) if order[part_of[i]] > order[part] for t in n.input}
        outputs = sorted({o for i in mine for o in nodes[i].output if o in later_reads or o in graph_outputs})
        outputs = [o for o in outputs if _is_data(nodes[producer[o]])]
        keep, inputs, stack = set(), set(), list(outputs)
        while stack:
            t = stack.pop()
            if t in earlier:
                inputs.add(t)
                continue
            i = producer.get(t)
            if i is None or i in keep:
                if i is None and t in {g.name for g in model.graph.input}:
                    inputs.add(t)
                continue
            keep.add(i)
            stack.extend(x for x in nodes[i].input if x)
        sub = onnx.ModelProto()
        sub.CopyFrom(model)
        del sub.graph.node[:]
        sub.graph.node.extend(nodes[i] for i in sorted(keep))
        del sub.graph.input[:]
        sub.graph.input.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in sorted(inputs))
        del sub.graph.output[:]
        sub.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs)
        used = {x for n in sub.graph.node for x in n.input}
        inits = [i for i in sub.graph.initializer if i.name in used]
        del sub.graph.initializer[:]
        sub.graph.initializer.extend(inits)
        path = model_path.parent / f".{model_path.stem}.{part}.onnx"  # beside its weights file
        onnx.save(sub, str(path))
        out[part] = (path, sorted(inputs), outputs)
    return out


def _is_data(node) -> bool:
    return node.op_type not in ("Shape", "Size", "Constant")


def boundary_values(model_path: Path, parts: dict, feed: dict, threads: int) -> dict[str, np.ndarray]:
    """Every part input that an earlier part computes, from one run of the whole graph."""
    import onnx
    from onnx import TensorProto, helper

    wanted = sorted({t for _, inputs, _ in parts.values() for t in inputs} - set(feed))
    model = onnx.load(str(model_path), load_external_data=False)
    model.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in wanted)
    probe = model_path.parent / f".{model_path.stem}.probe.onnx"
    onnx.save(model, str(probe))
    try:
        values = ort_session(probe, threads).run(wanted, feed)
    finally:
        probe.unlink(missing_ok=True)
    return {**feed, **dict(zip(wanted, values))}


def part_runs(model_path: Path, report, feed: dict, threads: int) -> dict:
    """Each part of the graph at model_path as a run to time alone: part -> callable (sessions are open,
    their graph files already removed)."""
    parts = part_models(model_path, report)
    try:
        values = boundary_values(model_path, parts, feed, threads)
        runs = {}
        for part, (path, inputs, _) in parts.items():
            session = ort_session(path, threads)
            part_feed = {t: values[t] for t in inputs}
            runs[part] = lambda s=session, f=part_feed: s.run(None, f)
        return runs
    finally:
        for path, _, _ in parts.values():
            path.unlink(missing_ok=True)


def time_parts(model_path: Path, report, feed: dict, threads: int, repeats: int) -> dict[str, Timing]:
    """Each part of the graph at model_path, timed alone (best of `repeats`, parts taking turns)."""
    return time_interleaved(part_runs(model_path, report, feed, threads), repeats)


# -- the table -----------------------------------------------------------------------------------------

def roofline_rows(label: str, flops: dict[str, float], floors: dict[str, float], times: dict[str, float]) -> list[str]:
    """One block of the roofline table: per part GFLOP, floor, measured time, GFLOP/s and % of floor."""
    rows = []
    for part in (*PARTS, "total"):
        f = flops.get(part, 0.0)
        floor, t = floors.get(part, 0.0), times.get(part)
        rate = f"{f / t / 1e9:9.1f}" if t else f"{'-':>9}"
        frac = f"{100 * floor / t:8.0f}%" if t and floor else f"{'-':>9}"
        ts = f"{t:9.2f}" if t else f"{'-':>9}"
        rows.append(f"{label if part == 'vae' else '':<44}{part:<12}{f / 1e9:9.1f}{floor:9.2f}{ts}{rate}{frac}")
    return rows


ROOFLINE_HEADER = (f"{'pipeline':<44}{'part':<12}{'GFLOP':>9}{'floor s':>9}{'time s':>9}{'GFLOP/s':>9}"
                   f"{'floor/t':>9}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--ensemble", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--graph", default="model.onnx", help="graph file in EXPORT_DIR (e.g. model.cpu.onnx)")
    args = ap.parse_args()

    from ditf_calib.flops import account
    from ditf_calib.graph_io import Sizes, diffusion_io
    from ditf_runtime.manifest import Manifest

    m = Manifest.load(args.export_dir)
    g = m.geometry
    io = diffusion_io(g.latent_channels, g.feature_channels, g.vae_stride, g.feature_stride // g.vae_stride)
    sizes = Sizes(batch=1, ensemble=args.ensemble, height=args.size, width=args.size)
    path = args.export_dir / args.graph
    report = account(path, io, sizes)
    feed = io.random_inputs(sizes, seed=0)
    runs, work = peak_runs(args.threads)
    runs.update(part_runs(path, report, feed, args.threads))
    timed = time_interleaved(runs, args.repeats)
    peaks = peaks_from(timed, work)
    times = {p: timed[p] for p in PARTS}
    flops = {p: report.part(p).total for p in PARTS}
    flops["total"] = sum(flops.values())
    floors = {p: report.floor_seconds(peaks.flops, peaks.bandwidth, p) for p in PARTS}
    floors["total"] = sum(floors.values())
    best = {p: t.best for p, t in times.items()}
    best["total"] = sum(best.values())
    print(f"peaks: {peaks}")
    print(ROOFLINE_HEADER)
    print("\n".join(roofline_rows(f"{args.graph} ({m.precision})", flops, floors, best)))
    print("spread: " + ", ".join(f"{p} {t}" for p, t in times.items()))


if __name__ == "__main__":
    main()

"""The one export loop. It never names a family: everything family-specific comes from the plan's adapter
and the graph's declared inputs and outputs (its GraphIO).

Order (after optimum's export_pytorch), one module per step:
  plan.py            resolve the model and every default, validate all input before any work
  build.py           load truncated weights, bake the conditioning, build the feature graph (+ --discard auto)
  parity.py          the PyTorch module's outputs on every parity input (kept; the module is not)
  onnx_export.py     torch.onnx.export (dynamo, opset 20) with the graph's dynamic axes
                     -> the PyTorch module is freed here, before any onnxruntime session exists
  graph_checks.py    forbidden ops and dtypes
  precision_step.py  the precision rewrite (ditf_calib), streamed tensor by tensor on disk
  parity.py          onnxruntime vs the kept PyTorch outputs, same inputs
  publish.py         manifest, ONNX metadata; then one atomic rename of the finished folder
                     (ditf_runtime.files.staged_folder)

Memory: the peak is one copy of the kept weights in PyTorch plus what torch.onnx.export adds, or one
onnxruntime session of the graph, whichever is larger; never the module and a session together, never the
graph's weights in a protobuf (bench/bench_export_memory.py measures it).
"""

from __future__ import annotations

import gc
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ditf_calib.graph_io import BATCH, ENSEMBLE, FRAMES, HEIGHT, WIDTH
from ditf_runtime.files import check_free_space, staged_folder
from ditf_runtime.manifest import MODEL_FILE, REFERENCE_FILE, Manifest
from ditf_runtime.precision import Precision

from . import graph_checks, parity, precision_step, semantic_gate
from .build import build_graph, detect_discard
from .errors import ParityError
from .logs import quiet_libraries
from .onnx_export import OPSET, export_onnx
from .plan import ExportPlan, plan
from .publish import PROFILE_MAX_BATCH, write_manifest
from .request import ExportRequest

__all__ = ["ExportRequest", "ExportPlan", "ParityError", "build_graph", "export", "plan"]


def export(request: ExportRequest) -> Manifest:
    """Run the whole export; returns the manifest of the finished folder at request.out."""
    say = request.progress
    quiet_libraries()
    the_plan = plan(request)
    say(f"model {the_plan.source.name} ({the_plan.source.family}) from {the_plan.source.path}; "
        f"layer {the_plan.options.layer} = {the_plan.block}")
    t0 = time.perf_counter()
    with _step(say, "loading weights"):
        built = build_graph(the_plan)
    say(f"loaded {built.load.tensors_read}/{built.load.tensors_in_checkpoint} transformer tensors "
        f"({built.load.bytes_read / 1e6:.1f} MB)")
    massive_ratios: dict[str, float] = {}
    if the_plan.discard_source == "auto":
        the_plan, massive_ratios = detect_discard(the_plan, built, say)
    out = Path(request.out)
    check_free_space(out.parent, _folder_bytes(built.graph, the_plan), "the export",
                     fix="free some space, or choose another --out")  # known now, before minutes of writing
    with staged_folder(out) as tmp:  # renamed into place when the block ends, removed if it fails
        calibration = precision_step.calibration_set(the_plan)
        cases = _reference_and_export(the_plan, built.graph, calibration, tmp, say)
        module = weakref.ref(built.graph)
        built = built.without_module()  # the last reference: nothing after this needs PyTorch weights
        _check_freed(module, say)
        graph_checks.check_graph(tmp / MODEL_FILE)
        # the first gating case: what `verify_reference` later judges must be what the export's gate judged
        parity.save_reference(next((c for c in cases if c.gates), cases[0]), the_plan.io, tmp / REFERENCE_FILE,
                              max_batch=PROFILE_MAX_BATCH[the_plan.io.has_axis(FRAMES)])
        report = _precision_and_parity(the_plan, cases, calibration, tmp, say)
        with _step(say, "hashing files and writing the manifest"):
            manifest = write_manifest(the_plan, built, report, massive_ratios, tmp)
    say(f"done in {time.perf_counter() - t0:.1f} s: {out}")
    return manifest


def _folder_bytes(graph, the_plan: ExportPlan) -> int:
    """About what the export writes at its peak: the fp32 graph's weights (model.onnx.data), and for another
    precision its rewrite beside it until the fp32 file goes (calib/tensors.GraphRewrite), plus some slack."""
    tensors = [*graph.parameters(), *graph.buffers()]
    fp32 = sum(t.numel() for t in tensors if t.device.type != "meta") * 4  # meta: weights never read
    return fp32 * (1 if the_plan.precision == Precision.FP32 else 2) + (64 << 20)


def _reference_and_export(the_plan: ExportPlan, graph, calibration, folder: Path,
                          say: Callable[[str], None]) -> tuple[parity.ParityCase, ...]:
    """The PyTorch module's outputs on every parity input (kept for parity), then the ONNX export."""
    extra = precision_step.calibration_parity_feeds(the_plan, calibration)
    semantic = semantic_gate.semantic_input(the_plan, the_plan.semantic_pairs)
    extra = extra + ((semantic,) if semantic is not None else ())
    with _step(say, f"PyTorch reference outputs on {len(the_plan.parity_sizes) + len(extra)} parity inputs"):
        # INT8 is judged on held-out real images only; random inputs are reported beside them
        cases = parity.reference_cases(graph, the_plan.io, the_plan.parity_sizes, extra,
                                       random_gates=the_plan.image_split is None,
                                       say=lambda line: say("  " + line))
    with _step(say, f"exporting ONNX (torch.onnx dynamo, opset {OPSET}, dynamic {'/'.join(_dynamic_axes(the_plan))})"):
        export_onnx(graph, folder / MODEL_FILE, the_plan.io)
    return cases


def _check_freed(module: weakref.ref, say: Callable[[str], None]) -> None:
    gc.collect()
    if module() is not None:  # something kept the module alive: its weights would sit beside every session
        say("warning: the PyTorch module is still referenced after the ONNX export; its memory stays held")


def _precision_and_parity(the_plan: ExportPlan, cases: tuple[parity.ParityCase, ...], calibration, folder: Path,
                          say: Callable[[str], None]) -> parity.ParityReport:
    """Rewrite to the plan's precision, check the graph again, and judge it against the PyTorch outputs."""
    if the_plan.precision == Precision.FP32:
        step = precision_step.rewrite_precision(the_plan, folder / MODEL_FILE, calibration, say)  # nothing to do
    else:
        with _step(say, f"precision rewrite to {the_plan.precision} (streamed tensor by tensor)"):
            step = precision_step.rewrite_precision(the_plan, folder / MODEL_FILE, calibration, say)
    with step:  # leaving it removes the precision step's scratch files (an emulated twin)
        graph_checks.check_graph(folder / MODEL_FILE)
        with _step(say, f"parity: onnxruntime vs PyTorch ({the_plan.precision}) on {len(cases)} inputs"):
            report = parity.run_parity(cases, step.parity_model, the_plan.io, the_plan.precision,
                                       backend=step.backend,
                                       precision_report={"precision": the_plan.precision.value, **step.report},
                                       say=lambda line: say("  " + line),
                                       disabled_optimizers=step.disabled_optimizers,
                                       judges={"semantic": semantic_gate.judge})
    if not report.passed:
        raise ParityError("the exported graph failed parity against PyTorch:\n  " + "\n  ".join(report.summary)
                          + _what_to_give(the_plan, report))
    return report


def _what_to_give(the_plan: ExportPlan, report: parity.ParityReport) -> str:
    """INT8's / FP8's failure message ends with what to give instead (calibration that covers the held-out
    images)."""
    split = the_plan.image_split
    if split is None:
        return ""
    from ditf_runtime.preprocess import open_image

    if report.evidence_missing:  # not a calibration problem: more calibration photos would not help
        kept = ("" if the_plan.options.discard else
                " This export keeps every channel (--discard none): where massive activations dominate the features, "
                "every token looks alike; discard them (--discard auto, or the model's channels) to judge INT8 "
                "by matching.")
        return (f"\n{the_plan.precision.value.upper()} is judged by matching, and the held-out images gave it nothing "
                f"decisive.{kept}\nGive "
                f"instead: --eval-images DIR with at least 2 photos like the ones you will run, or export "
                f"--precision bf16/fp16 (judged by cosine and error, not by matching).")
    sizes = ", ".join(f"{p.name} {open_image(p).size[0]}x{open_image(p).size[1]}" for p in split.calibration[:8])
    name = the_plan.precision.value.upper()
    why = (f"{name} calibrated on {len(split.calibration)} image(s) ({sizes}) at long side(s) "
           f"{list(the_plan.calib_sizes)} does not hold on the held-out real images")
    methods = ("max", "percentile") if the_plan.precision == Precision.FP8 else ("max", "mse", "entropy", "percentile")
    others = "|".join(m for m in methods if m != the_plan.calib_method)
    return (f"\n{why}.\nGive instead: --calib-images with more, varied real photos like the ones you will run "
            f"(5-50 is typical; at least {the_plan.image_size} px on the long side, since smaller ones are "
            f"upscaled), and --eval-images DIR with at least 2 other such photos (held out: {len(split.held_out)}); "
            f"or try --calib-method {others}; or export --precision bf16/fp16.")


@contextmanager
def _step(say: Callable[[str], None], what: str) -> Iterator[None]:
    """Say what starts, and how long it took once it is done (long steps on big models take minutes)."""
    say(what)
    start = time.perf_counter()
    yield
    say(f"  ({what.split(' (')[0]}: {time.perf_counter() - start:.1f} s)")


def _dynamic_axes(the_plan: ExportPlan) -> list[str]:
    return [name for name in (BATCH, ENSEMBLE, FRAMES, HEIGHT, WIDTH) if the_plan.io.has_axis(name)]

"""The one export loop. It never names a family: everything family-specific comes from the plan's adapter
and the graph's declared inputs and outputs (its GraphIO).

Order (after optimum's export_pytorch), one module per step:
  plan.py            resolve the model and every default, validate all input before any work
  build.py           load truncated weights, bake the conditioning, build the feature graph (+ --discard auto)
  onnx_export.py     torch.onnx.export (dynamo, opset 20) with the graph's dynamic axes
  graph_checks.py    forbidden ops and dtypes
  precision_step.py  the precision rewrite (ditf_calib)
  parity.py          onnxruntime vs PyTorch on the same inputs
  publish.py         manifest, ONNX metadata, then one atomic rename of the finished folder
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ditf_calib.graph_io import BATCH, ENSEMBLE, FRAMES, HEIGHT, WIDTH
from ditf_runtime.manifest import MODEL_FILE, REFERENCE_FILE, Manifest

from . import graph_checks, parity
from .build import BuiltGraph, build_graph, detect_discard
from .errors import ParityError
from .logs import quiet_libraries
from .onnx_export import OPSET, export_onnx
from .plan import ExportPlan, plan
from .precision_step import rewrite_precision
from .publish import publish, write_manifest
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
    built = build_graph(the_plan)
    say(f"loaded {built.load.tensors_read}/{built.load.tensors_in_checkpoint} transformer tensors "
        f"({built.load.bytes_read / 1e6:.1f} MB)")
    massive_ratios: dict[str, float] = {}
    if the_plan.discard_source == "auto":
        the_plan, massive_ratios = detect_discard(the_plan, built, say)
    out = Path(request.out)
    with _staging_folder(out) as tmp:
        say(f"exporting ONNX (torch.onnx dynamo, opset {OPSET}, dynamic {'/'.join(_dynamic_axes(the_plan))})")
        export_onnx(built.graph, tmp / MODEL_FILE, the_plan.io)
        graph_checks.check_graph(tmp / MODEL_FILE)
        report = _precision_and_parity(the_plan, built, tmp, say)
        manifest = write_manifest(the_plan, built, report, massive_ratios, tmp)
        publish(tmp, out)
    say(f"done in {time.perf_counter() - t0:.1f} s: {out}")
    return manifest


def _precision_and_parity(the_plan: ExportPlan, built: BuiltGraph, folder: Path,
                          say: Callable[[str], None]) -> parity.ParityReport:
    """Rewrite to the plan's precision, check the graph again, and judge it against PyTorch."""
    with rewrite_precision(the_plan, folder / MODEL_FILE, say) as step:
        graph_checks.check_graph(folder / MODEL_FILE)
        say(f"running parity: onnxruntime vs PyTorch ({the_plan.precision})")
        report = parity.run_parity(built.graph, step.parity_model, the_plan.io, the_plan.parity_sizes,
                                   the_plan.precision, reference_path=folder / REFERENCE_FILE, backend=step.backend,
                                   extra_feeds=step.parity_feeds,
                                   precision_report={"precision": the_plan.precision.value, **step.report})
    for line in report.summary:
        say("  " + line)
    if not report.passed:
        raise ParityError("the exported graph failed parity against PyTorch:\n  " + "\n  ".join(report.summary))
    return report


def _dynamic_axes(the_plan: ExportPlan) -> list[str]:
    return [name for name in (BATCH, ENSEMBLE, FRAMES, HEIGHT, WIDTH) if the_plan.io.has_axis(name)]


@contextmanager
def _staging_folder(out: Path) -> Iterator[Path]:
    """A hidden temporary folder beside `out`; removed if anything fails, so nothing half-done looks finished."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

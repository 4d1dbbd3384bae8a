"""Video exports at bf16 / fp16 without a second export: the export's own precision step on a copy of an fp32 export.

`ditf-export --precision P` is the fp32 export, then exporter.precision_step.rewrite_precision, then parity on
the step's Cast-emulated twin. The video tests take their module's fp32 export, plan P with the same options (the
plan once refused video families at anything but fp32) and run that step, then feed the twin their own clip, so a
bf16 / fp16 check costs seconds instead of a minute-long export.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def low_precision_twin(fp32_export: Path, precision: str, request: dict, feed: dict, tmp: Path):
    """-> (the twin's features on `feed`, the typed graph's path, the precision step's report)."""
    from ditf_export.export import ExportRequest, plan
    from ditf_export.precision_step import rewrite_precision
    from ditf_runtime.backends.onnxrt import create_session

    work = tmp / f"graph-{precision}"
    work.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(fp32_export / name, work / name)
    the_plan = plan(ExportRequest(out=tmp / "unused", precision=precision, **request))
    assert str(the_plan.precision) == precision
    with rewrite_precision(the_plan, work / "model.onnx", None, lambda line: None) as result:
        # the twin's session as the export's parity opens it (its constant folding off)
        sess = create_session(result.parity_model, disabled_optimizers=result.disabled_optimizers)
        got = sess.run(["features"], {k: np.asarray(v) for k, v in feed.items()})[0]
        report = dict(result.report)
    return got, work / "model.onnx", report


def assert_typed(model_path: Path, precision: str) -> None:
    """The written graph: FP32 I/O, the blocks' GEMM weights stored in the low precision."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(model_path), load_external_data=False)
    low = TensorProto.BFLOAT16 if precision == "bf16" else TensorProto.FLOAT16
    assert sum(i.data_type == low for i in model.graph.initializer) >= 10
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT] * 2
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]

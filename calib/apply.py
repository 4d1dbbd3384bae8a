"""The export's precision step: rewrite DIR/model.onnx (+ .data) from FP32 to the requested precision.

Called by ditf_export.export after the FP32 graph was exported and checked, before parity. Every
precision keeps FP32 graph I/O; the written graph is what TensorRT builds strongly typed.

- fp32: nothing to do.
- fp16 / bf16: typed islands (calib/precision.py) are written; the range check and parity run on
        the Cast-emulated twin (onnxruntime CPU has no bf16 kernels, and computes FP16 GEMMs in FP32),
        which the report says. FP16 is refused before anything is written when the twin overflows on
        the check inputs (random inputs at the parity sizes, plus the calibration images if given).
- int8: explicit Q/DQ calibrated on --calib-images (calib/int8.py).

Calibration feeds arrive in the graph's own layout (data.CalibrationSet), so nothing here knows about
frames, strides or input names.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from ditf_runtime.precision import Precision

from . import graph as G
from .data import CalibrationSet

Feed = Mapping[str, np.ndarray]
Progress = Callable[[Iterable, str], Iterable]

FP32_KEPT = "graph I/O, residual stream, AdaLN modulation and gates, normalisations, RoPE, GELU, feature head"


def tqdm_progress(iterable: Iterable, desc: str) -> Iterable:
    """The progress bar of calibration and range checks (tqdm on stderr)."""
    from tqdm.auto import tqdm

    items = list(iterable)
    return tqdm(items, desc=desc, unit="input", leave=False, dynamic_ncols=True)


@dataclass(frozen=True)
class PrecisionResult:
    """What the precision step did, built once. A context manager: leaving it removes `scratch`."""

    precision: Precision
    parity_model: Path  # what parity runs on: the written graph, or the low-float graph's emulated twin
    backend: str | None = None  # set when parity does not run the written graph itself
    report: Mapping[str, Any] = field(default_factory=dict)  # the manifest's parity["precision"], less "precision"
    parity_feeds: tuple[tuple[str, Feed], ...] = ()  # (label, feed): real images for an extra parity row
    scratch: Path | None = None  # temporary folder holding parity_model when it is not the written graph

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "PrecisionResult":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def apply_precision(model_path: Path, precision: Precision, *, check_feeds: Sequence[Feed],
                    calibration: CalibrationSet | None = None, int8_config=None, parity_size: int | None = None,
                    say: Callable[[str], None] = lambda m: None,
                    progress: Progress | None = tqdm_progress) -> PrecisionResult:
    """Rewrite `model_path` in place (model.onnx + model.onnx.data) to `precision`.

    check_feeds: random inputs for the fp16/bf16 range check; calibration (its feeds in the graph's own
    layout): INT8 calibration, the range check, and a parity row on real images at parity_size.
    """
    precision = Precision.parse(precision)
    model_path = Path(model_path)
    parity_feeds = ()
    if calibration is not None and parity_size:
        # real images through the same graph, fresh noise: parity on what deployment sees
        parity_feeds = ((f"{len(calibration)} calibration images at {parity_size}x{parity_size}",
                         calibration.batched((parity_size, parity_size))),)
    if precision == Precision.FP32:
        return PrecisionResult(precision, model_path, parity_feeds=parity_feeds)
    model = G.load(model_path)
    calib_feeds = list(calibration.feeds()) if calibration is not None else []
    if precision.is_low_float:
        return _low_float(model, model_path, precision, list(check_feeds) + calib_feeds, parity_feeds, say, progress)
    if calibration is None:
        raise ValueError("int8 needs calibration images")
    return _int8(model, model_path, calibration, calib_feeds, int8_config, parity_feeds, say, progress)


def _low_float(model: onnx.ModelProto, model_path: Path, precision: Precision, feeds: list[Feed],
               parity_feeds: tuple, say: Callable[[str], None], progress: Progress | None) -> PrecisionResult:
    """fp16 / bf16: write the typed graph; check ranges and run parity on the Cast-emulated twin."""
    from .precision import FP16_WARN_HEADROOM, check_ranges, refuse_if_out_of_range, to_low_precision

    typed, islands = to_low_precision(model, precision)
    twin, twin_islands = to_low_precision(model, precision, emulate=True)
    where = f"the Cast-emulated {precision} twin on onnxruntime CPU"
    say(f"{islands.summary()}; checking ranges on {len(feeds)} inputs ({where})")
    ranges = check_ranges(twin, twin_islands, feeds, progress)
    refuse_if_out_of_range(twin_islands, ranges)
    report: dict[str, Any] = {"graph": islands.summary(), "range_check": {"on": where, **ranges.to_dict()},
                              "fp32_kept": FP32_KEPT}
    if precision == Precision.FP16 and ranges.headroom < FP16_WARN_HEADROOM:
        report["warning"] = (f"fp16 headroom only {ranges.headroom:.2f}x on the check inputs; "
                             "unseen inputs may overflow: consider bf16")
    if precision == Precision.FP16:  # the typed graph loads and runs on onnxruntime (FP32 GEMMs behind casts)
        from ditf_runtime.parity import compare

        a = G.session(typed).run(None, dict(feeds[0]))[0]
        b = G.session(twin).run(None, dict(feeds[0]))[0]
        report["typed_graph_on_onnxruntime_vs_twin_min_cosine"] = compare(a, b, precision).min_cosine
    report["parity_on"] = "Cast-emulated twin"
    scratch = Path(tempfile.mkdtemp(prefix=f"ditf-{precision}-twin-"))
    twin_path = G.save(twin, scratch / "twin.onnx")
    backend = (f"onnxruntime CPUExecutionProvider on the Cast-emulated {precision} twin (same islands, "
               f"f32->{precision}->f32 rounding of every island input, weight and output; "
               + ("the typed bf16 graph needs a GPU)" if precision == Precision.BF16 else
                  "onnxruntime CPU computes FP16 GEMMs of the typed graph in FP32)"))
    G.save(typed, model_path)
    return PrecisionResult(precision, twin_path, backend, report, parity_feeds, scratch)


def _int8(model: onnx.ModelProto, model_path: Path, calibration: CalibrationSet, feeds: list[Feed], config,
          parity_feeds: tuple, say: Callable[[str], None], progress: Progress | None) -> PrecisionResult:
    """int8: explicit Q/DQ calibrated on the calibration images; parity runs the written graph."""
    from .int8 import Int8Config, quantize

    config = config or Int8Config()
    say(f"INT8 calibration on {len(calibration)} images ({config.calibration}, SmoothQuant alpha "
        f"{config.smooth_alpha}, massive channels {list(config.protect_channels)} kept FP32)")
    qmodel, report = quantize(model, feeds, config, progress)
    G.save(qmodel, model_path)
    return PrecisionResult(Precision.INT8, model_path, report=report.to_dict(), parity_feeds=parity_feeds)

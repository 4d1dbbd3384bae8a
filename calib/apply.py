"""The export's precision step: rewrite DIR/model.onnx (+ .data) from FP32 to the requested precision.

Called by ditf_export.export after the FP32 graph was exported and checked, before parity. Every
precision keeps FP32 graph I/O; the written graph is what TensorRT builds strongly typed.

- fp32: nothing to do.
- fp16 / bf16: typed islands (calib/precision.py) are written; the range check and parity run on
        the Cast-emulated twin (onnxruntime CPU has no bf16 kernels, and computes FP16 GEMMs in FP32),
        which the report says. FP16 is refused before anything is written when the twin overflows on
        the check inputs (random inputs at the parity sizes, plus the calibration images if given).
- int8 / fp8: explicit Q/DQ calibrated on --calib-images (calib/int8.py; FP8 E4M3's defaults: calib/fp8.py).

Memory: the graph is never loaded with its weights. Every rewrite streams them tensor by tensor from the
old data file to a new one (tensors.GraphRewrite), and every check runs one onnxruntime session at a
time on a graph on disk, so the step needs about what one session of the graph needs, whatever the size.

Calibration feeds arrive in the graph's own layout (data.CalibrationSet), so nothing here knows about
frames, strides or input names.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ditf_runtime.precision import Precision

from .data import CalibrationSet
from .tensors import GraphRewrite, TensorStore, load_graph

Feed = Mapping[str, np.ndarray]
Progress = Callable[[Iterable, str], Iterable]

FP32_KEPT = "graph I/O, residual stream, AdaLN modulation and gates, normalisations, RoPE, GELU, feature head"


def tqdm_progress(iterable: Iterable, desc: str) -> Iterable:
    """The progress bar of calibration and range checks (stderr: tqdm on a terminal, plain lines otherwise)."""
    from ditf_runtime.progress import progress_bar

    items = list(iterable)
    return progress_bar(items, desc=desc, unit="input", leave=False)


@dataclass(frozen=True)
class PrecisionResult:
    """What the precision step did, built once. A context manager: leaving it removes `scratch`."""

    precision: Precision
    parity_model: Path  # what parity runs on: the written graph, or the low-float graph's emulated twin
    backend: str | None = None  # set when parity does not run the written graph itself
    report: Mapping[str, Any] = field(default_factory=dict)  # the manifest's parity["precision"], less "precision"
    scratch: Path | None = None  # folder holding parity_model when it is not the written graph
    disabled_optimizers: tuple[str, ...] = ()  # onnxruntime graph transformers parity's session must skip

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "PrecisionResult":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def apply_precision(model_path: Path, precision: Precision, *, check_feeds: Sequence[Feed],
                    calibration: CalibrationSet | None = None, int8_config=None,
                    say: Callable[[str], None] = lambda m: None,
                    progress: Progress | None = tqdm_progress) -> PrecisionResult:
    """Rewrite `model_path` in place (model.onnx + model.onnx.data) to `precision`.

    check_feeds: random inputs for the fp16/bf16 range check; calibration (its feeds in the graph's own
    layout): INT8 / FP8 calibration, and more range-check inputs. int8_config: the Q/DQ quantizer's settings
    (int8.Int8Config; its number_format must be the precision's).
    """
    precision = Precision.parse(precision)
    model_path = Path(model_path)
    if precision == Precision.FP32:
        return PrecisionResult(precision, model_path)
    calib_feeds = list(calibration.feeds()) if calibration is not None else []
    if precision.is_low_float:
        return _low_float(model_path, precision, list(check_feeds) + calib_feeds, say, progress)
    if calibration is None:
        raise ValueError(f"{precision} needs calibration images")
    # one run per noise draw: the same statistics as whole feeds, half the attention memory at E = 2
    return _quantized(model_path, precision, calibration, list(calibration.feeds_per_draw()), int8_config, say,
                      progress)


def _low_float(model_path: Path, precision: Precision, feeds: list[Feed], say: Callable[[str], None],
               progress: Progress | None) -> PrecisionResult:
    """fp16 / bf16: write the twin, check ranges on it, then write the typed graph in place."""
    from .precision import UNFOLDED, FP16_WARN_HEADROOM, check_ranges, refuse_if_out_of_range, to_low_precision

    where = f"the Cast-emulated {precision} twin on onnxruntime CPU"
    # beside the graph (same file system; removed with the export's staging folder if the process dies)
    scratch = model_path.parent / f".{precision}-twin"
    scratch.mkdir()
    try:
        twin_path = scratch / "twin.onnx"
        with GraphRewrite(model_path, twin_path) as rw:
            twin, twin_islands = to_low_precision(rw.model, precision, emulate=True, store=rw.store)
            rw.commit(twin)
        say(f"{twin_islands.summary()}; checking ranges on {len(feeds)} inputs ({where})")
        ranges = check_ranges(load_graph(twin_path), twin_islands, feeds, progress, store=TensorStore(scratch))
        refuse_if_out_of_range(twin_islands, ranges)
        with GraphRewrite(model_path, model_path) as rw:
            typed, islands = to_low_precision(rw.model, precision, store=rw.store)
            rw.commit(typed)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    report: dict[str, Any] = {"graph": islands.summary(), "range_check": {"on": where, **ranges.to_dict()},
                              "fp32_kept": FP32_KEPT}
    if precision == Precision.FP16 and ranges.headroom < FP16_WARN_HEADROOM:
        report["warning"] = (f"fp16 headroom only {ranges.headroom:.2f}x on the check inputs; "
                             "unseen inputs may overflow: consider bf16")
    if precision == Precision.FP16:  # the typed graph loads and runs on onnxruntime (FP32 GEMMs behind casts)
        from ditf_runtime.parity import compare

        from .graph import session

        typed_out = session(model_path, disabled_optimizers=UNFOLDED).run(None, dict(feeds[0]))[0]
        report["typed_graph_on_onnxruntime_vs_twin_min_cosine"] = compare(
            _frame_maps(typed_out), _frame_maps(ranges.first_output), precision).min_cosine
    report["parity_on"] = "Cast-emulated twin"
    backend = (f"onnxruntime CPUExecutionProvider on the Cast-emulated {precision} twin (same islands, "
               f"f32->{precision}->f32 rounding of every island input, weight and output; "
               + ("the typed bf16 graph needs a GPU)" if precision == Precision.BF16 else
                  "onnxruntime CPU computes FP16 GEMMs of the typed graph in FP32)"))
    return PrecisionResult(precision, twin_path, backend, report, scratch, disabled_optimizers=UNFOLDED)


def _frame_maps(features: np.ndarray) -> np.ndarray:
    """Video graphs' [B, F, C, h, w] features as [B*F, C, h, w] maps, the layout parity's metrics take."""
    return features.reshape(-1, *features.shape[-3:]) if features.ndim == 5 else features


def _quantized(model_path: Path, precision: Precision, calibration: CalibrationSet, feeds: list[Feed], config,
               say: Callable[[str], None], progress: Progress | None) -> PrecisionResult:
    """int8 / fp8: explicit Q/DQ calibrated on the calibration images; parity runs the written graph."""
    from .fp8 import fp8_config
    from .int8 import Int8Config, quantize

    config = config or (fp8_config(Int8Config()) if precision == Precision.FP8 else Int8Config())
    if config.number_format != precision:
        raise ValueError(f"--precision {precision} given a {config.number_format} quantizer configuration")
    sizes = sorted({img.input_size for img in calibration.images})
    say(f"{precision.value.upper()} calibration on {len(calibration)} images at "
        f"{', '.join(f'{h}x{w}' for h, w in sizes)} ({config.calibration}, SmoothQuant alpha {config.smooth_alpha}, "
        f"massive channels {list(config.protect_channels)} kept FP32; {len(feeds)} runs per pass, one per noise "
        "draw)")
    with GraphRewrite(model_path, model_path) as rw:
        qmodel, report = quantize(rw.model, feeds, config, progress, store=rw.store, say=say)
        rw.commit(qmodel)
    record = report.to_dict()
    record["calibration_inputs"] = [{"image": Path(img.name).name, "size": list(img.input_size)}
                                    for img in calibration.images]
    return PrecisionResult(precision, model_path, report=record)

"""The export's precision step: rewrite DIR/model.onnx (+ .data) from FP32 to the requested precision.

Called by ditf_export.export after the FP32 graph was exported and checked, before parity. Every
precision keeps FP32 graph I/O; the written graph is what TensorRT builds strongly typed.

- fp32: nothing to do.
- fp16 / bf16: typed islands (calib/precision.py) are written; the range check and parity run on
        the Cast-emulated twin (onnxruntime CPU has no bf16 kernels, and computes FP16 GEMMs in FP32),
        which the report says. FP16 is refused before anything is written when the twin overflows on
        the check inputs (random inputs at the parity sizes, plus the calibration images if given).
- int8: explicit Q/DQ calibrated on --calib-images (calib/int8.py).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import graph as G
from .data import CalibrationSet

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def tqdm_progress(iterable: Iterable, desc: str) -> Iterable:
    """The progress bar of calibration and range checks (tqdm on stderr)."""
    from tqdm.auto import tqdm

    items = list(iterable)
    return tqdm(items, desc=desc, unit="input", leave=False, dynamic_ncols=True)


@dataclass
class PrecisionResult:
    precision: str
    parity_model: Path  # what parity runs on: the written graph, or the bf16 graph's emulated twin
    backend: str | None = None  # set when parity does not run the written graph itself
    report: dict[str, Any] = field(default_factory=dict)
    parity_feeds: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    _tmp: Path | None = None

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def apply_precision(model_path: Path, precision: str, *, check_feeds: list[Mapping[str, np.ndarray]],
                    calibration: CalibrationSet | None = None, int8_config=None,
                    parity_size: int | None = None, frames: int | None = None,
                    say: Callable[[str], None] = lambda m: None,
                    progress: Callable[[Iterable, str], Iterable] | None = tqdm_progress) -> PrecisionResult:
    """Rewrite `model_path` in place (model.onnx + model.onnx.data) to `precision`.

    `frames` (video graphs): calibration photos become still clips of that many frames with fresh
    noise per frame, as massive-channel detection does (ditf_calib.massive.still_clips).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    model_path = Path(model_path)
    result = PrecisionResult(precision, model_path)

    def calib_feeds() -> list[dict[str, np.ndarray]]:
        feeds = calibration.feeds()
        if frames:
            from .massive import still_clips

            feeds = still_clips(feeds, frames, calibration.seed)
        return list(feeds)

    if calibration is not None and parity_size:
        # real images through the same graph, fresh noise: parity on what deployment sees
        feed = calibration.batched((parity_size, parity_size))
        if frames:
            from .massive import still_clips

            feed = next(still_clips([feed], frames, calibration.seed + 1))
        result.parity_feeds.append((f"{len(calibration)} calibration images at {parity_size}x{parity_size}", feed))
    if precision == "fp32":
        return result
    model = G.load(model_path)
    feeds = list(check_feeds) + (calib_feeds() if calibration is not None else [])
    if precision in ("fp16", "bf16"):
        from .precision import FP16_WARN_HEADROOM, check_ranges, refuse_if_out_of_range, to_low_precision

        typed, islands = to_low_precision(model, precision)
        twin, twin_islands = to_low_precision(model, precision, emulate=True)
        where = f"the Cast-emulated {precision} twin on onnxruntime CPU"
        say(f"{islands.summary()}; checking ranges on {len(feeds)} inputs ({where})")
        ranges = check_ranges(twin, twin_islands, feeds, progress)
        refuse_if_out_of_range(twin_islands, ranges)
        result.report = {"graph": islands.summary(), "range_check": {"on": where, **ranges.to_dict()},
                         "fp32_kept": "graph I/O, residual stream, AdaLN modulation and gates, "
                                      "normalisations, RoPE, GELU, feature head"}
        if precision == "fp16" and ranges.headroom < FP16_WARN_HEADROOM:
            result.report["warning"] = (f"fp16 headroom only {ranges.headroom:.2f}x on the check inputs; "
                                        "unseen inputs may overflow: consider bf16")
        if precision == "fp16":  # the typed graph loads and runs on onnxruntime (FP32 GEMMs behind casts)
            a = G.session(typed).run(None, dict(feeds[0]))[0]
            b = G.session(twin).run(None, dict(feeds[0]))[0]
            from ditf_runtime.parity import compare

            result.report["typed_graph_on_onnxruntime_vs_twin_min_cosine"] = compare(a, b, "fp16").min_cosine
        tmp = Path(tempfile.mkdtemp(prefix=f"ditf-{precision}-twin-"))
        result._tmp = tmp
        result.parity_model = G.save(twin, tmp / "twin.onnx")
        result.backend = (f"onnxruntime CPUExecutionProvider on the Cast-emulated {precision} twin (same islands, "
                          f"f32->{precision}->f32 rounding of every island input, weight and output; "
                          + ("the typed bf16 graph needs a GPU)" if precision == "bf16" else
                             "onnxruntime CPU computes FP16 GEMMs of the typed graph in FP32)"))
        result.report["parity_on"] = "Cast-emulated twin"
        G.save(typed, model_path)
        return result
    # int8
    if calibration is None:
        raise ValueError("int8 needs calibration images")
    from .int8 import Int8Config, quantize

    config = int8_config or Int8Config()
    say(f"INT8 calibration on {len(calibration)} images ({config.calibration}, SmoothQuant alpha "
        f"{config.smooth_alpha}, massive channels {list(config.protect_channels)} kept FP32)")
    qmodel, report = quantize(model, calib_feeds(), config, progress)
    result.report = report.to_dict()
    G.save(qmodel, model_path)
    return result

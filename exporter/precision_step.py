"""Step 4 of an export: rewrite the checked FP32 graph to the plan's precision (ditf_calib.apply).

This module only gathers what calibration needs from the plan: calibration images in the graph's own
layout, random range-check inputs, the channels INT8 must keep FP32, and the real-image parity inputs
(made before the PyTorch module is freed, so their reference outputs can be computed). FP32 is a no-op.

INT8 and FP8 are calibrated at the sizes they will run at (the export's default long side, or --calib-sizes) on the
calibration part of the plan's image split, and judged on the held-out part, each image alone at the
export's default long side (aspect kept, as the runtime prepares it): those rows decide the gate.
fp16/bf16 keep their row of all calibration images at one square size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ditf_calib.apply import PrecisionResult
from ditf_calib.data import CalibrationSet
from ditf_calib.graph_io import FRAMES
from ditf_runtime.precision import Precision

from .errors import ExportInputError
from .parity import ParityInput, parity_inputs
from .plan import ExportPlan

CALIB_ENSEMBLE = 2  # noise draws per calibration image (at most the export's E)
HELD_OUT_SEED = 1  # held-out images' noise (calibration: seed 0)
CHECK_BATCH, CHECK_ENSEMBLE, CHECK_SEED = 2, 2, 2000  # random range-check inputs, at the parity sizes
CHECK_FRAMES = 4  # video graphs: short still clips
PARITY_SIDE = 256  # the calibration images' parity row: square, at most this (and the export's size)


def _frames(plan: ExportPlan) -> int | None:
    io = plan.io
    return io.clip_frames(min(io.max_frames, CHECK_FRAMES)) if io.has_axis(FRAMES) else None


@dataclass(frozen=True)
class CalibrationData:
    """What the precision step calibrates on (`calibration`, at every calibration size) and, for INT8, the
    held-out images that judge it (`held_out`, at the export's default long side)."""

    calibration: CalibrationSet
    held_out: CalibrationSet | None = None

    def __len__(self) -> int:
        return len(self.calibration)


def calibration_set(plan: ExportPlan) -> CalibrationData | None:
    """The calibration images prepared as the runtime prepares them, or None (fp32, or no --calib-images)."""
    from ditf_calib.data import CalibrationError, load_calibration_set

    if plan.calib_images is None or plan.precision == Precision.FP32:
        return None
    ensemble = min(plan.ensemble, CALIB_ENSEMBLE)
    try:
        if plan.image_split is None:
            return CalibrationData(load_calibration_set(plan.calib_images, io=plan.io, long_side=plan.image_size,
                                                        ensemble=ensemble, frames=_frames(plan)))
        split = plan.image_split
        calibration = load_calibration_set(split.calibration, io=plan.io, long_side=plan.calib_sizes,
                                           ensemble=ensemble, frames=_frames(plan))
        held_out = load_calibration_set(split.held_out, io=plan.io, long_side=plan.image_size, ensemble=ensemble,
                                        seed=HELD_OUT_SEED, frames=_frames(plan))
        return CalibrationData(calibration, held_out)
    except CalibrationError as exc:
        raise ExportInputError(str(exc)) from None


def calibration_parity_feeds(plan: ExportPlan, data: CalibrationData | None) -> tuple[ParityInput, ...]:
    """Real-image parity inputs: INT8's held-out images (one feed each, the gate); else the calibration
    images at one square size, fresh noise (parity on what deployment sees)."""
    if data is None:
        return ()
    if data.held_out is not None:
        held = data.held_out
        sizes = [list(img.input_size) for img in held.images]
        names = [_name(img.name) for img in held.images]
        label = (f"{len(held)} held-out real images at the export's default size (long side {plan.image_size}): "
                 + ", ".join(names))
        return (ParityInput(label, tuple(held.feeds()), gates=True,
                            record={"held_out_images": names, "sizes": sizes,
                                    "calibration_images": [_name(p) for p in plan.image_split.calibration],
                                    "calibration_sizes": list(plan.calib_sizes),
                                    "split_rule": plan.image_split.rule}),)
    calibration = data.calibration
    m = plan.io.size_multiple
    size = max(m, min(plan.image_size, PARITY_SIDE) // m * m)
    return (ParityInput(f"{len(calibration)} calibration images at {size}x{size}",
                        (calibration.batched((size, size)),)),)


def _name(path) -> str:
    return Path(str(path)).name


def rewrite_precision(plan: ExportPlan, model_path: Path, data: CalibrationData | None,
                      say: Callable[[str], None]) -> PrecisionResult:
    """Rewrite model_path in place; the result says what parity runs on. Use it as a context manager."""
    from ditf_calib.apply import apply_precision
    from ditf_calib.fp8 import fp8_config
    from ditf_calib.int8 import Int8Config
    from ditf_calib.precision import PrecisionError

    io = plan.io
    check_feeds = parity_inputs(io, plan.parity_sizes, seed=CHECK_SEED, batch=CHECK_BATCH, ensemble=CHECK_ENSEMBLE,
                                frames=_frames(plan))
    config = Int8Config(calibration=plan.calib_method, percentile=plan.calib_percentile,
                        protect_channels=tuple(plan.options.discard), protect_width=io.geometry.feature_channels,
                        convs=plan.int8_convs)
    if plan.precision == Precision.FP8:
        config = fp8_config(config)
    try:
        return apply_precision(model_path, plan.precision, check_feeds=check_feeds,
                               calibration=data.calibration if data is not None else None, int8_config=config,
                               say=say)
    except PrecisionError as exc:
        raise ExportInputError(str(exc)) from None

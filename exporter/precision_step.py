"""Step 4 of an export: rewrite the checked FP32 graph to the plan's precision (ditf_calib.apply).

This module only gathers what calibration needs from the plan: calibration images in the graph's own
layout, random range-check inputs, the channels INT8 must keep FP32, and the calibration images' parity
row (made before the PyTorch module is freed, so its reference output can be computed). FP32 is a no-op.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ditf_calib.apply import PrecisionResult
from ditf_calib.graph_io import FRAMES
from ditf_runtime.precision import Precision

from .errors import ExportInputError
from .parity import parity_inputs
from .plan import ExportPlan

CALIB_ENSEMBLE = 2  # noise draws per calibration image (at most the export's E)
CHECK_BATCH, CHECK_ENSEMBLE, CHECK_SEED = 2, 2, 2000  # random range-check inputs, at the parity sizes
CHECK_FRAMES = 4  # video graphs: short still clips
PARITY_SIDE = 256  # the calibration images' parity row: square, at most this (and the export's size)


def _frames(plan: ExportPlan) -> int | None:
    io = plan.io
    return min(io.max_frames, CHECK_FRAMES) if io.has_axis(FRAMES) else None


def calibration_set(plan: ExportPlan):
    """The calibration images prepared as the runtime prepares them, or None (fp32, or no --calib-images)."""
    from ditf_calib.data import CalibrationError, load_calibration_set

    if plan.calib_images is None or plan.precision == Precision.FP32:
        return None
    try:
        return load_calibration_set(plan.calib_images, io=plan.io, long_side=plan.image_size,
                                    ensemble=min(plan.ensemble, CALIB_ENSEMBLE), frames=_frames(plan))
    except CalibrationError as exc:
        raise ExportInputError(str(exc)) from None


def calibration_parity_feeds(plan: ExportPlan, calibration) -> tuple[tuple[str, Mapping[str, np.ndarray]], ...]:
    """(label, feed): the calibration images, one square size, fresh noise: parity on what deployment sees."""
    if calibration is None:
        return ()
    m = plan.io.size_multiple
    size = max(m, min(plan.image_size, PARITY_SIDE) // m * m)
    return ((f"{len(calibration)} calibration images at {size}x{size}", calibration.batched((size, size))),)


def rewrite_precision(plan: ExportPlan, model_path: Path, calibration, say: Callable[[str], None]) -> PrecisionResult:
    """Rewrite model_path in place; the result says what parity runs on. Use it as a context manager."""
    from ditf_calib.apply import apply_precision
    from ditf_calib.int8 import Int8Config
    from ditf_calib.precision import PrecisionError

    io = plan.io
    check_feeds = parity_inputs(io, plan.parity_sizes, seed=CHECK_SEED, batch=CHECK_BATCH, ensemble=CHECK_ENSEMBLE,
                                frames=_frames(plan))
    config = Int8Config(protect_channels=tuple(plan.options.discard), protect_width=io.geometry.feature_channels,
                        convs=plan.int8_convs)
    try:
        return apply_precision(model_path, plan.precision, check_feeds=check_feeds, calibration=calibration,
                               int8_config=config, say=say)
    except PrecisionError as exc:
        raise ExportInputError(str(exc)) from None

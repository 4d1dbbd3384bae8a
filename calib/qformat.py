"""The 8-bit number formats of the explicit Q/DQ graphs: INT8 and FP8 E4M3 (FLOAT8E4M3FN).

Both are symmetric with zero point 0 and a scale per tensor (activations) or per output channel (weights),
so calib/int8.py calibrates and places Q/DQ the same way for either; only what a value becomes differs:

- int8: round(x / s) clipped to [-127, 127], s = amax / 127: 255 evenly spaced levels;
- fp8:  x / s rounded to the nearest E4M3 value (saturating at +-448), s = amax / 448: 3 mantissa bits, so
        every value keeps ~6% relative precision from 448 down to 2^-6 (subnormals to 2^-9), whatever its
        size. One large channel no longer crushes the others to a few levels, as it does in int8.

The zero point's element type is the format (ONNX QuantizeLinear/DequantizeLinear, opset >= 19 for FP8):
TensorRT reads it to know the Q/DQ type, and onnxruntime's CPU provider runs FP8 Q/DQ as dequantise + FP32
compute, which is what makes the FP8 gates runnable on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ditf_runtime.precision import Precision

from .stats import QMAX as INT8_MAX

FP8_E4M3_MAX = 448.0


@dataclass(frozen=True)
class QFormat:
    name: str  # "int8" | "fp8"
    qmax: float  # the largest magnitude a quantized value takes
    elem_type: int  # ONNX element type of quantized tensors and zero points
    methods: tuple[str, ...]  # calibration methods whose amax search fits this format's grid (stats.METHODS)

    def scale(self, amax) -> np.ndarray:
        """Per-tensor (scalar amax) or per-channel (array) scales, never zero."""
        return (np.maximum(np.asarray(amax, np.float32), np.float32(1e-12)) / np.float32(self.qmax)).astype(np.float32)

    def encode(self, scaled: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """x / scale -> the stored bytes' array (int8, or E4M3 bits as uint8: onnx versions differ in how they
        map float8 numpy types, raw bits are the same everywhere). overwrite: `scaled` (float32) is a scratch
        array the caller no longer needs, rounded and clipped in place (no weight-sized temporaries)."""
        if overwrite and isinstance(scaled, np.ndarray) and scaled.dtype == np.float32 and scaled.ndim:
            if self.elem_type == TensorProto.INT8:
                np.round(scaled, out=scaled)
            np.clip(scaled, -self.qmax, self.qmax, out=scaled)
            clipped = scaled
        elif self.elem_type == TensorProto.INT8:
            clipped = np.clip(np.round(scaled), -self.qmax, self.qmax)
        else:
            clipped = np.clip(scaled, -self.qmax, self.qmax).astype(np.float32)  # QuantizeLinear's saturate=1
        if self.elem_type == TensorProto.INT8:
            return clipped.astype(np.int8)
        import ml_dtypes

        return clipped.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """The values `encode` stored, as float32 (before the scale)."""
        if self.elem_type == TensorProto.INT8:
            return stored.astype(np.float32)
        import ml_dtypes

        return np.asarray(stored).view(ml_dtypes.float8_e4m3fn).astype(np.float32)


INT8 = QFormat("int8", float(INT8_MAX), TensorProto.INT8, ("max", "percentile", "mse", "entropy"))
# mse and entropy search clip values on int8's uniform grid (stats.py): not the error FP8 makes
FP8 = QFormat("fp8", FP8_E4M3_MAX, TensorProto.FLOAT8E4M3FN, ("max", "percentile"))
FORMATS = {Precision.INT8: INT8, Precision.FP8: FP8}


def new_quantized(store, values: np.ndarray, name: str, fmt: QFormat):
    """An initializer of `fmt`'s type holding encode()d values (through a TensorStore: inline or on disk)."""
    if values.dtype == np.int8:
        return store.new(values, name)
    return store.new(values, name, data_type=fmt.elem_type)


def zero_point(store, name: str, fmt: QFormat, channels: int | None = None):
    """Zero point 0 in `fmt`'s type: a scalar, or one per channel."""
    shape = () if channels is None else (channels,)
    return new_quantized(store, fmt.encode(np.zeros(shape, np.float32)), name, fmt)

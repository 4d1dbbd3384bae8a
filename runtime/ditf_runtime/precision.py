"""The precision of an export: one value, parsed once where it enters (the CLI, ExportRequest, a manifest).

A `str` enum, so a member is also its plain string: it compares equal to "fp16", keys the same dict
entries and serialises to JSON as "fp16". Torch-free: the runtime reads it from manifests.
"""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """What the exported ONNX states (TensorRT builds it strongly typed); graph I/O is float32 at every precision."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    FP8 = "fp8"  # E4M3 (FLOAT8E4M3FN), explicit Q/DQ; GPUs of compute capability >= 8.9 run it

    def __str__(self) -> str:  # "fp16", not "Precision.FP16", in messages and f-strings on every Python
        return self.value

    __format__ = str.__format__

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        """The member named by `value`; a ValueError naming the choices otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"precision {value!r}: choose {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}") from None

    @property
    def is_low_float(self) -> bool:
        """fp16 / bf16: typed low-precision islands (as opposed to fp32, or int8's Q/DQ)."""
        return self in (Precision.FP16, Precision.BF16)

    @property
    def is_calibrated(self) -> bool:
        """int8 / fp8: explicit Q/DQ whose activation ranges come from calibration images, judged on held-out ones."""
        return self in (Precision.INT8, Precision.FP8)

    @property
    def min_compute_capability(self) -> tuple[int, int] | None:
        """The oldest NVIDIA GPU generation whose TensorRT runs this precision's Q/DQ (FP8: Ada 8.9), or None."""
        return (8, 9) if self == Precision.FP8 else None


PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)

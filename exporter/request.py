"""What `ditf-export` is asked to do, as given: one frozen request (torch-free, so the CLI stays light).

None means "the model's registry default"; NOT_GIVEN marks the one option where None is a choice of its
own (`--guidance none`: no guidance). plan.py resolves a request into an ExportPlan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ditf_runtime.precision import Precision

from .errors import ExportInputError


class NotGiven:
    """The type of NOT_GIVEN: an option the user did not give (so the model's default applies), as
    opposed to None, which the user may give on purpose (`--guidance none`: no guidance)."""

    _instance: "NotGiven | None" = None

    def __new__(cls) -> "NotGiven":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN = NotGiven()

# Parity sizes as token grids (rows, cols): several sizes through the one dynamic graph, one of them odd
# and non-square (7x5). Multiplied by the graph's size multiple: 64x96 and 112x80 at stride 16.
PARITY_GRIDS = ((4, 6), (7, 5))


@dataclass(frozen=True)
class ExportRequest:
    """Everything `ditf-export` takes; None means "the model's registry default"."""

    model: str
    out: Path
    layer: int | None = None
    timestep: float | None = None
    guidance: float | None | NotGiven = NOT_GIVEN  # NOT_GIVEN: the model's default; None: no guidance
    prompt: str | None = ""
    prompt_embeds: Path | None = None
    discard: str | None = None  # "154,1446" | "none" | "auto" | None (registry default)
    ensemble: int | None = None
    image_size: int | None = None
    class_label: int | None = None
    text_max_length: int | None = None  # T5 tokens; None: the registry's, else the family's default
    precision: Precision = Precision.FP32  # a string ("fp16") is parsed here, once
    calib_images: Path | None = None
    eval_images: Path | None = None  # int8: the held-out images that judge it (default: split off calib_images)
    calib_method: str = "max"  # int8 activation ranges: max | percentile | mse | entropy
    calib_percentile: float = 99.99  # calib_method "percentile"
    calib_sizes: tuple[int, ...] | None = None  # int8: long sides to calibrate at; None: the export's image size
    massive_threshold: float = 100.0  # --discard auto: channels whose median |h_K| ratio exceeds this (paper: 100x)
    force: bool = False
    parity_sizes: tuple[tuple[int, int], ...] | None = None  # (H, W) pixels; None: PARITY_GRIDS x size multiple
    progress: Callable[[str], None] = field(default=lambda msg: None, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision.parse(self.precision))
        except ValueError as exc:  # "precision 'fp8': choose ..."
            raise ExportInputError(f"--{exc}") from None

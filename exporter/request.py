"""What `ditf-export` is asked to do, as given: one frozen request (torch-free, so the CLI stays light).

None means "the model's registry default"; NOT_GIVEN marks the one option where None is a choice of its
own (`--guidance none`: no guidance). `ExportRequest.check()` refuses what is wrong whatever the model
(the CLI calls it before torch is imported); plan.py resolves a checked request into an ExportPlan.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ditf_runtime.files import check_writable
from ditf_runtime.precision import Precision

from .errors import ExportInputError
from .registry import MODEL_NAMES


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

# The feature head (docs/DESIGN.md, "The feature"): "adaln" is DiTF's feature (discard -> LayerNorm -> block K's
# AdaLN modulation); "raw" is the ensemble mean of h_K itself (discard still applies), the paper's ablation baseline.
HEADS = ("adaln", "raw")


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
    head: str | None = None  # "adaln" (DiTF's feature) | "raw" (h_K itself: the paper's ablation) | None: "adaln"
    ensemble: int | None = None
    image_size: int | None = None
    class_label: int | None = None
    text_max_length: int | None = None  # T5 tokens; None: the registry's, else the family's default
    precision: Precision = Precision.FP32  # a string ("fp16") is parsed here, once
    calib_images: Path | None = None
    int8_convs: bool = False  # --precision int8: also the image encoder's convolutions (ditf_calib.int8_conv)
    eval_images: Path | None = None  # int8: the held-out images that judge it (default: split off calib_images)
    calib_method: str = "max"  # int8 activation ranges: max | percentile | mse | entropy
    calib_percentile: float = 99.99  # calib_method "percentile"
    calib_sizes: tuple[int, ...] | None = None  # int8: long sides to calibrate at; None: the export's image size
    massive_threshold: float = 100.0  # --discard auto: channels whose median |h_K| ratio exceeds this (paper: 100x)
    force: bool = False
    parity_sizes: tuple[tuple[int, int], ...] | None = None  # (H, W) pixels; None: PARITY_GRIDS x size multiple
    semantic_pairs: int | None = None  # models trained by ditf: ground-truth pairs that gate (semantic_gate.py)
    progress: Callable[[str], None] = field(default=lambda msg: None, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision.parse(self.precision))
        except ValueError as exc:  # "precision 'fp8': choose ..."
            raise ExportInputError(f"--{exc}") from None

    def check(self) -> None:
        """Refuse options that cannot work with any model, before anything heavy is imported or read.

        What depends on the model (layer range, discard channels vs. the hidden size, size multiple,
        guidance embedding) is checked by plan.py once the model's configs are read.
        """
        out = Path(self.out)
        if out.exists() and not self.force:
            raise ExportInputError(f"--out {out} already exists; pass --force to replace it (or choose another folder)")
        if out.exists() and not out.is_dir():
            raise ExportInputError(f"--out {out} exists and is not a folder")
        check_writable(out, what="--out")  # a read-only or forbidden place: now, not after minutes of work
        check_model_text(self.model)
        if self.layer is not None and self.layer < 0:
            raise ExportInputError(f"--layer {self.layer}: layers are numbered from 0")
        if self.timestep is not None and not 0 <= float(self.timestep) <= 1000:
            raise ExportInputError(f"--timestep {self.timestep}: must be in [0, 1000]")
        for option, value in (("--ensemble", self.ensemble), ("--image-size", self.image_size),
                              ("--max-sequence-length", self.text_max_length)):
            if value is not None and value < 1:
                raise ExportInputError(f"{option} {value}: must be >= 1")
        if self.prompt_embeds is not None and not Path(self.prompt_embeds).is_file():
            raise ExportInputError(f"--prompt-embeds {self.prompt_embeds}: no such file")
        _check_discard_text(self.discard, self.calib_images, self.massive_threshold)
        if self.head is not None and self.head not in HEADS:
            raise ExportInputError(f"--head {self.head!r}: choose one of {', '.join(HEADS)}")
        if self.int8_convs and self.precision != Precision.INT8:
            raise ExportInputError(f"--int8-convs quantizes convolutions to INT8: it needs --precision int8, "
                                   f"not {self.precision}")
        if self.precision.is_calibrated and self.calib_images is None:
            raise ExportInputError(f"--precision {self.precision} needs --calib-images DIR: a folder of real images "
                                   "for the activation ranges (e.g. --calib-images examples/images; 5-50 photos is "
                                   "typical)")
        if self.calib_images is not None:
            from ditf_calib.data import CalibrationError, check_folder

            try:
                check_folder(self.calib_images)  # every image decodes
            except CalibrationError as exc:
                raise ExportInputError(str(exc)) from None


def check_model_text(model: str) -> None:
    """--model names a registry model, an existing folder or an HF id (owner/name), told apart here without
    torch; whether the folder or the cached HF id holds a model is checked later (loading.py)."""
    if not model or not model.strip():
        raise ExportInputError("--model is empty: give a registry name (e.g. flux-tiny), a folder or an HF id")
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_like_path and not Path(model).expanduser().is_dir():
        raise ExportInputError(f"--model {model}: no such folder (a local model is a diffusers pipeline folder "
                               "with model_index.json, transformer/ and vae/)")
    if model in MODEL_NAMES or Path(model).expanduser().is_dir() or model.count("/") == 1:
        return
    raise ExportInputError(unknown_model_message(model))


def unknown_model_message(model: str) -> str:
    """--model that is no registry name, no folder and no HF id: the close registry name(s), then all of them."""
    close = difflib.get_close_matches(model.lower(), MODEL_NAMES, n=2, cutoff=0.75)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (f"--model {model!r}: not a registry name, not an existing folder, and not an HF id (owner/name); "
            f"{hint}registry names: {', '.join(sorted(MODEL_NAMES))}")


def _check_discard_text(discard: str | None, calib_images: Path | None, massive_threshold: float) -> None:
    if discard is None or discard == "none":
        return
    if discard == "auto":
        if calib_images is None:
            raise ExportInputError("--discard auto finds the massive channels from data: pass --calib-images DIR "
                                   "(a folder of real photos, e.g. examples/images)")
        if not massive_threshold > 1:
            raise ExportInputError(f"--massive-threshold {massive_threshold}: must be > 1 (paper: 100)")
        return
    try:
        channels = [int(c) for c in discard.split(",") if c.strip()]
    except ValueError:
        raise ExportInputError(f"--discard {discard!r}: expected a comma list of channel indices, 'none' or 'auto'") \
            from None
    if any(c < 0 for c in channels):
        raise ExportInputError(f"--discard {discard!r}: channel indices start at 0")

"""What the commands share: the model options (as one ModelChoice) and the error-to-message decorator."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import click

from ..cpu_variant import RECORD_FILE
from ..errors import DitfError, InputError
from ..extractor import Extractor
from ..fusion import MODELS, FusedExtractor, check_weights
from ..loading import LoadOptions
from ..memory import parse_bytes
from ..preprocess import DEFAULT_MAX_PIXELS
from ..manifest import Manifest, write_text_atomic

IMAGES, CLIPS = "image", "video"  # the two kinds of export (a video export's manifest has geometry.frame_axis)
# What a user can run with an export of each kind (said when a command gets the other kind).
_COMMANDS_FOR = {IMAGES: "`ditf match SOURCE TARGET`, `ditf extract` or `ditf eval-spair`",
                 CLIPS: "`ditf track FRAMES_DIR` or `ditf eval-davis`"}


class DeviceType(click.ParamType):
    """--device: cpu, cuda (the current GPU) or cuda:N (the N-th GPU this process sees, after CUDA_VISIBLE_DEVICES)."""

    name = "cpu|cuda|cuda:N"

    def convert(self, value, param, ctx):
        if value in ("cpu", "cuda") or (isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit()):
            return value
        self.fail(f"{value!r}: use cpu, cuda or cuda:N (the N-th GPU this process sees, after CUDA_VISIBLE_DEVICES)",
                  param, ctx)


DEVICE = DeviceType()


def friendly_errors(command: Callable) -> Callable:
    """DitfError (ManifestError included) and OS errors become click's one-line "Error: ..." (exit 1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DitfError as exc:  # ManifestError included
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # disk full, permission denied, ...
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    return wrapper


@dataclass(frozen=True)
class ModelChoice:
    """The export (or the two fused exports) a command runs and how: what the shared model options say."""

    export_dirs: tuple[Path, ...]  # empty only where --model is optional (show with a feature file)
    load: LoadOptions
    size: int | tuple[int, ...] | None  # one long side per export; None: the manifests'
    ensemble: int | None
    seed: int
    weights: tuple[float, ...] | None = None  # two exports: their fusion weights

    @property
    def export_dir(self) -> Path | None:
        """The first export (the only one unless fused)."""
        return self.export_dirs[0] if self.export_dirs else None

    @property
    def fused(self) -> bool:
        return len(self.export_dirs) > 1

    def open(self, **changes: Any) -> Extractor | FusedExtractor:
        """Load the export(s); `changes` override LoadOptions fields (exif_transpose, batch_size)."""
        return replace(self.load, **changes).load(*self.export_dirs, weights=self.weights)

    def check_kind(self, command: str, kind: str | None) -> None:
        """Refuse, from the manifests alone (before any session opens, in milliseconds), an export of the wrong
        kind for `ditf COMMAND` (`kind`: IMAGES, CLIPS, or None for either) and two fused exports of different
        kinds, in command-line terms. A folder without a readable manifest is left to `open`, which says why."""
        try:
            manifests = [Manifest.load(d) for d in self.export_dirs]
        except (DitfError, OSError):
            return
        kinds = [CLIPS if m.geometry.frame_axis is not None else IMAGES for m in manifests]
        named = [f"--model {d} ({m.model_name}, {m.family})" for d, m in zip(self.export_dirs, manifests)]
        if len(set(kinds)) > 1:
            a = {IMAGES: "an image", CLIPS: "a video"}
            raise click.UsageError(f"{named[0]} is {a[kinds[0]]} model and {named[1]} {a[kinds[1]]} model: fuse two "
                                   f"image models ({_COMMANDS_FOR[IMAGES]}) or two video models "
                                   f"({_COMMANDS_FOR[CLIPS]})")
        if kind is None or not kinds or kinds[0] == kind:
            return
        if kind == CLIPS:
            raise click.UsageError(f"`ditf {command}` follows points through a clip: it needs a video model (e.g. "
                                   f"an export of latte or latte-tiny); {named[0]} is an image model: use it with "
                                   f"{_COMMANDS_FOR[IMAGES]}")
        raise click.UsageError(f"`ditf {command}` takes images: {named[0]} is a video model (clips of frames); use "
                               f"it with {_COMMANDS_FOR[CLIPS]}, or export an image model (e.g. flux-mini)")


def model_choice(model_dirs, sizes, fuse_weight, **fields: Any) -> ModelChoice:
    """--model (once, or twice to fuse), --size (once per --model) and --fuse-weight, checked together."""
    model_dirs, sizes = tuple(model_dirs or ()), tuple(sizes or ())
    if len(model_dirs) > MODELS:
        raise InputError(f"--model given {len(model_dirs)} times: one export, or two to fuse (DiTF + DINOv2)")
    if fuse_weight is not None and len(model_dirs) != MODELS:
        raise InputError("--fuse-weight W weighs the first of two --model exports (the second gets 1 - W); "
                         "give a second --model")
    weights = check_weights((fuse_weight, 1.0 - fuse_weight) if fuse_weight is not None else None) \
        if len(model_dirs) == MODELS else None
    if len(sizes) > max(1, len(model_dirs)):
        raise InputError(f"--size given {len(sizes)} times for {len(model_dirs)} --model export(s): once (for every "
                         "model), or once per --model in the same order")
    size = sizes[0] if len(sizes) == 1 else (sizes or None)
    choice = ModelChoice(model_dirs, size=size, weights=weights, **fields)
    _check_load_options(choice)
    return choice


def _check_load_options(choice: ModelChoice) -> None:
    """The backend options that cannot go together, said in command-line terms before anything loads (the
    library says the same in Python's: device='cuda', cpu_variant='on', ...)."""
    load = choice.load
    if load.backend == "tensorrt" and load.device == "cpu":
        raise InputError("--backend tensorrt runs engines on a GPU: add --device cuda, or use --backend onnxruntime "
                         "on the CPU")
    if load.backend == "tensorrt" and load.threads is not None:
        raise InputError("--threads sets onnxruntime's CPU threads; --backend tensorrt takes none: leave it out")
    if load.cpu_variant != "on":
        return
    if load.backend == "tensorrt" or load.device == "cuda":
        raise InputError("--cpu-variant on runs model.cpu.onnx on onnxruntime's CPU provider: use it with --device "
                         "cpu --backend onnxruntime (or leave --cpu-variant auto)")
    for folder in choice.export_dirs:
        if folder.is_dir() and not (folder / RECORD_FILE).is_file():
            raise InputError(f"--cpu-variant on, but {folder} has no CPU variant: run `ditf optimize-cpu {folder}` "
                             "first (or leave --cpu-variant auto)")


def model_options(*, required: bool = True, model_help: str = "Export folder written by ditf-export.") -> Callable:
    """The options of every command that loads an export; the command receives `model: ModelChoice`."""
    options = [
        click.option(
            "--model",
            "-m",
            "model_dirs",
            required=required,
            multiple=True,
            type=click.Path(file_okay=False, path_type=Path),
            help=model_help + " Give it twice to fuse two exports (DiTF + DINOv2).",
        ),
        click.option(
            "--fuse-weight",
            type=float,
            default=None,
            help="With two --model: the first model's weight in [0, 1]; the second gets 1 - W (default 0.5).",
        ),
        click.option(
            "--backend",
            type=click.Choice(["auto", "onnxruntime", "tensorrt"]),
            default="auto",
            show_default=True,
            help="auto: TensorRT when --device cuda and an engine exists, else onnxruntime.",
        ),
        click.option(
            "--device",
            type=DEVICE,
            default=None,
            help="Default cpu (cuda for --backend tensorrt). Never falls back silently.",
        ),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads."),
        click.option(
            "--size",
            "sizes",
            type=click.IntRange(min=1),
            multiple=True,
            help="Long side of the model input (default: the manifest's); with two --model, once for both (each "
            "rounds it to its own size multiple) or once per model.",
        ),
        click.option(
            "--ensemble",
            type=click.IntRange(min=1),
            default=None,
            help="Noise draws averaged per image (default: the manifest's).",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Noise seed (noise is keyed by image content)."
        ),
        click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the model files (large exports)."),
        click.option(
            "--cpu-variant",
            type=click.Choice(["auto", "on", "off"]),
            default="auto",
            show_default=True,
            help="onnxruntime on the CPU: auto runs model.cpu.onnx (ditf optimize-cpu) when the export has one.",
        ),
        max_memory_option(),
        max_pixels_option(),
    ]

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, model_dirs, fuse_weight, backend, device, threads, sizes, ensemble, seed, no_verify,
                    cpu_variant, max_memory, max_pixels, **kwargs):
            load = LoadOptions(backend=backend, device=device, threads=threads, verify=not no_verify,
                               max_memory=max_memory, max_pixels=max_pixels, cpu_variant=cpu_variant)
            try:
                model = model_choice(model_dirs, sizes, fuse_weight, load=load, ensemble=ensemble, seed=seed)
            except DitfError as exc:
                raise click.UsageError(str(exc)) from None
            return command(*args, model=model, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


class MemorySize(click.ParamType):
    """A byte count: 12G, 512M, 1.5GiB, 1000000."""

    name = "size"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        try:
            return parse_bytes(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


def max_memory_option() -> Callable:
    return click.option(
        "--max-memory", type=MemorySize(), default=None,
        help="Memory budget of a run (e.g. 12G). Default: what the machine has available. A run whose estimated "
             "peak is larger is refused before it starts, with a size that fits.",
    )  # fmt: skip


def max_pixels_option() -> Callable:
    return click.option(
        "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
        help="Refuse images with more pixels than this before decoding them (decompression-bomb guard).",
    )  # fmt: skip


def emit_text(text: str, path: Path | None) -> None:
    """Write `text` to `path` (atomically), or to stdout when no path is given."""
    if path is not None:
        write_text_atomic(path, text)
    else:
        click.echo(text, nl=False)

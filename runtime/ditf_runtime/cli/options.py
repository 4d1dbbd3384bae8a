"""What the commands share: the model options (as one ModelChoice) and the error-to-message decorator."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import DitfError
from ..extractor import Extractor
from ..loading import LoadOptions
from ..manifest import ManifestError, write_text_atomic


def friendly_errors(command: Callable) -> Callable:
    """DitfError, ManifestError and OS errors become click's one-line "Error: ..." (exit 1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (DitfError, ManifestError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # disk full, permission denied, ...
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    return wrapper


@dataclass(frozen=True)
class ModelChoice:
    """The export a command runs and how: what the shared model options say."""

    export_dir: Path | None  # None only where --model is optional (show with a feature file)
    load: LoadOptions
    size: int | None
    ensemble: int | None
    seed: int

    def open(self, **changes: Any) -> Extractor:
        """Load the export; `changes` override LoadOptions fields (exif_transpose, batch_size)."""
        return replace(self.load, **changes).load(self.export_dir)


def model_options(*, required: bool = True, model_help: str = "Export folder written by ditf-export.") -> Callable:
    """The options of every command that loads an export; the command receives `model: ModelChoice`."""
    options = [
        click.option(
            "--model",
            "-m",
            "model_dir",
            required=required,
            default=None,
            type=click.Path(file_okay=False, path_type=Path),
            help=model_help,
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
            type=click.Choice(["cpu", "cuda"]),
            default=None,
            help="Default cpu (cuda for --backend tensorrt). Never falls back silently.",
        ),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads."),
        click.option(
            "--size",
            type=click.IntRange(min=1),
            default=None,
            help="Long side of the model input (default: the manifest's).",
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
    ]

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, model_dir, backend, device, threads, size, ensemble, seed, no_verify, **kwargs):
            load = LoadOptions(backend=backend, device=device, threads=threads, verify=not no_verify)
            return command(*args, model=ModelChoice(model_dir, load, size, ensemble, seed), **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def emit_text(text: str, path: Path | None) -> None:
    """Write `text` to `path` (atomically), or to stdout when no path is given."""
    if path is not None:
        write_text_atomic(path, text)
    else:
        click.echo(text, nl=False)

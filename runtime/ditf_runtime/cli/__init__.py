"""`ditf`: what runs where the engine runs -- extract, match, track, eval-spair, eval-ap10k, eval-davis, show,
build-engine, optimize-cpu, triton-repo, serve, verify.

Thin click wrappers, one module per command group, over the library (loading, jobs, matching,
evaluate, draw, serving, backends). Nothing in the library imports this package. Every
user-caused failure is a DitfError (ManifestError is one); `options.friendly_errors` turns them (and
OS errors) into click's one-line "Error: ..." with exit code 1, never a traceback.
"""

from __future__ import annotations

import warnings

import click

from .._version import __version__
from ..errors import DitfWarning
from .benchmark import make_benchmark
from .davis import eval_davis
from .engines import build_engine
from .evaluate import eval_ap10k, eval_spair
from .extract import extract
from .match import match, show, track
from .optimize import optimize_cpu
from .serving import serve, triton_repo
from .verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ditf")
def main() -> None:
    """DiTF features from an exported graph: extract, match, evaluate, draw, build engines."""
    warnings.showwarning = _show_warning


_python_show_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """ditf's own warnings as one "warning: ..." line; any other warning as Python prints it."""
    if issubclass(category, DitfWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


for command in (extract, match, track, eval_spair, eval_ap10k, eval_davis, show, build_engine, optimize_cpu, triton_repo,
                serve, verify, make_benchmark):
    main.add_command(command)

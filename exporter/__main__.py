"""`python -m ditf_export ...` is `ditf-export ...` (without it, `-m` silently did nothing)."""

from .cli import main

main(prog_name="ditf-export")

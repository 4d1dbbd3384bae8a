"""`python -m ditf_runtime.cli` runs `ditf`."""

from . import main

main()

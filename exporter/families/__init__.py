"""One adapter module per model family; importing this package registers them all."""

from . import dit, flux, latte, pixart, sd3  # noqa: F401

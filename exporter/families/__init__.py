"""One adapter module per model family; importing this package registers them all."""

from . import flux  # noqa: F401

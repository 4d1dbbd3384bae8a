"""What an export refuses, as types: the CLI turns each into a one-line message, never a traceback."""

from __future__ import annotations


class ExportInputError(ValueError):
    """A user choice (layer, guidance, prompt embeds, discard, ...) that cannot work; the message says the fix."""


class ParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch reference computes."""

"""Error classes: every failure a user can cause is one of these, with a message that says what to do.

The CLI turns them into a one-line message and a non-zero exit code (ManifestError included).
"""

from __future__ import annotations


class DitfError(Exception):
    """Base class of the runtime's own errors."""


class InputError(DitfError, ValueError):
    """An argument, array or image does not fit the model's contract."""


class ImageError(InputError):
    """An image file cannot be read, or is refused (corrupt, truncated, too many pixels)."""


class BackendError(DitfError, RuntimeError):
    """The requested backend, device or engine is unavailable or does not match this machine."""


class ManifestError(DitfError, ValueError):
    """The export folder or its manifest is missing, malformed or does not match its files."""


class DitfWarning(UserWarning):
    """Something works but deserves a look (e.g. a tiny image); the CLI prints it as one "warning: ..." line."""


class OutputError(DitfError, OSError):
    """An output cannot be written (disk full, read-only file system, no permission): the message names the
    path, the cause and the fix (files.write_failure). Still an OSError, for callers that catch those."""

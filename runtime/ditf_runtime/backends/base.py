"""The runner interface every backend shares (Polygraphy's BaseRunner, minus what we don't use).

A runner is a context manager: `activate` builds the session or engine context, `infer` checks
the feed against the graph's own metadata and then calls the backend's `_infer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BackendError, InputError


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None marks a dynamic axis

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {np.dtype(self.dtype).name} [{dims}]"


class BaseRunner:
    """Shared lifecycle and input checks; subclasses implement `_activate`, `_infer`, `_deactivate`."""

    backend = "base"

    def __init__(self) -> None:
        self.is_active = False

    def __enter__(self) -> "BaseRunner":
        self.activate()
        return self

    def __exit__(self, *exc_info) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def input_metadata(self) -> dict[str, TensorMeta]:
        self._require_active()
        return self._input_metadata()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feed` ({input name: array}); returns {output name: array}."""
        self._require_active()
        expected = self._input_metadata()
        if set(feed) != set(expected):
            raise InputError(f"feed has inputs {sorted(feed)}; the graph takes {sorted(expected)}")
        for name, meta in expected.items():
            check_tensor(feed[name], meta)
        return self._infer(feed)

    def _require_active(self) -> None:
        if not self.is_active:
            raise BackendError(f"{type(self).__name__} is not active: use it as a context manager or call activate()")

    # -- backend hooks ---------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _input_metadata(self) -> dict[str, TensorMeta]:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def check_tensor(array: np.ndarray, meta: TensorMeta) -> None:
    """Refuse a non-array, a wrong dtype, rank or static dimension, with the expected signature."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"input {meta.name!r} must be a numpy array, got {type(array).__name__}")
    if array.dtype != meta.dtype:
        raise InputError(
            f"input {meta.name!r} must be {np.dtype(meta.dtype).name}, got {array.dtype} ({meta.describe()})"
        )
    if array.ndim != len(meta.shape):
        raise InputError(f"input {meta.name!r} has shape {array.shape}; expected {meta.describe()}")
    for axis, (got, want) in enumerate(zip(array.shape, meta.shape)):
        if want is not None and got != want:
            raise InputError(f"input {meta.name!r} has {got} on axis {axis}; expected {meta.describe()}")

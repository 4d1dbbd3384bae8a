"""Backends: lazy loaders plus runners sharing one interface (see base.BaseRunner).

onnxruntime and tensorrt are imported inside the backend modules, only when a runner activates.
"""

from .base import BaseRunner, TensorMeta

__all__ = ["BaseRunner", "TensorMeta"]

"""ditf_export: turn a diffusion transformer into a shippable DiTF feature graph (ONNX + manifest)."""

__version__ = "0.1.0"

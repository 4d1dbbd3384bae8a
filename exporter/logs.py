"""Keep library chatter out of ditf's own progress lines."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Per-tensor progress bars, torchvision-absent warnings and exporter logs would bury our progress lines."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)

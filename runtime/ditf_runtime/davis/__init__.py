"""DAVIS-2017 label propagation (semi-supervised video object segmentation) with J&F scores.

`evaluate_davis(extractor, dataset)` runs the DINO / DiTF protocol on any extractor; the pieces
(sparse propagation, J and F, the layout reader, mask overlays) live in the submodules.
"""

from .evaluate import evaluate_davis, score_video
from .overlay import draw_mask_overlay
from .propagation import LabelPropagator, PropagationSettings, propagate
from .results import DavisResult

__all__ = [
    "evaluate_davis",
    "score_video",
    "DavisResult",
    "PropagationSettings",
    "LabelPropagator",
    "propagate",
    "draw_mask_overlay",
]

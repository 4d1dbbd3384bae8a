"""ditf-runtime: DiTF diffusion-transformer features from an exported ONNX graph, without torch.

    import ditf_runtime
    extractor = ditf_runtime.load("export/flux-k28")          # onnxruntime on the CPU
    src, trg = extractor.extract(["cat1.jpg", "cat2.jpg"])    # FeatureMaps, float32 [1, C, h, w]
    trg_xy = ditf_runtime.transfer_keypoints(src, trg, [[120, 80]])
    fused = ditf_runtime.load("export/flux-k28", "export/dinov2-base", weights=(0.5, 0.5))  # DiTF + DINOv2

Everything else (backends, preprocessing, storage, batch jobs) is importable from its module but
not part of the promised surface. `ditf_runtime.__version__` is the runtime's version.
"""

from ._version import __version__  # noqa: F401 - public attribute, not in __all__
from .davis import evaluate_davis
from .draw import draw_matches, pca_image
from .errors import DitfError
from .evaluate import evaluate, evaluate_ap10k
from .extractor import Extractor
from .features import FeatureMap
from .fusion import FusedExtractor
from .loading import load
from .manifest import ManifestError
from .matching import mutual_nn_matches, track_points, transfer_keypoints

__all__ = [
    "load",
    "Extractor",
    "FusedExtractor",
    "FeatureMap",
    "transfer_keypoints",
    "mutual_nn_matches",
    "track_points",
    "evaluate",
    "evaluate_ap10k",
    "evaluate_davis",
    "draw_matches",
    "pca_image",
    "DitfError",
    "ManifestError",
]

"""Massive-activation channels found from data (docs/DESIGN.md, "The feature"; DiTF's "channel discard").

For each calibration image, the raw feature h_K (ensemble mean, before discard and LayerNorm) gives per
channel c the median over tokens of |h_K[:, c]|; its ratio to the median of those medians over all
channels says how far c stands out. A channel is massive when its ratio, taken as the median over the
images, exceeds the threshold (the paper calls out > 100x). Numbers in numpy; the model runs in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .graph_io import GraphIO

DEFAULT_THRESHOLD = 100.0  # the paper: massive activations are > 100x the median channel


def channel_ratios(tokens: np.ndarray) -> np.ndarray:
    """tokens [N, C] (one image) -> [C]: median_n |h[n, c]| / median_c (median_n |h[n, c]|)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    if tokens.ndim != 2:
        raise ValueError(f"expected tokens [N, C], got shape {tokens.shape}")
    med = np.median(np.abs(tokens), axis=0)
    ref = np.median(med)
    if ref == 0.0:
        ref = np.finfo(np.float64).tiny  # a dead feature: every nonzero channel reads as huge, and says so
    return med / ref


@dataclass(frozen=True)
class MassiveChannels:
    """Detection result: the chosen channels, every channel's ratio, and how it was decided."""

    channels: tuple[int, ...]
    ratios: np.ndarray  # [C], median over images of the per-image ratio
    per_image: np.ndarray  # [images, C]
    threshold: float
    image_names: tuple[str, ...] = field(default=())

    def top(self, count: int = 10) -> list[tuple[int, float]]:
        order = np.argsort(-self.ratios, kind="stable")[:count]
        return [(int(c), float(self.ratios[c])) for c in order]

    def manifest_ratios(self, count: int = 8) -> dict[str, float]:
        """The chosen channels and the strongest others (the margin), for Feature.massive_channel_ratios."""
        top = self.top(max(count, len(self.channels)))
        return {str(c): round(r, 3) for c, r in top}

    def table(self, count: int = 10) -> str:
        lines = [f"{'channel':>8} {'ratio':>10} {'min':>10} {'max':>10}  (median |h| / median over channels; "
                 f"{len(self.per_image)} images)"]
        for c, r in self.top(count):
            col = self.per_image[:, c]
            mark = "  <- massive" if c in self.channels else ""
            lines.append(f"{c:>8} {r:>10.1f} {col.min():>10.1f} {col.max():>10.1f}{mark}")
        chosen = ",".join(map(str, self.channels)) or "none"
        lines.append(f"massive channels (ratio > {self.threshold:g}): {chosen}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "threshold": self.threshold, "images": list(self.image_names),
                "top": [{"channel": c, "ratio": r} for c, r in self.top(32)]}


def detect_from_tokens(token_sets: Iterable[np.ndarray], threshold: float = DEFAULT_THRESHOLD,
                       image_names: tuple[str, ...] = ()) -> MassiveChannels:
    """token_sets: one [N, C] array of raw h_K per image."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    per_image = np.stack([channel_ratios(t) for t in token_sets])
    if per_image.shape[0] == 0:
        raise ValueError("no images to detect massive channels from")
    ratios = np.median(per_image, axis=0)
    channels = tuple(int(c) for c in np.flatnonzero(ratios > threshold))
    return MassiveChannels(channels, ratios, per_image, float(threshold), tuple(image_names))


def detect_massive(raw_tokens: Callable[[Mapping[str, np.ndarray]], np.ndarray],
                   feeds: Iterable[Mapping[str, np.ndarray]], threshold: float = DEFAULT_THRESHOLD,
                   image_names: tuple[str, ...] = (), progress: Callable[[str], None] | None = None) -> MassiveChannels:
    """Run `raw_tokens(feed) -> [1, (F,) N, C]` (the feature graph before discard) over calibration feeds
    (one image or still clip each: the runtime's preprocessing and noise)."""
    sets = []
    for i, feed in enumerate(feeds):
        tokens = np.asarray(raw_tokens(feed))
        if tokens.ndim < 3 or tokens.shape[0] != 1:
            raise ValueError(f"raw tokens must be [1, (F,) N, C], got {tokens.shape}")
        sets.append(tokens.reshape(-1, tokens.shape[-1]))  # video: all frames' tokens together
        if progress is not None:
            progress(f"  image {i + 1}: {tokens.shape[1]} tokens")
    return detect_from_tokens(sets, threshold, image_names)


def torch_raw_tokens(graph, io: GraphIO) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """Adapter from ditf_export's FeatureGraph (torch; its inputs in io's order) to the numpy callable
    detect_massive takes."""
    import torch

    @torch.no_grad()
    def run(feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return graph.raw_tokens(*(torch.from_numpy(feed[name]) for name in io.input_names)).float().numpy()

    return run


def detect_for_graph(graph, io: GraphIO, images_dir, *, long_side: int, ensemble: int,
                     threshold: float = DEFAULT_THRESHOLD, seed: int = 0, max_images: int | None = None,
                     progress: Callable[[str], None] | None = None,
                     option: str = "--calib-images") -> MassiveChannels:
    """Calibration images -> the runtime's preprocessing and default noise, in the graph's layout `io`
    (video graphs: still clips of io.check_frames() frames) -> raw h_K -> massive channels."""
    from .data import load_calibration_set

    calib = load_calibration_set(images_dir, io=io, long_side=long_side, ensemble=ensemble, seed=seed,
                                 max_images=max_images, option=option)
    names = tuple(img.name for img in calib.images)
    return detect_massive(torch_raw_tokens(graph, io), calib.feeds(), threshold, names, progress)

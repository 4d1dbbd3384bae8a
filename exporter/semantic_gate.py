"""The semantic gate: a model that has learned something (flux-mini) is judged by ground-truth correspondence too.

Parity compares the exported graph with the PyTorch module; it cannot tell whether a precision that passes its
tolerances still finds the right parts. For a model trained by ditf (its source says what it was trained on),
the export draws held-out benchmark pairs (procedural creatures from a stream neither training nor the default
benchmark uses), computes ground-truth PCK@0.1 with the exact matcher of `ditf eval-spair` on the PyTorch
float32 features and on the graph's, and fails when the graph loses more than MAX_PCK_DROP of it.

The inputs are what the runtime feeds: the images at the export's size, its default noise per image.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

GATE_SEED = 2  # creature stream of the gate: not the training stream (0), not the default benchmark (1)
DEFAULT_PAIRS = 60
MAX_PCK_DROP = 0.01  # at most 1.0 PCK point below the float32 reference
ALPHA = 0.1


def semantic_input(plan, pairs: int = DEFAULT_PAIRS):
    """A parity input of the gate's pairs (one feed: all images, same size), or None for models that learned
    nothing ditf knows of."""
    from ditf_calib.graph_io import IMAGE, NOISE
    from ditf_runtime.manifest import Preprocess
    from ditf_runtime.noise import default_noise
    from ditf_runtime.preprocess import to_model_array
    from ditf_runtime.synthetic.benchmark import creature_pairs

    from .parity import ParityInput

    if not plan.source.trained_on or pairs <= 0:
        return None
    size = plan.image_size
    spec = Preprocess(long_side=size)
    images, noises = [], []
    for pair in creature_pairs(pairs, seed=GATE_SEED, size=size):
        for creature in (pair.source, pair.target):
            pixels = to_model_array(creature.image, (size, size), spec)
            images.append(pixels)
            noises.append(default_noise(pixels, plan.io.geometry, plan.ensemble))
    feed = {IMAGE: np.stack(images)}
    if plan.io.input(NOISE) is not None:
        feed[NOISE] = np.stack(noises)
    label = f"{pairs} held-out creature pairs (seed {GATE_SEED}) at {size}x{size}: ground-truth PCK@{ALPHA:g}"
    return ParityInput(label, (feed,), gates=True,
                       record={"semantic": {"benchmark": "creatures", "seed": GATE_SEED, "pairs": pairs,
                                            "size": size, "alpha": ALPHA}})


def pck_on_pairs(features: np.ndarray, setting: Mapping[str, Any]) -> tuple[float, int]:
    """Ground-truth PCK (per point) of maps [2 * pairs, C, h, w] laid out source, target, source, ..."""
    from ditf_runtime.matching import transfer_keypoints
    from ditf_runtime.synthetic.benchmark import creature_pairs

    size = int(setting["size"])
    hits = points = 0
    for pair in creature_pairs(int(setting["pairs"]), seed=int(setting["seed"]), size=size):
        ids = pair.shared
        if not ids:
            continue
        src = np.round(pair.source.keypoints[ids]).astype(np.int64).clip(0, size - 1)
        moved = transfer_keypoints(features[2 * pair.index], features[2 * pair.index + 1], src, (size, size),
                                   (size, size))
        x1, y1, x2, y2 = pair.target.bbox
        threshold = float(setting["alpha"]) * max(x2 - x1, y2 - y1)
        hits += int((np.linalg.norm(moved - pair.target.keypoints[ids], axis=1) <= threshold).sum())
        points += len(ids)
    return (hits / points if points else float("nan")), points


def judge(row: dict[str, Any], setting: Mapping[str, Any], candidate: np.ndarray, reference: np.ndarray) -> str:
    """Add the ground-truth PCK of both to the row and gate the row on it alone: it fails when the graph loses
    more than MAX_PCK_DROP. The row's cosine and error over every token of 2 x pairs images are reported, not
    gated (the precision's own tolerances gate its other rows). Returns the summary's addition."""
    ref_pck, points = pck_on_pairs(reference, setting)
    got_pck, _ = pck_on_pairs(candidate, setting)
    row["pck_truth"] = {"reference": round(ref_pck, 4), "graph": round(got_pck, 4), "points": points,
                        "max_drop": MAX_PCK_DROP}
    row["tolerance_passed"] = bool(row.get("passed"))  # reported beside the ground truth
    row["passed"] = bool(got_pck >= ref_pck - MAX_PCK_DROP)
    text = (f"; gated on ground truth only: PCK@{setting['alpha']:g} {100 * got_pck:.1f} vs float32 "
            f"{100 * ref_pck:.1f} ({points} points)")
    if not row["passed"]:
        failure = (f"ground-truth PCK@{setting['alpha']:g} {100 * got_pck:.1f} is more than "
                   f"{100 * MAX_PCK_DROP:.1f} point below the float32 reference's {100 * ref_pck:.1f}")
        row.setdefault("failures", []).append(failure)
        text += f" FAIL: {failure}"
    else:
        text += " PASS"
    return text

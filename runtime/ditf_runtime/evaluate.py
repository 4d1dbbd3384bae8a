"""PCK@alpha of an extractor's features on keypoint-pair datasets, with DiTF's protocol (the authors' eval_spair.py).

One loop for every dataset: a reader in datasets/ turns a layout into `Pair`s (the keypoints to
score, the two images, the threshold box), and `evaluate_pairs` scores them: features of each image,
the exact matcher (transfer_keypoints: bilinear upsampling to the image size, cosine, argmax), and a
keypoint is correct when its transferred position lies within alpha * the pair's threshold base
(max(height, width) of the target's bbox) of the annotation. Reported per image (mean over pairs of
each pair's fraction) and per point (pooled), as "All" (over all pairs) and "Mean" (mean of category
means). `evaluate` reads SPair-71k's layout, `evaluate_ap10k` AP-10K's benchmark (GeoAware-SC).

Annotations are in the files' pixel frame, so images are read WITHOUT EXIF rotation here,
whatever the extractor's default.

Resumable: with `out_dir`, each scored pair is appended to OUT/pairs.jsonl as it finishes (its
keypoints' distances over the threshold base, so another alpha needs no new features) next to a
run record OUT/ditf-pck.json (model, dataset, split, extraction options); a rerun skips the pairs
recorded there and refuses a folder made with another model or settings unless `overwrite`.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np

from .annotate import describe_run, described_lines
from .datasets.ap10k import ap10k_split, read_ap10k_pairs
from .datasets.pairs import Pair
from .datasets.spair import ANNOTATION_KEYS, SPAIR_LAYOUT, SPAIR_URL, read_spair_pairs, spair_image_path
from .errors import ImageError, InputError
from .manifest import write_text_atomic
from .matching import transfer_keypoints
from .preprocess import DEFAULT_MAX_PIXELS, open_image
from .run_records import extractor_record, refuse_other_settings

DEFAULT_ALPHA = 0.1
# Features kept for images still to come (maps needed soonest stay; an evicted map is recomputed, identically).
DEFAULT_CACHE_BYTES = 4 << 30
RUN_RECORD = "ditf-pck.json"
SCORES_FILE = "pairs.jsonl"

# SPair-71k's reader under the names this module has always had.
read_pairs = read_spair_pairs
image_path = spair_image_path
__all__ = ["ANNOTATION_KEYS", "SPAIR_LAYOUT", "SPAIR_URL", "Pair", "read_pairs", "image_path", "CategoryPck",
           "PckResult", "pck", "relative_distances", "evaluate", "evaluate_ap10k", "evaluate_pairs"]


@dataclass(frozen=True)
class CategoryPck:
    pairs: int
    points: int
    correct: int
    per_image: float  # mean over pairs of each pair's fraction correct
    per_point: float  # correct / points

    def to_dict(self) -> dict[str, float]:
        return dict(vars(self))


@dataclass(frozen=True)
class PckResult:
    """PCK@alpha; truthy when pairs were scored and `min_pck` (if given) is reached by All per image."""

    alpha: float
    categories: dict[str, CategoryPck]
    all_per_image: float
    all_per_point: float
    mean_per_image: float
    mean_per_point: float
    pairs: int
    points: int
    skipped_pairs: int = 0  # pairs without (usable) keypoints
    skipped_points: int = 0  # source keypoints annotated outside their image: not scored
    min_pck: float | None = None
    pair_pck: dict[str, float] = field(default_factory=dict, repr=False)  # annotation file name -> fraction
    resumed_pairs: int = 0  # pairs whose scores an earlier run recorded (out_dir), not computed again
    model: dict[str, Any] | None = None  # annotate.describe_run: what made these numbers (as a picture's caption)

    def __bool__(self) -> bool:
        return self.pairs > 0 and (self.min_pck is None or self.all_per_image >= self.min_pck)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alpha": self.alpha,
            "pairs": self.pairs,
            "points": self.points,
            "skipped_pairs": self.skipped_pairs,
            "skipped_points": self.skipped_points,
            "image": {
                "All": self.all_per_image,
                "Mean": self.mean_per_image,
                **{c: r.per_image for c, r in self.categories.items()},
            },
            "point": {
                "All": self.all_per_point,
                "Mean": self.mean_per_point,
                **{c: r.per_point for c, r in self.categories.items()},
            },
            "categories": {c: r.to_dict() for c, r in self.categories.items()},
        }

    def table(self) -> str:
        """Percentages like the authors' printout: per category, then All and Mean."""
        label = f"PCK@{self.alpha:g}"
        width = max([len("category")] + [len(c) for c in self.categories])
        lines = described_lines(self.model)
        lines.append(f"{'category':<{width}}  {'pairs':>6}  {'per image':>9}  {'per point':>9}   ({label}, %)")
        for name, cat in self.categories.items():
            lines.append(f"{name:<{width}}  {cat.pairs:>6}  {100 * cat.per_image:9.2f}  {100 * cat.per_point:9.2f}")
        lines.append(
            f"{'All':<{width}}  {self.pairs:>6}  {100 * self.all_per_image:9.2f}  {100 * self.all_per_point:9.2f}"
        )
        lines.append(f"{'Mean':<{width}}  {'':>6}  {100 * self.mean_per_image:9.2f}  {100 * self.mean_per_point:9.2f}")
        if self.skipped_pairs or self.skipped_points:
            lines.append(f"not scored: {self.skipped_pairs} pair(s) without keypoints, {self.skipped_points} "
                         "source keypoint(s) annotated outside their image")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def relative_distances(predicted: np.ndarray, truth: np.ndarray, threshold_base: float) -> np.ndarray:
    """Per point: its distance to the annotation over the threshold base (correct when <= alpha)."""
    distance = np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64), axis=1)
    return distance / threshold_base


def pck(predicted: np.ndarray, truth: np.ndarray, threshold_base: float, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Per point: distance <= alpha * threshold_base (the authors' `dist / threshold <= 0.1`)."""
    return relative_distances(predicted, truth, threshold_base) <= alpha


def evaluate(
    extractor: Any,
    dataset: str | os.PathLike,
    split: str = "test",
    *,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    min_pck: float | None = None,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    **extract_options: Any,
) -> PckResult:
    """PCK@alpha of `extractor` on an SPair-format dataset (`split`: PairAnnotation/<split>).

    `extractor` is anything with `extract(images, **extract_options) -> [features]` that takes a
    list of uint8 HxWx3 arrays and returns array-likes [1, C, h, w] or [C, h, w] (an Extractor, a
    FusedExtractor, or a stand-in in tests). `out_dir` makes the run resumable (module docstring);
    `cache_bytes` bounds the features kept for images still to come (`evaluate_pairs`).
    """
    _check_extractor(extractor)
    pairs = read_pairs(dataset, split, categories, limit)
    return evaluate_pairs(extractor, pairs, f"SPair-71k:{split}", alpha=alpha, min_pck=min_pck, progress=progress,
                          max_pixels=max_pixels, out_dir=out_dir, overwrite=overwrite, cache_bytes=cache_bytes,
                          **extract_options)


def evaluate_ap10k(
    extractor: Any,
    dataset: str | os.PathLike,
    subset: str = "intra-species",
    split: str = "test",
    *,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    min_pck: float | None = None,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    **extract_options: Any,
) -> PckResult:
    """PCK@alpha of `extractor` on AP-10K's benchmark as GeoAware-SC prepares it (datasets/ap10k.py).

    `subset`: intra-species (categories are species), cross-species (families) or cross-family
    (one category, "all"); `split`: test or val. Keypoints are scored when visible in both images;
    the rest is `evaluate`'s protocol, options and result.
    """
    _check_extractor(extractor)
    pairs = read_ap10k_pairs(dataset, subset, split, categories, limit)
    return evaluate_pairs(extractor, pairs, f"AP-10K:{ap10k_split(subset, split)}", alpha=alpha, min_pck=min_pck,
                          progress=progress, max_pixels=max_pixels, out_dir=out_dir, overwrite=overwrite,
                          cache_bytes=cache_bytes, **extract_options)


def _check_extractor(extractor: Any) -> None:
    if not hasattr(extractor, "extract"):
        raise InputError(f"evaluate() needs an object with an extract() method, got {type(extractor).__name__}")


def evaluate_pairs(
    extractor: Any,
    pairs: Sequence[Pair],
    dataset: str,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_pck: float | None = None,
    progress: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    **extract_options: Any,
) -> PckResult:
    """PCK@alpha of `extractor` on `pairs` (any reader's, in the order they are reported).

    `dataset` names where the pairs come from ("AP-10K:test_cross_species"): a resumed run must be
    of the same. Each image's features are computed once while they are needed again, within
    `cache_bytes` (beyond it, the map needed furthest ahead is dropped and recomputed when its turn
    comes: the same map, so the same result, only slower).
    """
    _check_extractor(extractor)
    with _ScoreLog.open(out_dir, _run_record(extractor, dataset, extract_options), overwrite) as log:
        pending = [p for p in pairs if len(p.src_kps) and not log.has(p)]
        resumed = sum(1 for p in pairs if len(p.src_kps)) - len(pending)
        features_of = _PairFeatures(extractor, pending, max_pixels, extract_options, cache_bytes)
        iterator: Any = pending
        if progress:
            from .progress import progress_bar

            desc = f"PCK@{alpha:g}" + (f" ({resumed} pairs resumed)" if resumed else "")
            iterator = progress_bar(pending, desc=desc, unit="pair")
        for index, pair in enumerate(iterator):
            log.add(pair, *_score_pair(pair, features_of, index))
        per_category: dict[str, list[tuple[int, int]]] = {}
        pair_pck: dict[str, float] = {}
        skipped, skipped_points = 0, 0
        for pair in pairs:
            if len(pair.src_kps) == 0:
                skipped += 1
                continue
            distances, outside = log.scores(pair)
            skipped_points += outside
            if len(distances) == 0:
                skipped += 1
                continue
            correct = distances <= alpha
            per_category.setdefault(pair.category, []).append((int(correct.sum()), len(correct)))
            pair_pck[pair.annotation.name] = float(correct.mean())
    return replace(_summarise(per_category, alpha, min_pck, skipped, pair_pck, skipped_points), resumed_pairs=resumed,
                   model=describe_run(extractor, size=extract_options.get("size"),
                                      ensemble=extract_options.get("ensemble")))


class _PairFeatures:
    """Features of the images of `pairs` (in the order they will be scored), each computed once while memory
    allows: a map is dropped after its last pair, and when the kept maps pass `budget` bytes the one needed
    furthest ahead goes first (Belady's rule: the fewest recomputations for a known order)."""

    def __init__(self, extractor: Any, pairs: Sequence[Pair], max_pixels: int | None,
                 extract_options: dict[str, Any], budget: int) -> None:
        self.extractor, self.max_pixels, self.extract_options, self.budget = (
            extractor, max_pixels, extract_options, budget)
        self.uses: dict[Path, deque[int]] = {}  # image -> the indices of the pairs still to use it
        for index, pair in enumerate(pairs):
            for path in (pair.src_image, pair.trg_image):
                self.uses.setdefault(path, deque()).append(index)
        self.kept: dict[Path, tuple[np.ndarray, tuple[int, int]]] = {}
        self.kept_bytes = 0

    def __call__(self, index: int, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        """(features, image (height, width)) of `path` for pair number `index`."""
        entry = self.kept.pop(path, None)
        if entry is None:
            # Read here without EXIF rotation: the annotations use the file's pixel frame.
            image = np.asarray(open_image(path, exif_transpose=False, max_pixels=self.max_pixels))
            features = np.asarray(self.extractor.extract([image], **self.extract_options)[0], dtype=np.float32)
            entry = (features, image.shape[:2])
        else:
            self.kept_bytes -= entry[0].nbytes
        uses = self.uses.get(path, deque())
        while uses and uses[0] <= index:
            uses.popleft()
        if uses:
            self.kept[path] = entry
            self.kept_bytes += entry[0].nbytes
            while self.kept_bytes > self.budget and self.kept:
                furthest = max(self.kept, key=lambda p: self.uses[p][0])
                self.kept_bytes -= self.kept.pop(furthest)[0].nbytes
        return entry


def _score_pair(pair: Pair, features_of: _PairFeatures, index: int) -> tuple[np.ndarray, int]:
    """Per keypoint of one pair: its transferred position's distance to the annotation over the threshold
    base; and how many keypoints were left out because the annotation puts them outside the source image."""
    try:
        src_features, src_size = features_of(index, pair.src_image)
        # An image matched with itself is read once (the cache lets a map go after its last pair).
        trg_features, trg_size = (src_features, src_size) if pair.trg_image == pair.src_image \
            else features_of(index, pair.trg_image)
    except ImageError as exc:  # a missing or unreadable image: say which pair needs it
        raise ImageError(f"{pair.annotation}: {exc}") from exc
    for annotated, actual, image in (
        (pair.src_imsize, src_size, pair.src_image),
        (pair.trg_imsize, trg_size, pair.trg_image),
    ):
        if annotated is not None and tuple(annotated) != tuple(actual):
            raise InputError(f"{pair.annotation}: {image.name} is {actual} (h, w) but annotated as {annotated}")
    # A source keypoint outside its image cannot be looked up: skip it (and count it). A target keypoint
    # outside is still a ground truth to measure the distance to, as in the authors' evaluation.
    inside = _inside(pair.src_kps, src_size)
    src_kps, trg_kps = pair.src_kps[inside], pair.trg_kps[inside]
    try:
        predicted = transfer_keypoints(src_features, trg_features, src_kps, src_size, trg_size)
    except InputError as exc:
        raise InputError(f"{pair.annotation}: {exc}") from exc
    return relative_distances(predicted, trg_kps, pair.threshold_base), int((~inside).sum())


def _inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per (x, y): inside an image of (height, width) pixels."""
    height, width = size
    return (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)


# -- resuming: OUT/ditf-pck.json (what the scores depend on) and OUT/pairs.jsonl (one scored pair a line) --


def _run_record(extractor: Any, dataset: str, extract_options: dict[str, Any]) -> dict[str, Any]:
    """What a pair's score depends on besides its annotation (alpha does not: distances are recorded)."""
    model = extractor_record(extractor)
    options = {k: v for k, v in sorted(extract_options.items()) if k != "noise"}
    return json.loads(json.dumps({"dataset": dataset, "model": model, "extract_options": options,
                                  "matcher": "exact bilinear cosine argmax", "exif_transpose": False}))


class _ScoreLog:
    """Each pair's relative distances and outside-count: kept in memory, and appended to OUT/pairs.jsonl as it
    is scored when the run has an OUT folder. Appending one line a pair (flushed and synced) keeps a crash's
    loss to the pair being written; a torn last line is cut off when the log is reopened."""

    def __init__(self, done: dict[str, dict[str, Any]], file: IO[str] | None) -> None:
        self.done, self.file = done, file

    @classmethod
    def open(cls, out_dir: str | os.PathLike | None, record: dict[str, Any], overwrite: bool) -> "_ScoreLog":
        if out_dir is None:
            return cls({}, None)
        folder = Path(out_dir)
        record_path, scores_path = folder / RUN_RECORD, folder / SCORES_FILE
        refuse_other_settings(record_path, record, overwrite, holds="PCK scores", unit="pair")
        folder.mkdir(parents=True, exist_ok=True)
        if overwrite or not record_path.is_file():
            scores_path.unlink(missing_ok=True)
        write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")
        done = _read_scores(scores_path)
        return cls(done, scores_path.open("a", encoding="utf-8"))

    def __enter__(self) -> "_ScoreLog":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.file is not None:
            self.file.close()

    def has(self, pair: Pair) -> bool:
        """Scored already, for this very pair (same category, same number of keypoints)."""
        entry = self.done.get(pair.annotation.name)
        return (entry is not None and entry["category"] == pair.category
                and len(entry["distances"]) + entry["outside"] == len(pair.src_kps))

    def add(self, pair: Pair, distances: np.ndarray, outside: int) -> None:
        entry = {"pair": pair.annotation.name, "category": pair.category,
                 "distances": [float(d) for d in distances], "outside": int(outside)}
        self.done[pair.annotation.name] = entry
        if self.file is not None:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())

    def scores(self, pair: Pair) -> tuple[np.ndarray, int]:
        entry = self.done[pair.annotation.name]
        return np.asarray(entry["distances"], dtype=np.float64), entry["outside"]


def _read_scores(path: Path) -> dict[str, dict[str, Any]]:
    """The pairs recorded in `path`; a torn last line (a crash while writing it) is cut off the file."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as file:
            file.truncate(len(complete))
    done: dict[str, dict[str, Any]] = {}
    for line in complete.decode("utf-8").splitlines():
        try:
            entry = json.loads(line)
            done[str(entry["pair"])] = {"category": str(entry["category"]), "distances": list(entry["distances"]),
                                        "outside": int(entry["outside"])}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # not a line this log writes: that pair is scored again
    return done


def _summarise(per_category, alpha, min_pck, skipped, pair_pck, skipped_points=0) -> PckResult:
    categories = {}
    all_fractions: list[float] = []
    all_correct = all_points = 0
    for name, counts in per_category.items():
        fractions = [c / n for c, n in counts]
        correct = sum(c for c, _ in counts)
        points = sum(n for _, n in counts)
        categories[name] = CategoryPck(len(counts), points, correct, float(np.mean(fractions)), correct / points)
        all_fractions.extend(fractions)
        all_correct += correct
        all_points += points
    if not categories:
        raise InputError("no pair had keypoints to score")
    return PckResult(
        alpha=alpha,
        categories=categories,
        all_per_image=float(np.mean(all_fractions)),
        all_per_point=all_correct / all_points,
        mean_per_image=float(np.mean([c.per_image for c in categories.values()])),
        mean_per_point=float(np.mean([c.per_point for c in categories.values()])),
        pairs=len(all_fractions),
        points=all_points,
        skipped_pairs=skipped,
        skipped_points=skipped_points,
        min_pck=min_pck,
        pair_pck=pair_pck,
    )

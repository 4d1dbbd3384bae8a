"""PCK@alpha on a dataset in SPair-71k's layout, with the authors' protocol (eval_spair.py).

Layout: ROOT/PairAnnotation/<split>/*.json (src_imname, trg_imname, category, src_kps, trg_kps,
trg_bndbox [x1, y1, x2, y2], optionally src_imsize/trg_imsize [w, h, c]) and
ROOT/JPEGImages/<category>/<imname>. A keypoint is correct when its transferred position lies
within alpha * max(bbox height, bbox width) of the annotation. Reported per image (mean over
pairs of each pair's fraction) and per point (pooled), as "All" (over all pairs) and "Mean"
(mean of category means).

Annotations are in the files' pixel frame, so images are read WITHOUT EXIF rotation here,
whatever the extractor's default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .matching import transfer_keypoints
from .preprocess import DEFAULT_MAX_PIXELS, open_image

DEFAULT_ALPHA = 0.1
ANNOTATION_KEYS = ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox")
SPAIR_URL = "https://cvlab.postech.ac.kr/research/SPair-71k/"
SPAIR_LAYOUT = f"""SPair-71k's layout (from SPair-71k.tar.gz, {SPAIR_URL}):
  ROOT/PairAnnotation/<split>/*.json    one pair per file; splits trn, val, test
  ROOT/JPEGImages/<category>/*.jpg      e.g. JPEGImages/aeroplane/2008_000033.jpg
  (ImageAnnotation/, Layout/, Segmentation/ may be there too; they are not read)"""


@dataclass(frozen=True)
class Pair:
    """One annotated image pair."""

    annotation: Path
    category: str
    src_name: str
    trg_name: str
    src_kps: np.ndarray  # [N, 2] pixel (x, y)
    trg_kps: np.ndarray
    trg_bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    src_imsize: tuple[int, int] | None  # (height, width) as annotated
    trg_imsize: tuple[int, int] | None

    @property
    def threshold_base(self) -> float:
        x1, y1, x2, y2 = self.trg_bbox
        return max(y2 - y1, x2 - x1)


def read_pairs(
    root: str | os.PathLike,
    split: str = "test",
    categories: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Pair]:
    """Pairs of one split, sorted by category then file name; `limit` caps pairs per category."""
    root = Path(root)
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        splits = sorted(p.name for p in (root / "PairAnnotation").iterdir() if p.is_dir()) \
            if (root / "PairAnnotation").is_dir() else []
        found = f"; this dataset has splits {', '.join(splits)} (--split)" if splits else ""
        raise InputError(f"{folder} not found{found}. Expected {SPAIR_LAYOUT}")
    if not (root / "JPEGImages").is_dir():
        raise InputError(f"{root / 'JPEGImages'} not found. Expected {SPAIR_LAYOUT}")
    pairs = [_read_pair(path) for path in sorted(folder.glob("*.json"))]
    if categories is not None:
        wanted = set(categories)
        unknown = wanted - {p.category for p in pairs}
        if unknown:
            raise InputError(f"no pairs of categories {sorted(unknown)} in {folder}")
        pairs = [p for p in pairs if p.category in wanted]
    pairs.sort(key=lambda p: (p.category, p.annotation.name))
    if limit is not None:
        kept: dict[str, int] = {}
        limited = []
        for pair in pairs:
            if kept.get(pair.category, 0) < limit:
                kept[pair.category] = kept.get(pair.category, 0) + 1
                limited.append(pair)
        pairs = limited
    if not pairs:
        raise InputError(f"no pair annotations in {folder}")
    return pairs


def _read_pair(path: Path) -> Pair:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable pair annotation ({exc})") from exc
    missing = [k for k in ANNOTATION_KEYS if k not in data]
    if missing:
        raise InputError(f"{path}: missing keys {missing}")
    src_kps = np.asarray(data["src_kps"], dtype=np.float64).reshape(-1, 2)
    trg_kps = np.asarray(data["trg_kps"], dtype=np.float64).reshape(-1, 2)
    if src_kps.shape != trg_kps.shape:
        raise InputError(f"{path}: {len(src_kps)} source but {len(trg_kps)} target keypoints")
    bbox = tuple(float(v) for v in data["trg_bndbox"])
    if len(bbox) != 4:
        raise InputError(f"{path}: trg_bndbox must be [x1, y1, x2, y2]")

    def imsize(key):
        value = data.get(key)
        return None if value is None else (int(value[1]), int(value[0]))  # annotated [w, h, c]

    return Pair(
        path,
        str(data["category"]),
        str(data["src_imname"]),
        str(data["trg_imname"]),
        src_kps,
        trg_kps,
        bbox,
        imsize("src_imsize"),
        imsize("trg_imsize"),
    )


def image_path(root: str | os.PathLike, category: str, name: str) -> Path:
    path = Path(root) / "JPEGImages" / category / name
    return path if Path(name).suffix else path.with_suffix(".jpg")


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

    def __bool__(self) -> bool:
        return self.pairs > 0 and (self.min_pck is None or self.all_per_image >= self.min_pck)

    def to_dict(self) -> dict[str, Any]:
        return {
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
        lines = [f"{'category':<{width}}  {'pairs':>6}  {'per image':>9}  {'per point':>9}   ({label}, %)"]
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


def pck(predicted: np.ndarray, truth: np.ndarray, threshold_base: float, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Per point: distance <= alpha * threshold_base (the authors' `dist / threshold <= 0.1`)."""
    distance = np.linalg.norm(np.asarray(predicted, np.float64) - np.asarray(truth, np.float64), axis=1)
    return distance / threshold_base <= alpha


class _CategoryFeatures:
    """Each image's features computed once; dropped when the category changes (bounds memory)."""

    def __init__(self, extractor: Any, root: Path, max_pixels: int | None, extract_options: dict[str, Any]) -> None:
        self.extractor, self.root, self.max_pixels, self.extract_options = extractor, root, max_pixels, extract_options
        self.category: str | None = None
        self.cache: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}

    def __call__(self, category: str, name: str) -> tuple[np.ndarray, tuple[int, int]]:
        """(features, image (height, width)) of one image."""
        if category != self.category:
            self.cache.clear()
            self.category = category
        if name not in self.cache:
            # Read here without EXIF rotation: the annotations use the file's pixel frame.
            path = image_path(self.root, category, name)
            image = np.asarray(open_image(path, exif_transpose=False, max_pixels=self.max_pixels))
            features = np.asarray(self.extractor.extract([image], **self.extract_options)[0], dtype=np.float32)
            self.cache[name] = (features, image.shape[:2])
        return self.cache[name]


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
    **extract_options: Any,
) -> PckResult:
    """PCK@alpha of `extractor` on an SPair-format dataset.

    `extractor` is anything with `extract(images, **extract_options) -> [features]` that takes a
    list of uint8 HxWx3 arrays and returns array-likes [1, C, h, w] or [C, h, w] (an Extractor,
    or a stand-in in tests). Each image's features are computed once per category; the cache is
    dropped when the category changes, which bounds memory to one category's images.
    """
    if not hasattr(extractor, "extract"):
        raise InputError(f"evaluate() needs an object with an extract() method, got {type(extractor).__name__}")
    root = Path(dataset)
    pairs = read_pairs(root, split, categories, limit)
    features_of = _CategoryFeatures(extractor, root, max_pixels, extract_options)
    per_category: dict[str, list[tuple[int, int]]] = {}
    pair_pck: dict[str, float] = {}
    skipped, skipped_points = 0, 0
    iterator: Any = pairs
    if progress:
        from .progress import progress_bar

        iterator = progress_bar(pairs, desc=f"PCK@{alpha:g}", unit="pair")
    for pair in iterator:
        if len(pair.src_kps) == 0:
            skipped += 1
            continue
        correct, outside = _score_pair(pair, features_of, alpha)
        skipped_points += outside
        if len(correct) == 0:
            skipped += 1
            continue
        per_category.setdefault(pair.category, []).append((int(correct.sum()), len(correct)))
        pair_pck[pair.annotation.name] = float(correct.mean())
    return _summarise(per_category, alpha, min_pck, skipped, pair_pck, skipped_points)


def _score_pair(pair: Pair, features_of: _CategoryFeatures, alpha: float) -> tuple[np.ndarray, int]:
    """Per keypoint of one pair: transferred within alpha * threshold_base of the annotation; and how many
    keypoints were left out because the annotation puts them outside the source image."""
    src_features, src_size = features_of(pair.category, pair.src_name)
    trg_features, trg_size = features_of(pair.category, pair.trg_name)
    for annotated, actual, name in (
        (pair.src_imsize, src_size, pair.src_name),
        (pair.trg_imsize, trg_size, pair.trg_name),
    ):
        if annotated is not None and tuple(annotated) != tuple(actual):
            raise InputError(f"{pair.annotation}: {name} is {actual} (h, w) but annotated as {annotated}")
    # A source keypoint outside its image cannot be looked up: skip it (and count it). A target keypoint
    # outside is still a ground truth to measure the distance to, as in the authors' evaluation.
    inside = _inside(pair.src_kps, src_size)
    src_kps, trg_kps = pair.src_kps[inside], pair.trg_kps[inside]
    try:
        predicted = transfer_keypoints(src_features, trg_features, src_kps, src_size, trg_size)
    except InputError as exc:
        raise InputError(f"{pair.annotation}: {exc}") from exc
    return pck(predicted, trg_kps, pair.threshold_base, alpha), int((~inside).sum())


def _inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per (x, y): inside an image of (height, width) pixels."""
    height, width = size
    return (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)


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

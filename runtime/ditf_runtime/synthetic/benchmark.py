"""A correspondence benchmark of procedural creatures, written in SPair-71k's layout.

`ditf eval-spair OUT --model EXPORT` runs it unchanged. Each pair is two different creatures of one
category (two independent draws: other colours, texture, proportions, pose, place, facing, background),
never an augmented copy; keypoints are listed where they are visible in both images, as SPair-71k does.

    OUT/JPEGImages/<category>/<seed>-<index>.png     the images (lossless)
    OUT/ImageAnnotation/<category>/<seed>-<index>.json  every keypoint with its visibility, bbox, facing
    OUT/PairAnnotation/test/<pair>:<category>.json   src_imname, trg_imname, src_kps, trg_kps, kps_ids,
                                                     src_bndbox, trg_bndbox, src_imsize, trg_imsize
    OUT/benchmark.json                               generator version, seed, size, counts, keypoint names
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from ..files import staged_folder
from ..progress import progress_bar
from .creatures import CATEGORIES, GENERATOR_VERSION, KEYPOINTS, TRAIN_SEED, Creature, draw

DEFAULT_PAIRS = 200
DEFAULT_SEED = 1
DEFAULT_SIZE = 192  # flux-mini's training size
KINDS = ("creatures",)


@dataclass(frozen=True)
class CreaturePair:
    index: int
    category: str
    source: Creature
    target: Creature
    source_name: str
    target_name: str

    @property
    def shared(self) -> list[int]:
        """Keypoint ids visible in both images."""
        return [k for k in range(len(KEYPOINTS[self.category])) if self.source.visible[k] and self.target.visible[k]]


def check_seed(seed: int) -> int:
    if int(seed) == TRAIN_SEED:
        raise InputError(f"seed {TRAIN_SEED} is the stream flux-mini was trained on: a benchmark drawn from it would "
                         "test memory, not correspondence; pick another --seed (default 1)")
    if int(seed) < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    return int(seed)


def creature_pairs(pairs: int = DEFAULT_PAIRS, seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE,
                   categories: tuple[str, ...] = CATEGORIES) -> Iterator[CreaturePair]:
    """`pairs` pairs, categories in turn; pair i is images 2i and 2i+1 of stream `seed`."""
    seed = check_seed(seed)
    if pairs < 1:
        raise InputError(f"--pairs must be >= 1, got {pairs}")
    if not 64 <= size <= 1024:
        raise InputError(f"--size must be between 64 and 1024 pixels, got {size}")
    for i in range(pairs):
        category = categories[i % len(categories)]
        a, b = 2 * i, 2 * i + 1
        yield CreaturePair(i, category, draw(seed, a, size, category), draw(seed, b, size, category),
                           f"{seed}-{a:05d}.png", f"{seed}-{b:05d}.png")


def _image_record(c: Creature) -> dict:
    return {"category": c.category, "facing": c.facing, "bbox": [round(v, 2) for v in c.bbox],
            "imsize": [c.image.width, c.image.height, 3],
            "keypoints": {name: {"xy": [round(float(x), 2), round(float(y), 2)], "visible": bool(v)}
                          for name, (x, y), v in zip(KEYPOINTS[c.category], c.keypoints, c.visible)}}


def write_benchmark(out: str | os.PathLike, kind: str = "creatures", pairs: int = DEFAULT_PAIRS,
                    seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE, progress: bool = True) -> Path:
    """Write the benchmark folder atomically (a half-written one never stands at `out`)."""
    if kind not in KINDS:
        raise InputError(f"unknown benchmark {kind!r}; available: {', '.join(KINDS)}")
    out = Path(out)
    counts: dict[str, int] = {}
    points = 0
    items = creature_pairs(pairs, seed, size)  # checks the arguments before anything is written
    with staged_folder(out) as tmp:
        bar = progress_bar(total=pairs, desc="drawing benchmark pairs", unit="pair",
                           file=None if progress else open(os.devnull, "w"))
        for pair in items:
            for creature, name in ((pair.source, pair.source_name), (pair.target, pair.target_name)):
                (tmp / "JPEGImages" / pair.category).mkdir(parents=True, exist_ok=True)
                (tmp / "ImageAnnotation" / pair.category).mkdir(parents=True, exist_ok=True)
                creature.image.save(tmp / "JPEGImages" / pair.category / name)
                (tmp / "ImageAnnotation" / pair.category / name.replace(".png", ".json")).write_text(
                    json.dumps(_image_record(creature)))
            ids = pair.shared
            record = {
                "pair_id": pair.index, "category": pair.category, "src_imname": pair.source_name,
                "trg_imname": pair.target_name, "kps_ids": ids,
                "kps_names": [KEYPOINTS[pair.category][k] for k in ids],
                # integer pixels, as SPair-71k annotates them (and as eval-spair's matcher takes them)
                "src_kps": [[int(round(float(v))) for v in pair.source.keypoints[k]] for k in ids],
                "trg_kps": [[int(round(float(v))) for v in pair.target.keypoints[k]] for k in ids],
                "src_bndbox": [round(v, 2) for v in pair.source.bbox], "trg_bndbox": [round(v, 2) for v in pair.target.bbox],
                "src_imsize": [size, size, 3], "trg_imsize": [size, size, 3],
                "src_facing": pair.source.facing, "trg_facing": pair.target.facing,
            }
            (tmp / "PairAnnotation" / "test").mkdir(parents=True, exist_ok=True)
            (tmp / "PairAnnotation" / "test" / f"{pair.index:05d}:{pair.category}.json").write_text(json.dumps(record))
            counts[pair.category] = counts.get(pair.category, 0) + 1
            points += len(ids)
            bar.update(1)
        bar.close()
        (tmp / "benchmark.json").write_text(json.dumps({
            "kind": kind, "generator_version": GENERATOR_VERSION, "seed": seed, "size": size, "pairs": pairs,
            "pairs_per_category": counts, "keypoints_in_pairs": points, "keypoint_names": KEYPOINTS,
            "train_seed_never_used": TRAIN_SEED,
        }, indent=2) + "\n")
    return out

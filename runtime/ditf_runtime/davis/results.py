"""Scores of a DAVIS run: per object J and F over the scored frames, summarised like the official tables."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..annotate import described_lines
from .metrics import statistics

MEASURES = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectScore:
    """One object of one video: J and F per scored frame (all frames but the first and the last)."""

    video: str
    object_id: int
    j: np.ndarray
    f: np.ndarray

    @property
    def j_stats(self) -> tuple[float, float, float]:
        return statistics(self.j)

    @property
    def f_stats(self) -> tuple[float, float, float]:
        return statistics(self.f)


@dataclass(frozen=True)
class VideoSummary:
    name: str
    frames: int
    objects: int
    j_mean: float  # mean over the video's objects of each object's mean J
    f_mean: float
    resumed: bool  # masks found from an earlier run, not recomputed

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2


@dataclass(frozen=True)
class DavisResult:
    """J&F of a label-propagation run; truthy when at least one object was scored.

    Means, recalls and decays are over all objects of all scored videos, as in the official
    global table (J&F-Mean = (J-Mean + F-Mean) / 2). `unscored` names videos that were propagated
    but lack the ground truth to score them (e.g. a test split).
    """

    objects: list[ObjectScore]
    videos: list[VideoSummary]
    settings: dict[str, Any]
    out_dir: str | None = None
    unscored: list[str] = field(default_factory=list)
    model: dict[str, Any] | None = None  # annotate.describe_run: what made these masks (as a picture's caption)

    def __bool__(self) -> bool:
        return bool(self.objects)

    def measures(self) -> dict[str, float]:
        if not self.objects:
            return {name: math.nan for name in MEASURES}
        j = np.array([o.j_stats for o in self.objects])
        f = np.array([o.f_stats for o in self.objects])
        jm, jr, jd = (float(v) for v in j.mean(axis=0))
        fm, fr, fd = (float(v) for v in f.mean(axis=0))
        values = ((jm + fm) / 2, jm, jr, jd, fm, fr, fd)
        return dict(zip(MEASURES, values))

    @property
    def jf_mean(self) -> float:
        return self.measures()["J&F-Mean"]

    @property
    def j_mean(self) -> float:
        return self.measures()["J-Mean"]

    @property
    def f_mean(self) -> float:
        return self.measures()["F-Mean"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "measures": self.measures(),
            "videos": [
                {"video": v.name, "frames": v.frames, "objects": v.objects, "J&F-Mean": v.jf_mean,
                 "J-Mean": v.j_mean, "F-Mean": v.f_mean, "resumed": v.resumed}
                for v in self.videos
            ],  # fmt: skip
            "objects": [
                {
                    "video": o.video,
                    "object": o.object_id,
                    **dict(zip(("J-Mean", "J-Recall", "J-Decay"), o.j_stats)),
                    **dict(zip(("F-Mean", "F-Recall", "F-Decay"), o.f_stats)),
                    "J": [round(float(v), 6) for v in o.j],
                    "F": [round(float(v), 6) for v in o.f],
                }
                for o in self.objects
            ],
            "unscored": list(self.unscored),
            "settings": dict(self.settings),
            "out_dir": self.out_dir,
        }

    def table(self) -> str:
        """Per-video rows (means over each video's objects), then the global measures, in %."""
        width = max([len("video")] + [len(v.name) for v in self.videos])
        lines = described_lines(self.model)
        lines.append(f"{'video':<{width}}  {'frames':>6}  {'objects':>7}  {'J&F':>6}  {'J':>6}  {'F':>6}")
        for v in self.videos:
            lines.append(
                f"{v.name:<{width}}  {v.frames:>6}  {v.objects:>7}  {100 * v.jf_mean:6.2f}  "
                f"{100 * v.j_mean:6.2f}  {100 * v.f_mean:6.2f}" + ("  (resumed)" if v.resumed else "")
            )
        for name in self.unscored:
            lines.append(f"{name:<{width}}  not scored: frames 1..n-2 lack annotations (or n < 3)")
        measures = self.measures()
        lines.append("")
        lines.append("  ".join(f"{name:>8}" for name in MEASURES))
        lines.append("  ".join(f"{100 * measures[name]:8.2f}" for name in MEASURES))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

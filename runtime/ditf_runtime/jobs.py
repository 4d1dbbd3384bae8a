"""Batch extraction into a folder: images and folders in, one feature file per image out.

One implementation for `ditf extract`, Ray (ray_extract.py) and the serving client
(serving/client.py), so all three write the same files in the same layout:

- `collect_jobs`: (image, output) pairs; a folder keeps its structure (IN/a/b.jpg -> OUT/a/b.safetensors).
- The run record OUT/ditf-extract.json says what the folder's features depend on
  (`ExtractSettings.record`): a rerun with another model or other settings is refused unless
  `overwrite`, so a folder never mixes features of two kinds.
- Resuming: outputs that exist are skipped. Writes are atomic (storage.py), so an existing
  output is a complete one.
- `extract_chunk`: one bad image spoils its batch, so a failed batch is redone one image at a
  time and only the images that fail alone are reported; the rest are written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import ImageError, InputError
from .files import check_free_space, free_bytes, write_failure
from .extractor import Extractor
from .features import FeatureMap
from .fusion import RECIPE, FusedExtractor, FusedParts, check_weights
from .manifest import MODEL_FILE, NOISE_INPUT, Manifest, write_text_atomic
from .preprocess import IMAGE_SUFFIXES, model_size
from .storage import output_suffix, save_features

RUN_RECORD = "ditf-extract.json"

# What became of one job (progress callbacks and Ray's status rows).
DONE, FAILED, SKIPPED = "done", "failed", "skipped"

# The run-record fields every feature file also carries in its own metadata (fused runs: "models" and
# "weights" instead of the per-model ones).
FILE_FIELDS = ("model_name", "precision", "layer", "timestep", "ensemble", "seed", "random_weights", "trained_on")
FUSED_FILE_FIELDS = ("models", "weights", "seed")

Progress = Callable[[str, str, str], None]  # (output path, status, message), as each job finishes


@dataclass(frozen=True)
class Job:
    image: Path
    output: Path


def as_export_dirs(export_dirs: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Path, ...]:
    """One export folder, or the two of a fused run, as a tuple of paths."""
    if isinstance(export_dirs, (str, os.PathLike)):
        return (Path(export_dirs),)
    return tuple(Path(d) for d in export_dirs)


@dataclass(frozen=True)
class ExtractSettings:
    """How every image of a batch run is extracted and written.

    A fused run (two exports) stores both models' maps and `weights` in each file (storage.py says why);
    its `size` is None or one long side per model.
    """

    size: int | tuple[int | None, ...] | None = None  # long side (default: the manifest's)
    ensemble: int | None = None  # noise draws per image (default: the manifest's)
    seed: int = 0
    fmt: str = "safetensors"  # or "npy"
    exif_transpose: bool = True
    overwrite: bool = False  # recompute outputs that exist, and accept another run record
    weights: tuple[float, ...] | None = None  # fused runs: one weight per export (default 0.5 / 0.5)

    @property
    def suffix(self) -> str:
        return output_suffix(self.fmt)

    def record(self, manifests: Manifest | Sequence[Manifest]) -> dict[str, Any]:
        """What an output folder's features depend on: its ditf-extract.json."""
        manifests = (manifests,) if isinstance(manifests, Manifest) else tuple(manifests)
        if len(manifests) == 1:
            return {**self._model_record(manifests[0], self.size), "seed": self.seed,
                    "exif_transpose": self.exif_transpose, "format": self.fmt}
        if self.fmt != "safetensors":
            raise InputError("fused features are stored as safetensors (both maps and their weights in one file); "
                             "use --format safetensors")
        # None (each manifest's), one long side for both, or one per model
        sizes = tuple(self.size) if isinstance(self.size, (tuple, list)) else (self.size,) * len(manifests)
        return {
            "models": [self._model_record(m, size) for m, size in zip(manifests, sizes)],
            "weights": list(check_weights(self.weights, len(manifests))),
            "fusion": RECIPE,
            "seed": self.seed,
            "exif_transpose": self.exif_transpose,
            "format": self.fmt,
        }

    def _model_record(self, manifest: Manifest, size: int | None) -> dict[str, Any]:
        noisy = any(spec.name == NOISE_INPUT for spec in manifest.inputs)
        record = {
            "model_name": manifest.model_name,
            "model_sha256": manifest.files.get(MODEL_FILE, {}).get("sha256"),
            "precision": manifest.precision,
            "layer": manifest.feature.layer,
            "timestep": manifest.feature.timestep,
            "size": size or manifest.preprocess.long_side,
            "ensemble": (self.ensemble or manifest.feature.ensemble) if noisy else manifest.feature.ensemble,
        }
        if manifest.random_weights:  # built-in test models: their files' pictures say so (ditf show)
            record["random_weights"] = True
        if manifest.trained_on:  # flux-mini: what the weights learned from
            record["trained_on"] = manifest.trained_on
        return record

    def extract(self, extractor: Extractor | FusedExtractor, images: list[Path]) -> list[FeatureMap | FusedParts]:
        if isinstance(extractor, FusedExtractor):  # both maps and the weights: what fused files store
            return extractor.extract_parts(images, self.size, self.ensemble, self.seed,
                                           exif_transpose=self.exif_transpose)
        return extractor.extract(images, self.size, self.ensemble, self.seed, exif_transpose=self.exif_transpose)


@dataclass(frozen=True)
class FolderPlan:
    """A batch run into one folder whose run record has been checked and written."""

    out_dir: Path
    jobs: tuple[Job, ...]
    pending: tuple[Job, ...]  # the jobs whose output does not exist yet (all of them with overwrite)
    record: dict[str, Any]

    @property
    def done(self) -> int:
        return len(self.jobs) - len(self.pending)

    @property
    def metadata(self) -> dict[str, Any]:
        """What each feature file records of the run, besides its source image."""
        keys = FUSED_FILE_FIELDS if "models" in self.record else FILE_FIELDS
        return {key: self.record[key] for key in keys if key in self.record}


@dataclass(frozen=True)
class FolderReport:
    total: int
    skipped: int  # already there before this run
    written: int
    failed: tuple[str, ...]  # why each image that could not be extracted failed


def collect_jobs(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, suffix: str) -> list[Job]:
    """One job per image: INPUTS are image files and folders (searched recursively)."""
    out_dir = Path(out_dir)
    jobs: list[Job] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            # Keep the folder structure: IN/a/b.jpg -> OUT/a/b.safetensors
            jobs += [Job(p, out_dir / p.relative_to(item).with_suffix(suffix)) for p in images]
        elif item.is_file():
            jobs.append(Job(item, out_dir / (item.stem + suffix)))
        else:
            raise InputError(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.output in seen and seen[job.output] != job.image:
            raise InputError(
                f"{seen[job.output]} and {job.image} would both write {job.output}; extract them separately"
            )
        seen[job.output] = job.image
    return list({job.output: job for job in jobs}.values())


def pending_jobs(jobs: Sequence[Job], overwrite: bool) -> list[Job]:
    return list(jobs) if overwrite else [job for job in jobs if not job.output.is_file()]


def check_run_record(out_dir: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Refuse to resume into a folder filled by another model or other settings (reads only)."""
    path = out_dir / RUN_RECORD
    if path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != record:
            changed = sorted(k for k in record if not previous or previous.get(k) != record[k]) if previous else ["?"]
            raise InputError(
                f"{out_dir} holds features from another model or settings (differs in {', '.join(changed)}); "
                "use another --out, or --overwrite to redo everything"
            )


def plan_folder(
    inputs: Sequence[str | os.PathLike],
    export_dir: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: ExtractSettings,
    *,
    start: bool = True,
) -> FolderPlan:
    """Collect the jobs and check OUT's run record against this export (or the two fused exports) and settings.

    With `start` (the default) OUT is then created and the record written (`start_folder`);
    without, nothing is written yet, so a caller can check the model and device first.
    """
    out_dir = Path(out_dir)
    jobs = collect_jobs(inputs, out_dir, settings.suffix)
    if not jobs:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    record = settings.record([Manifest.load(d) for d in as_export_dirs(export_dir)])
    pending = pending_jobs(jobs, settings.overwrite)
    check_run_record(out_dir, record, settings.overwrite)
    plan = FolderPlan(out_dir, tuple(jobs), tuple(pending), record)
    if start:
        start_folder(plan)
    return plan


# Bytes of a feature file besides its array: the safetensors header or the .npy header plus its .json sidecar,
# with the run's metadata (generous: a few hundred bytes in practice).
FILE_OVERHEAD = 4096


def _feature_bytes(manifests: Sequence[Manifest], sizes: Sequence[int], height: int, width: int) -> int:
    """One image's feature file: each model's float32 [C, H/fs, W/fs] map at its model size."""
    total = FILE_OVERHEAD
    for manifest, side in zip(manifests, sizes):
        g = manifest.geometry
        h, w = model_size(height, width, side, g.size_multiple)
        total += g.feature_channels * (h // g.feature_stride) * (w // g.feature_stride) * 4
    return total


def check_room(plan: FolderPlan, export_dirs: str | os.PathLike | Sequence[str | os.PathLike],
               settings: ExtractSettings) -> int:
    """Refuse (OutputError) a run whose feature files cannot fit the free space of OUT's disk; returns the bytes
    needed. A square image at the long side bounds every file; only when that bound does not fit are the
    images' own sizes read (headers only) for the exact figure."""
    if not plan.pending:
        return 0
    manifests = [Manifest.load(d) for d in as_export_dirs(export_dirs)]
    raw = settings.size if isinstance(settings.size, (tuple, list)) else (settings.size,) * len(manifests)
    sizes = [m.preprocess.long_side if s is None else int(s) for m, s in zip(manifests, raw)]
    free = free_bytes(plan.out_dir)
    bound = len(plan.pending) * _feature_bytes(manifests, sizes, max(sizes), max(sizes))
    if free is None or bound <= free:
        return bound
    need = 0
    for job in plan.pending:
        try:
            with Image.open(job.image) as image:  # the header only
                width, height = image.size
        except (OSError, ValueError):  # unreadable: reported (and not written) when its turn comes
            continue
        need += _feature_bytes(manifests, sizes, height, width)
    check_free_space(plan.out_dir, need, f"{len(plan.pending)} feature file(s)",
                     fix="free some space or choose another --out (files already there are kept: a rerun resumes)")
    return need


def start_folder(plan: FolderPlan) -> None:
    """Create OUT and write its run record (ditf-extract.json): from here on, the folder is this run's."""
    try:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(plan.out_dir, exc, fix="choose another --out") from None
    write_text_atomic(plan.out_dir / RUN_RECORD, json.dumps(plan.record, indent=2) + "\n")


def save_job(job: Job, features: FeatureMap | FusedParts, fmt: str, metadata: dict[str, Any]) -> None:
    save_features(job.output, features, fmt=fmt, extra={**metadata, "source": str(job.image)})


def extract_chunk(
    extract: Callable[[list[Path]], list[FeatureMap]],
    chunk: Sequence[Job],
    fmt: str,
    metadata: dict[str, Any],
    errors: tuple[type[Exception], ...] = (ImageError,),
) -> list[tuple[Job, str, str]]:
    """Extract and write one batch: (job, DONE or FAILED, message) per job, in order.

    On one of `errors` the batch is redone one image at a time; an image that fails alone is
    FAILED with the error's message. Other errors propagate.
    """
    failed: dict[int, str] = {}
    try:
        results = list(zip(range(len(chunk)), extract([job.image for job in chunk])))
    except errors:
        results = []
        for index, job in enumerate(chunk):
            try:
                results.append((index, extract([job.image])[0]))
            except errors as exc:
                failed[index] = str(exc)
    for index, features in results:
        save_job(chunk[index], features, fmt, metadata)
    return [(job, FAILED, failed[i]) if i in failed else (job, DONE, "") for i, job in enumerate(chunk)]


def extract_jobs(
    extractor: Extractor,
    jobs: Sequence[Job],
    settings: ExtractSettings,
    metadata: dict[str, Any],
    progress: Progress | None = None,
) -> tuple[int, list[str]]:
    """Extract and write `jobs` in this process, `extractor.batch_size` at a time: (written, failures).

    Unreadable images are failures (their messages returned); any other error stops the run,
    leaving only complete outputs behind.
    """
    written, failures = 0, []
    extract = partial(settings.extract, extractor)
    for start in range(0, len(jobs), extractor.batch_size):
        chunk = jobs[start : start + extractor.batch_size]
        for job, status, message in extract_chunk(extract, chunk, settings.fmt, metadata):
            written += status == DONE
            if status == FAILED:
                failures.append(message)
            if progress is not None:
                progress(str(job.output), status, message)
    return written, failures

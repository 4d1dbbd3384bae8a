"""`ditf extract --ray`: batch extraction fanned out over Ray (a laptop or a cluster).

    from ditf_runtime.ray_extract import extract_with_ray
    report = extract_with_ray(["images/"], "export/flux-k28", "features/", workers=4)

The images become a Ray Data dataset of (image path, output path) rows; `map_batches` runs
`ExtractWorker`, a callable class, on an actor pool, so each actor loads the export once and
writes each image's features itself (with jobs.py, exactly as `ditf extract` does: atomically,
in its format and layout, under the same ditf-extract.json run record), and only a small status
row travels back. A rerun skips outputs that exist. Default noise is drawn per image from its own
pixels (noise.py), so the features equal the plain runtime's whatever actor, batch or machine
computes them.

Local Ray starts on first use; `address=` (or RAY_ADDRESS) joins a cluster, whose workers need
ditf-runtime installed and must see the same paths (a shared filesystem) for images and outputs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendError, DitfError, InputError
from .jobs import (
    DONE,
    FAILED,
    SKIPPED,
    ExtractSettings,
    FolderReport,
    Job,
    Progress,
    as_export_dirs,
    extract_chunk,
    pending_jobs,
    plan_folder,
)
from .loading import LoadOptions

RAY_MISSING = "Ray is not installed: `pip install 'ditf-runtime[ray]'`"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: actors (each loads the model once), CPUs per actor, the cluster to join."""

    workers: int = 2
    cpus_per_worker: float = 1.0
    address: str | None = None  # default: RAY_ADDRESS, else a local Ray started for the run


class ExtractWorker:
    """Ray Data callable class: loads the export once per actor, then extracts and writes batches."""

    def __init__(self, export_dir: str | list[str], load: LoadOptions, settings: ExtractSettings,
                 metadata: dict[str, Any]) -> None:
        self.extractor = load.load(*as_export_dirs(export_dir), weights=settings.weights)
        self.settings = settings
        self.metadata = metadata

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        jobs = [Job(Path(str(image)), Path(str(output))) for image, output in zip(batch["image"], batch["output"])]
        outcome = {job.output: (SKIPPED, "") for job in jobs}
        # Re-check here: a retried task (actor restart) must not redo finished images.
        todo = pending_jobs(jobs, self.settings.overwrite)
        if todo:
            extract = partial(self.settings.extract, self.extractor)
            # Only an image that cannot be read is reported per image (jobs.extract_chunk's default); a
            # backend failure (out of memory, a lost GPU) would fail every image alike, so it stops the run.
            outcomes = extract_chunk(extract, todo, self.settings.fmt, self.metadata)
            for job, status, message in outcomes:
                outcome[job.output] = (status, message)
        return {
            "output": np.asarray([str(job.output) for job in jobs], dtype=object),
            "status": np.asarray([outcome[job.output][0] for job in jobs]),
            "message": np.asarray([outcome[job.output][1] for job in jobs], dtype=object),
        }


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BackendError(RAY_MISSING) from exc
    return ray


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[Any]:
    """Join a running Ray (ray.is_initialized()), else ray.init; shut down only a Ray started here."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, log_to_driver=False)  # join a cluster
        else:
            ray.init(include_dashboard=False, log_to_driver=False)  # a local Ray, for this run
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the caller reports progress
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_jobs(
    jobs: Sequence[Job],
    export_dir: str | os.PathLike | Sequence[str | os.PathLike],
    settings: ExtractSettings,
    load: LoadOptions,
    metadata: dict[str, Any],
    ray_options: RayOptions = RayOptions(),
    progress: Progress | None = None,
) -> tuple[int, list[str]]:
    """Extract `jobs` on Ray actors, `load.batch_size` images per call; returns (written, failures).

    `metadata` goes into every feature file (jobs.FolderPlan.metadata). `progress(output,
    status, message)` is called as each image finishes (status done/failed/skipped).
    """
    if ray_options.workers < 1 or load.batch_size < 1:
        raise InputError("workers and batch size must be >= 1")
    if not jobs:
        return 0, []
    workers = min(ray_options.workers, len(jobs))  # an idle actor would only hold a CPU
    # One onnxruntime thread per CPU an actor holds, not all cores each.
    threads = None if load.uses_gpu else load.threads or max(1, int(ray_options.cpus_per_worker))
    rows = [{"image": str(job.image), "output": str(job.output)} for job in jobs]
    written, failures = 0, []
    with _ray_session(ray_options.address) as ray:
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * workers)).map_batches(
            ExtractWorker,
            fn_constructor_kwargs={
                "export_dir": [str(d.resolve()) for d in as_export_dirs(export_dir)],
                "load": replace(load, threads=threads),
                "settings": settings,
                "metadata": metadata,
            },
            batch_size=load.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=ray_options.cpus_per_worker,
            num_gpus=1 if load.uses_gpu else None,
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for output, status, message in zip(batch["output"], batch["status"], batch["message"]):
                    written += status == DONE
                    if status == FAILED:
                        failures.append(str(message))
                    if progress is not None:
                        progress(str(output), str(status), str(message))
        except Exception as exc:  # noqa: BLE001 - Ray wraps what a worker raised in its own exception types
            cause = ditf_error_in(exc)
            if cause is None:
                raise
            raise cause from None  # e.g. a run over the memory budget: the same message as without Ray
    return written, failures


def ditf_error_in(exc: BaseException) -> DitfError | None:
    """The DitfError a worker raised, found through Ray's wrappers (RayTaskError.cause, __cause__, ...)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, DitfError):
            return current
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


def extract_with_ray(
    inputs: Sequence[str | os.PathLike],
    export_dir: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> FolderReport:
    """Python API of `ditf extract --ray`: images and folders in, OUT filled like `ditf extract`.
    `export_dir` may be the two folders of a fused run (with `weights=`).

    `options` are fields of jobs.ExtractSettings (fmt, size, ensemble, seed, exif_transpose,
    overwrite), loading.LoadOptions (backend, device, threads, verify, batch_size, ...) and
    RayOptions (workers, cpus_per_worker, address).
    """
    settings, load, ray_options = _split_options(options)
    plan = plan_folder(inputs, export_dir, out_dir, settings)
    written, failures = run_jobs(plan.pending, export_dir, settings, load, plan.metadata, ray_options, progress)
    return FolderReport(len(plan.jobs), plan.done, written, tuple(failures))


def _split_options(options: dict[str, Any]) -> tuple[ExtractSettings, LoadOptions, RayOptions]:
    """Keyword options -> the three option objects (a name of two goes to the first: ExtractSettings)."""
    groups = (ExtractSettings, LoadOptions, RayOptions)
    values: list[dict[str, Any]] = [{} for _ in groups]
    for name, value in options.items():
        owner = next((i for i, group in enumerate(groups) if name in {f.name for f in fields(group)}), None)
        if owner is None:
            raise TypeError(f"extract_with_ray() got an unexpected keyword argument {name!r}")
        values[owner][name] = value
    return ExtractSettings(**values[0]), LoadOptions(**values[1]), RayOptions(**values[2])

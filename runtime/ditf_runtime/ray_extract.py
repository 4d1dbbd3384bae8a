"""`ditf extract --ray`: batch extraction fanned out over Ray (a laptop or a cluster).

    from ditf_runtime.ray_extract import extract_with_ray
    report = extract_with_ray(["images/"], "export/flux-k28", "features/", workers=4)

The images become a Ray Data dataset of (image path, output path) rows; `map_batches` runs
`ExtractWorker`, a callable class, on an actor pool, so each actor loads the export once and
writes each image's features itself (atomically, in `ditf extract`'s format and layout, with
the same ditf-extract.json run record), and only a small status row travels back. A rerun skips
outputs that exist. Default noise is drawn per image from its own pixels (noise.py), so the
features equal the plain runtime's whatever actor, batch or machine computes them.

Local Ray starts on first use; `address=` (or RAY_ADDRESS) joins a cluster, whose workers need
ditf-runtime installed and must see the same paths (a shared filesystem) for images and outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendError, DitfError, ImageError, InputError

RAY_MISSING = "Ray is not installed: `pip install 'ditf-runtime[ray]'`"

DONE, FAILED, SKIPPED = "done", "failed", "skipped"


@dataclass(frozen=True)
class RayReport:
    total: int
    skipped: int  # already there before this run
    written: int
    failed: tuple[str, ...]  # "path: reason" of images that could not be extracted


class ExtractWorker:
    """Ray Data callable class: loads the export once per actor, then extracts and writes batches."""

    def __init__(
        self,
        export_dir: str,
        load_options: dict[str, Any],
        size: int | None,
        ensemble: int | None,
        seed: int,
        fmt: str,
        extra: dict[str, Any],
        overwrite: bool,
    ) -> None:
        from .extractor import load

        self.extractor = load(export_dir, **load_options)
        self.size, self.ensemble, self.seed = size, ensemble, seed
        self.fmt, self.extra, self.overwrite = fmt, extra, overwrite

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .storage import save_features

        images = [str(p) for p in batch["image"]]
        outputs = [str(p) for p in batch["output"]]
        status = [SKIPPED] * len(images)
        messages = [""] * len(images)
        # Re-check here: a retried task (actor restart) must not redo finished images.
        todo = [i for i, out in enumerate(outputs) if self.overwrite or not Path(out).is_file()]
        try:
            results = list(zip(todo, self._extract([images[i] for i in todo])))
        except DitfError:  # one bad image spoils its batch: redo it one by one
            results = []
            for i in todo:
                try:
                    results.append((i, self._extract([images[i]])[0]))
                except (ImageError, DitfError) as exc:
                    status[i], messages[i] = FAILED, str(exc)
        for i, features in results:
            save_features(outputs[i], features, fmt=self.fmt, extra={**self.extra, "source": images[i]})
            status[i] = DONE
        return {"output": np.asarray(outputs, dtype=object), "status": np.asarray(status), "message": np.asarray(messages, dtype=object)}  # fmt: skip

    def _extract(self, images: list[str]):
        if not images:
            return []
        return self.extractor.extract(images, self.size, self.ensemble, self.seed)


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise BackendError(RAY_MISSING) from exc
    return ray


def run_jobs(
    jobs: Sequence[Any],
    export_dir: str | os.PathLike,
    *,
    fmt: str,
    extra: dict[str, Any],
    size: int | None = None,
    ensemble: int | None = None,
    seed: int = 0,
    exif_transpose: bool = True,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    verify: bool = True,
    workers: int = 2,
    cpus_per_worker: float = 1.0,
    batch_size: int = 1,
    address: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str, str, str], None] | None = None,
) -> tuple[int, list[str]]:
    """Extract `jobs` (objects with .image and .output paths) on Ray; returns (written, failures).

    `progress(output, status, message)` is called as each image finishes (status done/failed/
    skipped). Joins a running Ray (ray.is_initialized()), else `ray.init(address=address)`,
    shutting down only a Ray it started.
    """
    if workers < 1 or batch_size < 1:
        raise InputError("workers and batch size must be >= 1")
    if not jobs:
        return 0, []
    workers = min(workers, len(jobs))  # an idle actor would only hold a CPU
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
        threads = threads or max(1, int(cpus_per_worker))  # one actor per core, not all cores each
        load_options = {
            "backend": backend,
            "device": device,
            "threads": threads if backend != "tensorrt" and device != "cuda" else None,
            "verify": verify,
            "exif_transpose": exif_transpose,
            "batch_size": batch_size,
        }
        rows = [{"image": str(job.image), "output": str(job.output)} for job in jobs]
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 4 * workers)).map_batches(
            ExtractWorker,
            fn_constructor_kwargs={
                "export_dir": str(Path(export_dir).resolve()),
                "load_options": load_options,
                "size": size,
                "ensemble": ensemble,
                "seed": seed,
                "fmt": fmt,
                "extra": extra,
                "overwrite": overwrite,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=1 if device == "cuda" or backend == "tensorrt" else None,
        )
        written, failures = 0, []
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for output, status, message in zip(batch["output"], batch["status"], batch["message"]):
                written += status == DONE
                if status == FAILED:
                    failures.append(str(message))
                if progress is not None:
                    progress(str(output), str(status), str(message))
        return written, failures
    finally:
        if started:
            ray.shutdown()


def extract_with_ray(
    inputs: Sequence[str | os.PathLike],
    export_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "safetensors",
    size: int | None = None,
    ensemble: int | None = None,
    seed: int = 0,
    exif_transpose: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> RayReport:
    """Python API of `ditf extract --ray`: images and folders in, OUT filled like `ditf extract`.

    `options` go to run_jobs (backend, device, threads, verify, workers, cpus_per_worker,
    batch_size, address, progress).
    """
    from .cli import _check_run_record, _collect_jobs, _extract_settings
    from .manifest import Manifest
    from .storage import output_suffix

    out_dir = Path(out_dir)
    jobs = _collect_jobs(tuple(Path(p) for p in inputs), out_dir, output_suffix(fmt))
    if not jobs:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    manifest = Manifest.load(export_dir)
    settings = _extract_settings(manifest, size, ensemble, seed, not exif_transpose, fmt)
    pending = jobs if overwrite else [job for job in jobs if not job.output.is_file()]
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_record(out_dir, settings, overwrite)
    extra = {k: settings[k] for k in ("model_name", "precision", "layer", "timestep", "ensemble", "seed")}
    written, failures = run_jobs(
        pending, export_dir, fmt=fmt, extra=extra, size=size, ensemble=ensemble, seed=seed,
        exif_transpose=exif_transpose, overwrite=overwrite, **options,
    )  # fmt: skip
    return RayReport(len(jobs), len(jobs) - len(pending), written, tuple(failures))

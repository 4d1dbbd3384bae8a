"""`ditf`: what runs where the engine runs -- extract, match, track, eval-spair, show, build-engine,
triton-repo, serve.

Every user-caused failure is a DitfError or ManifestError; `_friendly` turns them (and OS
errors) into click's one-line "Error: ..." with exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from ._version import __version__
from .errors import DitfError, ImageError, InputError
from .manifest import MODEL_FILE, Manifest, ManifestError, write_text_atomic
from .preprocess import IMAGE_SUFFIXES

RUN_RECORD = "ditf-extract.json"


def _friendly(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (DitfError, ManifestError) as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # disk full, permission denied, ...
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    return wrapper


def _model_options(command: Callable) -> Callable:
    """Options shared by every command that loads an export."""
    options = [
        click.option(
            "--model",
            "-m",
            "model_dir",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Export folder written by ditf-export.",
        ),
        click.option(
            "--backend",
            type=click.Choice(["auto", "onnxruntime", "tensorrt"]),
            default="auto",
            show_default=True,
            help="auto: TensorRT when --device cuda and an engine exists, else onnxruntime.",
        ),
        click.option(
            "--device",
            type=click.Choice(["cpu", "cuda"]),
            default=None,
            help="Default cpu (cuda for --backend tensorrt). Never falls back silently.",
        ),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads."),
        click.option(
            "--size",
            type=click.IntRange(min=1),
            default=None,
            help="Long side of the model input (default: the manifest's).",
        ),
        click.option(
            "--ensemble",
            type=click.IntRange(min=1),
            default=None,
            help="Noise draws averaged per image (default: the manifest's).",
        ),
        click.option(
            "--seed", type=int, default=0, show_default=True, help="Noise seed (noise is keyed by image content)."
        ),
        click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the model files (large exports)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _load(model_dir: Path, backend: str, device: str | None, threads: int | None, no_verify: bool, **kwargs):
    from .extractor import load

    return load(model_dir, backend=backend, device=device, threads=threads, verify=not no_verify, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ditf")
def main() -> None:
    """DiTF features from an exported graph: extract, match, evaluate, draw, build engines."""


# -- extract -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    image: Path
    output: Path


def _collect_jobs(inputs: tuple[Path, ...], out_dir: Path, suffix: str) -> list[_Job]:
    jobs: list[_Job] = []
    for item in inputs:
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            # Keep the folder structure: IN/a/b.jpg -> OUT/a/b.safetensors
            jobs += [_Job(p, out_dir / p.relative_to(item).with_suffix(suffix)) for p in images]
        elif item.is_file():
            jobs.append(_Job(item, out_dir / (item.stem + suffix)))
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


def _check_run_record(out_dir: Path, record: dict[str, Any], overwrite: bool) -> None:
    """Refuse to resume into a folder filled by another model or other settings."""
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
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def _extract_settings(manifest: Manifest, size, ensemble, seed, no_exif: bool, fmt: str) -> dict[str, Any]:
    """What an output folder's features depend on (its ditf-extract.json); shared with --ray."""
    return {
        "model_name": manifest.model_name,
        "model_sha256": manifest.files.get(MODEL_FILE, {}).get("sha256"),
        "precision": manifest.precision,
        "layer": manifest.feature.layer,
        "timestep": manifest.feature.timestep,
        "size": size or manifest.preprocess.long_side,
        "ensemble": ensemble or manifest.feature.ensemble,
        "seed": seed,
        "exif_transpose": not no_exif,
        "format": fmt,
    }


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_model_options
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (created).",
)
@click.option("--format", "fmt", type=click.Choice(["safetensors", "npy"]), default="safetensors", show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Same-size images run together."
)
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@click.option("--overwrite", is_flag=True, help="Recompute outputs that already exist.")
@click.option("--ray", "use_ray", is_flag=True, help="Fan out over Ray Data actors (local Ray, or --ray-address).")
@click.option("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Ray actors (each loads the model once)."
)
@_friendly
def extract(
    inputs,
    model_dir,
    backend,
    device,
    threads,
    size,
    ensemble,
    seed,
    no_verify,
    out_dir,
    fmt,
    batch_size,
    no_exif,
    overwrite,
    use_ray,
    ray_address,
    workers,
) -> None:
    """Extract features of INPUTS (images and/or folders of images) into OUT.

    Resumable: existing outputs are skipped (writes are atomic, so an existing file is complete).
    Unreadable images are reported at the end and make the exit code 1. With --ray, Ray actors
    extract and write the same files (ditf_runtime.ray_extract).
    """
    from tqdm import tqdm

    from .storage import output_suffix, save_features

    jobs = _collect_jobs(inputs, out_dir, output_suffix(fmt))
    if not jobs:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    manifest = Manifest.load(model_dir)
    settings = _extract_settings(manifest, size, ensemble, seed, no_exif, fmt)
    pending = jobs if overwrite else [j for j in jobs if not j.output.is_file()]
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_record(out_dir, settings, overwrite)
    click.echo(f"{len(jobs)} image(s), {len(jobs) - len(pending)} already done, {len(pending)} to extract", err=True)
    if not pending:
        return
    extra = {k: settings[k] for k in ("model_name", "precision", "layer", "timestep", "ensemble", "seed")}
    if use_ray:
        _extract_with_ray(pending, model_dir, fmt, extra, size, ensemble, seed, no_exif, backend, device, threads,
                          no_verify, workers, batch_size, ray_address, overwrite)  # fmt: skip
        return
    extractor = _load(model_dir, backend, device, threads, no_verify, exif_transpose=not no_exif, batch_size=batch_size)
    failures: list[str] = []
    with extractor, tqdm(total=len(pending), unit="img", desc="extract", file=sys.stderr) as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            try:
                results = list(zip(chunk, extractor.extract([j.image for j in chunk], size, ensemble, seed)))
            except ImageError:
                results = []  # one bad image spoils its batch: redo the batch one by one
                for job in chunk:
                    try:
                        results.append((job, extractor.extract([job.image], size, ensemble, seed)[0]))
                    except ImageError as exc:
                        failures.append(str(exc))
                        bar.update(1)
            for job, features in results:
                save_features(job.output, features, fmt=fmt, extra={**extra, "source": str(job.image)})
                bar.update(1)
    if failures:
        for message in failures:
            click.echo(f"skipped: {message}", err=True)
        raise click.ClickException(f"{len(failures)} of {len(pending)} image(s) could not be read")


def _extract_with_ray(pending, model_dir, fmt, extra, size, ensemble, seed, no_exif, backend, device, threads,
                      no_verify, workers, batch_size, ray_address, overwrite) -> None:  # fmt: skip
    from tqdm import tqdm

    from .ray_extract import FAILED, run_jobs

    with tqdm(total=len(pending), unit="img", desc="extract (ray)", file=sys.stderr) as bar:

        def progress(output: str, status: str, message: str) -> None:
            if status == FAILED:
                bar.write(f"skipped: {message}", file=sys.stderr)
            bar.update(1)

        _, failures = run_jobs(
            pending, model_dir, fmt=fmt, extra=extra, size=size, ensemble=ensemble, seed=seed,
            exif_transpose=not no_exif, backend=backend, device=device, threads=threads, verify=not no_verify,
            workers=workers, batch_size=batch_size, address=ray_address, overwrite=overwrite, progress=progress,
        )  # fmt: skip
    if failures:
        raise click.ClickException(f"{len(failures)} of {len(pending)} image(s) could not be read")


# -- match -------------------------------------------------------------------------------------


def _parse_points(text: str | None, points_file: Path | None) -> np.ndarray | None:
    if text is None and points_file is None:
        return None
    if text is not None and points_file is not None:
        raise InputError("give --points or --points-file, not both")
    try:
        if points_file is not None:
            values = json.loads(points_file.read_text())
        else:
            values = [[float(v) for v in item.split(",")] for item in text.replace(";", " ").split()]
        points = np.asarray(values, dtype=np.float64)
    except (ValueError, json.JSONDecodeError) as exc:
        raise InputError(f"points must be 'x,y x,y ...' or a JSON [[x, y], ...] file ({exc})") from None
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"points must be pairs (x, y), got shape {points.shape}")
    return points


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@_model_options
@click.option("--points", default=None, help="Source pixels 'x,y x,y ...'; default: mutual nearest neighbours.")
@click.option(
    "--points-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON [[x, y], ...] source pixels.",
)
@click.option(
    "--max-matches",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Mutual nearest neighbours kept (best first) when no points are given.",
)
@click.option(
    "--out",
    "-o",
    "picture",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a correspondence picture (PNG).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the matches as JSON here instead of stdout.",
)
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@_friendly
def match(
    source,
    target,
    model_dir,
    backend,
    device,
    threads,
    size,
    ensemble,
    seed,
    no_verify,
    points,
    points_file,
    max_matches,
    picture,
    json_path,
    no_exif,
) -> None:
    """Match SOURCE to TARGET: transfer --points, or list mutual nearest neighbours."""
    from .draw import draw_matches
    from .matching import cell_centers, mutual_nn_matches, transfer_keypoints

    src_points = _parse_points(points, points_file)
    with _load(model_dir, backend, device, threads, no_verify, exif_transpose=not no_exif) as extractor:
        src, trg = extractor.extract([source, target], size, ensemble, seed)
    if src_points is None:
        cells_a, cells_b, _ = mutual_nn_matches(src, trg)
        cells_a, cells_b = cells_a[:max_matches], cells_b[:max_matches]
        src_points = cell_centers(cells_a, src.grid_size, src.image_size)
    trg_points, scores = transfer_keypoints(src, trg, src_points, return_scores=True)
    report = {
        "source": str(source),
        "target": str(target),
        "matches": [
            {"source": [int(a), int(b)], "target": [int(c), int(d)], "cosine": round(float(s), 6)}
            for (a, b), (c, d), s in zip(np.asarray(src_points), trg_points, scores)
        ],
    }
    text = json.dumps(report, indent=2) + "\n"
    if json_path is not None:
        write_text_atomic(json_path, text)
    else:
        click.echo(text, nl=False)
    if picture is not None:
        draw_matches(source, target, src_points, trg_points, path=picture, exif_transpose=not no_exif)
        click.echo(f"wrote {picture}", err=True)


# -- track (video exports) --------------------------------------------------------------------


@main.command()
@click.argument("frames_dir", type=click.Path(file_okay=False, path_type=Path))
@_model_options
@click.option("--points", required=True, help="Frame-0 pixels 'x,y x,y ...' to follow.")
@click.option(
    "--out", "-o", "picture", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Draw the tracks over the last frame (PNG).",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write the tracks as JSON here instead of stdout.",
)  # fmt: skip
@click.option("--no-exif", is_flag=True, help="Do not apply EXIF orientation.")
@_friendly
def track(
    frames_dir, model_dir, backend, device, threads, size, ensemble, seed, no_verify, points, picture, json_path,
    no_exif,
) -> None:  # fmt: skip
    """Track --points of the first frame through FRAMES_DIR (frame images sorted by name; a video export)."""
    from .draw import draw_tracks
    from .matching import track_points
    from .preprocess import frame_files

    start = _parse_points(points, None)
    frames = frame_files(frames_dir)
    with _load(model_dir, backend, device, threads, no_verify, exif_transpose=not no_exif) as extractor:
        maps = extractor.extract_video(frames, size, ensemble, seed)
    tracks, scores = track_points(maps, start, return_scores=True)
    report = {
        "frames": [str(f) for f in frames],
        "tracks": [
            {"points": tracks[:, n].tolist(), "cosine": [round(float(c), 6) for c in scores[:, n]]}
            for n in range(tracks.shape[1])
        ],
    }
    text = json.dumps(report, indent=2) + "\n"
    if json_path is not None:
        write_text_atomic(json_path, text)
    else:
        click.echo(text, nl=False)
    if picture is not None:
        draw_tracks(frames[-1], tracks, path=picture, exif_transpose=not no_exif)
        click.echo(f"wrote {picture}", err=True)


# -- eval-spair --------------------------------------------------------------------------------


@main.command("eval-spair")
@click.argument("dataset", type=click.Path(file_okay=False, path_type=Path))
@_model_options
@click.option("--split", default="test", show_default=True, help="PairAnnotation/<split>.")
@click.option("--category", "categories", multiple=True, help="Only these categories (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N pairs per category.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=0.1, show_default=True)
@click.option(
    "--min-pck",
    type=click.FloatRange(0, 1),
    default=None,
    help="Exit 1 unless 'All per image' PCK reaches this fraction.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON.",
)
@_friendly
def eval_spair(
    dataset,
    model_dir,
    backend,
    device,
    threads,
    size,
    ensemble,
    seed,
    no_verify,
    split,
    categories,
    limit,
    alpha,
    min_pck,
    json_path,
) -> None:
    """PCK@alpha on DATASET in SPair-71k's layout (no EXIF rotation, as annotated)."""
    from .evaluate import evaluate

    with _load(model_dir, backend, device, threads, no_verify) as extractor:
        result = evaluate(
            extractor,
            dataset,
            split,
            categories=categories or None,
            limit=limit,
            alpha=alpha,
            min_pck=min_pck,
            progress=True,
            size=size,
            ensemble=ensemble,
            seed=seed,
        )
    click.echo(result.table())
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(result.to_dict(), indent=2) + "\n")
    if not result:
        raise click.ClickException(
            f"All per image PCK {100 * result.all_per_image:.2f}% is below --min-pck {100 * min_pck:.2f}%"
        )


# -- show --------------------------------------------------------------------------------------


@main.command()
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", "-o", "picture", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write."
)
@click.option(
    "--model",
    "-m",
    "model_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Export folder; needed when SOURCE is an image rather than a feature file.",
)
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--size", type=click.IntRange(min=1), default=None)
@click.option("--ensemble", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-verify", is_flag=True)
@click.option("--side-by-side", is_flag=True, help="Put the image left of its PCA picture (image input only).")
@_friendly
def show(source, picture, model_dir, backend, device, threads, size, ensemble, seed, no_verify, side_by_side) -> None:
    """PCA-to-RGB picture of SOURCE's features (an image with --model, or a .safetensors/.npy file)."""
    from PIL import Image

    from .draw import BACKGROUND, GAP, pca_image, save_png
    from .preprocess import open_image
    from .storage import load_features

    if source.suffix in (".safetensors", ".npy"):
        features = load_features(source)
        image = None
    else:
        if model_dir is None:
            raise InputError(f"{source} is an image: give --model EXPORT_DIR (or pass a feature file)")
        with _load(model_dir, backend, device, threads, no_verify) as extractor:
            (features,) = extractor.extract([source], size, ensemble, seed)
        image = open_image(source)
    pca = pca_image(features)
    if side_by_side and image is not None:
        canvas = Image.new("RGB", (image.width + GAP + pca.width, max(image.height, pca.height)), BACKGROUND)
        canvas.paste(image, (0, 0))
        canvas.paste(pca, (image.width + GAP, 0))
        pca = canvas
    save_png(pca, picture)
    click.echo(f"wrote {picture}", err=True)


# -- build-engine ------------------------------------------------------------------------------


@main.command("build-engine")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--min", "min_shapes", multiple=True, required=True, help="Smallest BATCHxHEIGHTxWIDTH (per profile).")
@click.option("--opt", "opt_shapes", multiple=True, required=True, help="Tuned-for BATCHxHEIGHTxWIDTH (per profile).")
@click.option("--max", "max_shapes", multiple=True, required=True, help="Largest BATCHxHEIGHTxWIDTH (per profile).")
@click.option(
    "--ensemble", type=click.IntRange(min=1), default=None, help="E baked into the profiles (default: manifest's)."
)
@click.option("--workspace", type=click.FloatRange(min=0, min_open=True), default=None, help="Workspace limit, GiB.")
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Timing cache file (default: beside the engine); read if present, then updated.",
)
@_friendly
def build_engine(export_dir, min_shapes, opt_shapes, max_shapes, ensemble, workspace, timing_cache) -> None:
    """Build a strongly typed TensorRT engine for this GPU into EXPORT_DIR/engines/.

    Precision comes from the ONNX (typed tensors, Q/DQ); no FP16/INT8 builder flags are set.
    Repeat --min/--opt/--max for several optimisation profiles.
    """
    from .backends import trt

    if not len(min_shapes) == len(opt_shapes) == len(max_shapes):
        raise InputError("give as many --opt and --max as --min (one of each per profile)")
    shapes = [
        trt.ShapeRange(trt.parse_bhw(a), trt.parse_bhw(b), trt.parse_bhw(c))
        for a, b, c in zip(min_shapes, opt_shapes, max_shapes)
    ]
    manifest = Manifest.load(export_dir)
    for shape_range in shapes:  # check the profiles before asking for TensorRT
        trt.profile_shapes(manifest, shape_range, ensemble or manifest.feature.ensemble)
    if not trt.tensorrt_available():
        raise click.ClickException(trt.NOT_INSTALLED)
    folder = trt.build_engine(
        export_dir,
        manifest,
        shapes,
        ensemble=ensemble,
        workspace_gib=workspace,
        timing_cache=timing_cache,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(str(folder))


# -- serving: triton-repo, serve -------------------------------------------------------------


@main.command("triton-repo")
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("repo_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Graph model name (default: the manifest's model name).")
@click.option(
    "--backend",
    type=click.Choice(["onnxruntime", "tensorrt"]),
    default="onnxruntime",
    show_default=True,
    help="tensorrt: serve an engine from EXPORT_DIR/engines/ (platform tensorrt_plan).",
)
@click.option("--engine", default=None, help="Engine folder under EXPORT_DIR/engines/ (when there are several).")
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=0),
    default=None,
    help="Triton max_batch_size (default 8, capped by a TensorRT engine's profiles; 0 disables batching).",
)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--instance-kind", type=click.Choice(["cpu", "gpu"]), default=None, help="Default: cpu, gpu for tensorrt.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True, help="Graph model instances.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads per instance.")
@click.option(
    "--pipeline",
    type=click.Choice(["bls", "local", "none"]),
    default="bls",
    show_default=True,
    help="Python-backend extract/match models: bls calls the graph model, local runs ditf_runtime in-process.",
)
@click.option("--force", is_flag=True, help="Replace REPO_DIR if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the model files.")
@_friendly
def triton_repo(
    export_dir, repo_dir, name, backend, engine, max_batch_size, max_queue_delay_us, instance_kind, instances, threads,
    pipeline, force, no_verify,
) -> None:  # fmt: skip
    """Write a Triton model repository for EXPORT_DIR into REPO_DIR (atomically)."""
    from .serving.triton_repo import write_model_repository

    folder = write_model_repository(
        export_dir, repo_dir, name=name, backend=backend, engine=engine, max_batch_size=max_batch_size,
        queue_delay_us=max_queue_delay_us, instance_kind=instance_kind, instance_count=instances, threads=threads,
        pipeline=None if pipeline == "none" else pipeline, overwrite=force, verify=not no_verify,
    )  # fmt: skip
    click.echo(str(folder))


@main.command()
@click.argument("export_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Prometheus metrics (default off).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the model files.")
@_friendly
def serve(
    export_dir, host, http_port, grpc_port, metrics_port, backend, device, threads, max_batch_size,
    max_queue_delay_us, no_verify,
) -> None:  # fmt: skip
    """Serve `extract` and `match` for EXPORT_DIR over Triton's HTTP/gRPC (PyTriton) until Ctrl-C."""
    from .serving.server import FeatureServer

    server = FeatureServer(
        export_dir, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, backend=backend,
        device=device, threads=threads, max_batch_size=max_batch_size, queue_delay_us=max_queue_delay_us,
        verify=not no_verify,
    )  # fmt: skip
    server.start()
    click.echo(f"serving extract, match on {server.http_url} and {server.grpc_url} (Ctrl-C stops)", err=True)
    server.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()

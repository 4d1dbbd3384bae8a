"""`ditf triton-repo` and `ditf serve` (serving/): a Triton model repository, or a running feature server."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ..errors import InputError
from ..fusion import MODELS, check_weights
from ..loading import LoadOptions
from ..serving.admission import DEFAULT_WAIT_S
from ..serving.triton_repo import TritonOptions, write_model_repository
from .options import DEVICE, friendly_errors, max_memory_option, max_pixels_option


def _exports(export_dir: Path | None, models: tuple[Path, ...], fuse_weight: float | None):
    """EXPORT_DIR and/or --model (repeatable): one export, or two to fuse; their weights."""
    dirs = ((export_dir,) if export_dir is not None else ()) + tuple(models)
    if not dirs:
        raise click.UsageError("give the export folder (EXPORT_DIR or --model)")
    if len(dirs) > MODELS:
        raise InputError(f"{len(dirs)} exports given: one, or two to fuse (DiTF + DINOv2)")
    if fuse_weight is not None and len(dirs) != MODELS:
        raise InputError("--fuse-weight W weighs the first of two exports (the second gets 1 - W); give a second "
                         "--model")
    weights = None
    if len(dirs) == MODELS:
        weights = check_weights(None if fuse_weight is None else (fuse_weight, 1.0 - fuse_weight))
    return dirs, weights


def _model_options(command):
    command = click.option("--fuse-weight", type=float, default=None,
                           help="With two exports: the first one's fusion weight in [0, 1] (the second: 1 - W).")(command)
    return click.option("--model", "-m", "models", multiple=True, type=click.Path(file_okay=False, path_type=Path),
                        help="Export folder (instead of EXPORT_DIR, or a second one to fuse: DiTF + DINOv2).")(command)


@click.command("triton-repo")
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@_model_options
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
@click.option(
    "--instance-kind", type=click.Choice(["cpu", "gpu"]), default=None, help="Default: cpu, gpu for tensorrt."
)
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
@friendly_errors
def triton_repo(
    paths, models, fuse_weight, name, backend, engine, max_batch_size, max_queue_delay_us, instance_kind, instances,
    threads, pipeline, force, no_verify,
) -> None:  # fmt: skip
    """Write a Triton model repository for EXPORT_DIR into REPO_DIR (atomically): `ditf triton-repo EXPORT_DIR
    REPO_DIR`, or `ditf triton-repo REPO_DIR --model A --model B` for the fused pair (both graph models and
    extract/match models that fuse)."""
    if len(paths) > 2:
        raise click.UsageError("arguments: [EXPORT_DIR] REPO_DIR")
    export_dir, repo_dir = (paths[0], paths[1]) if len(paths) == 2 else (None, paths[0])
    dirs, weights = _exports(export_dir, models, fuse_weight)
    options = TritonOptions(
        name=name, backend=backend, engine=engine, max_batch_size=max_batch_size, queue_delay_us=max_queue_delay_us,
        instance_kind=instance_kind, instance_count=instances, threads=threads,
        pipeline=None if pipeline == "none" else pipeline, weights=weights,
    )  # fmt: skip
    folder = write_model_repository(dirs, repo_dir, options, overwrite=force, verify=not no_verify)
    click.echo(str(folder))


@click.command()
@click.argument("export_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@_model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, help="Prometheus metrics (default off).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True)
@click.option("--device", type=DEVICE, default=None)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True)
@click.option("--no-verify", is_flag=True, help="Skip the sha256 check of the model files.")
@max_memory_option()
@max_pixels_option()
@click.option(
    "--busy-timeout", type=click.FloatRange(min=0), default=DEFAULT_WAIT_S, show_default=True,
    help="Seconds a request that fits the memory budget, but not beside the requests running, waits for them "
         "before it gets a 'server is busy' error.",
)
@click.option(
    "--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Triton's own log (default: ditf-triton-HTTP_PORT.log in the temp folder).",
)  # fmt: skip
@friendly_errors
def serve(
    export_dir, models, fuse_weight, host, http_port, grpc_port, metrics_port, backend, device, threads,
    max_batch_size, max_queue_delay_us, no_verify, max_memory, max_pixels, busy_timeout, log_file,
) -> None:  # fmt: skip
    """Serve `extract` and `match` for EXPORT_DIR over Triton's HTTP/gRPC (PyTriton) until Ctrl-C; with two
    exports (EXPORT_DIR --model B, or --model A --model B) their fused features.

    Each request is checked against the memory budget before it runs: one that would not fit gets an
    error saying so (and a size that fits); the server stays up. Requests running at once share that one
    budget: one that fits alone but not beside them waits (--busy-timeout), then gets a "busy" error.
    """
    dirs, weights = _exports(export_dir, models, fuse_weight)
    # SIGTERM (a process manager, `kill`) stops the server like Ctrl-C, start-up included: nothing is left
    # behind. A second signal while stopping is ignored, so the clean-up finishes.
    # Restored on the way out: run in-process (tests, notebooks), the caller keeps its own handlers.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        _serve(dirs, weights, host, http_port, grpc_port, metrics_port, backend, device, threads, no_verify,
               max_memory, max_pixels, max_batch_size, max_queue_delay_us, log_file, busy_timeout)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _serve(dirs, weights, host, http_port, grpc_port, metrics_port, backend, device, threads, no_verify,
           max_memory, max_pixels, max_batch_size, max_queue_delay_us, log_file, busy_timeout) -> None:
    from ..serving.server import FeatureServer

    server = FeatureServer(
        dirs, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        load=LoadOptions(backend=backend, device=device, threads=threads, verify=not no_verify,
                         max_memory=max_memory, max_pixels=max_pixels),
        max_batch_size=max_batch_size, queue_delay_us=max_queue_delay_us, weights=weights, log_file=log_file,
        busy_timeout_s=busy_timeout,
    )  # fmt: skip
    # A busy port is refused before the first line: with the default log file (one per HTTP port) that line would
    # name the log of the server already listening there, as if it were this one's.
    server.check_ports()
    click.echo(f"starting Triton for {' + '.join(map(str, dirs))} (its log: {server.log_file})", err=True)
    try:
        server.start()
    except KeyboardInterrupt:
        click.echo("interrupted while starting: stopped, nothing left behind", err=True)
        sys.exit(130)
    click.echo(f"serving extract, match on {server.http_url} and {server.grpc_url} (Ctrl-C stops)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    click.echo("stopped", err=True)


def _interrupt_once(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt

"""Build an engine from the export's ONNX: one code path for TensorRT and TensorRT-RTX.

Networks are strongly typed and no FP16/INT8/BF16 builder flag is ever set: precision lives in the
ONNX (typed tensors, Q/DQ), which TensorRT 10 (strongly typed), 11 and TensorRT-RTX all build as
written. TF32 is switched off unless asked for, so FP32 GEMMs and the FP32 islands of the low
precision graphs compute in FP32 (Ampere+ GPUs use TF32 by default).

Flavour differences, all here:
* TensorRT-RTX compiles ahead of time without a GPU, for `--compute-capability` targets (default:
  the builder's own, 8.0/8.6/8.9/12.0 and later). Its timing-cache calls are no-ops (deprecated
  since 1.2, and they would make the build query a GPU), so none is used; kernels are JIT-compiled
  at load instead.
* TensorRT builds on the GPU that will run the engine and reuses a timing cache between builds.

FP8 exports (E4M3 Q/DQ) run on compute capability 8.9 and later only (Ada, Hopper, Blackwell): TensorRT-RTX
builds them for the builder's targets from 8.9 up (8.9 and 12.0 unless --compute-capability says
otherwise) and refuses older targets; TensorRT refuses a GPU below 8.9. Either refusal names what can.

The engine is built into a hidden temporary folder and renamed into place when complete: a failed
or interrupted (Ctrl-C) build leaves nothing that looks like an engine.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from ...errors import BackendError, InputError
from ...files import staged_folder
from ...manifest import MODEL_FILE, NOISE_INPUT, Manifest, sha256_file, write_bytes_atomic, write_text_atomic
from ...precision import Precision
from .flavors import RTX, DeviceInfo, choose_flavor, collecting_logger, current_device, import_flavor, library_version
from .profiles import Profile, check_profile, manifest_profiles
from .records import (
    ENGINE_FILE,
    ENGINE_RECORD_FILE,
    ENGINE_RECORD_VERSION,
    ONNX_FILES,
    RTX_DEFAULT_TARGETS,
    TIMING_CACHE_FILE,
    engine_dir,
    parse_compute_capability,
    rtx_engine_dir,
    sm_to_dotted,
    sort_targets,
)

RTX_NO_TIMING_CACHE = (
    "no timing cache: TensorRT-RTX's timing-cache calls are no-ops (deprecated in 1.2) and would make the "
    "build query a GPU; it JIT-compiles kernels for the GPU when the engine is loaded"
)


def _sm_number(sm: str) -> tuple[int, int]:
    dotted = sm_to_dotted(sm).split(".")
    return int(dotted[0]), int(dotted[1])


def rtx_targets(trt, requested: Sequence[str], precision: Precision = Precision.FP32) -> tuple[tuple[str, ...], bool]:
    """--compute-capability values -> sorted 'smXY' targets, and whether they are the builder's default.

    A precision with a minimum compute capability (fp8: 8.9) defaults to the builder's default targets at or
    above it, and refuses requested ones below it."""
    offered = {name.lower(): name for name in trt.ComputeCapability.__members__ if name.startswith("SM")}
    floor = precision.min_compute_capability
    if not requested and floor is None:
        return RTX_DEFAULT_TARGETS, True
    if not requested:
        return tuple(sm for sm in RTX_DEFAULT_TARGETS if _sm_number(sm) >= floor), False
    targets = []
    for text in requested:
        sm = parse_compute_capability(text)
        if sm not in offered:
            listed = ", ".join(sm_to_dotted(s) for s in sort_targets(offered))
            raise InputError(
                f"TensorRT-RTX {library_version(trt)} has no target for compute capability {sm_to_dotted(sm)}: "
                f"it builds for {listed}. On another GPU, build with --tensorrt enterprise there."
            )
        targets.append(sm)
    if floor is not None:
        below = [sm for sm in sort_targets(targets) if _sm_number(sm) < floor]
        if below:
            able = [sm for sm in sort_targets(offered) if _sm_number(sm) >= floor]
            raise InputError(
                f"this export is {precision} ({_PRECISION_GPUS[precision]}): it runs on compute capability "
                f"{floor[0]}.{floor[1]} and later, not on {', '.join(sm_to_dotted(sm) for sm in below)}. "
                f"TensorRT-RTX {library_version(trt)} builds it for "
                f"{', '.join(sm_to_dotted(sm) for sm in able)} ("
                + " ".join(f"--compute-capability {sm_to_dotted(sm)}" for sm in able)
                + f"); for older GPUs, export --precision int8, bf16 or fp16."
            )
    return sort_targets(targets), False


_PRECISION_GPUS = {Precision.FP8: "FP8 E4M3 Q/DQ: Ada, Hopper and Blackwell GPUs"}


def check_device_precision(device: DeviceInfo, precision: Precision, label: str) -> None:
    """TensorRT (built on the serving GPU): refuse a precision that GPU cannot run, naming the GPUs that can."""
    floor = precision.min_compute_capability
    major, minor = (int(v) for v in device.compute_capability.split("."))
    if floor is not None and (major, minor) < floor:
        raise InputError(
            f"this export is {precision} ({_PRECISION_GPUS[precision]}): {label} runs it on compute capability "
            f"{floor[0]}.{floor[1]} and later (RTX 40xx/RTX 6000 Ada, L4/L40, H100/H200, RTX 50xx, B200), and "
            f"{device.gpu_name} is {device.compute_capability}. Export --precision int8, bf16 or fp16 for this GPU."
        )


def build_engine(
    export_dir: str | Path,
    manifest: Manifest,
    profiles: Sequence[Profile] | None = None,
    *,
    tensorrt: str = "auto",
    compute_capabilities: Sequence[str] = (),
    allow_tf32: bool = False,
    workspace_gib: float | None = None,
    timing_cache: str | Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Build EXPORT/engines/<folder>/model.plan + engine.json; returns the folder.

    profiles: None -> the manifest's tensorrt_profiles. tensorrt: "auto" | "enterprise" | "rtx".
    """
    export_dir = Path(export_dir)
    from_manifest = not profiles
    profiles = manifest_profiles(manifest) if from_manifest else list(profiles)
    for profile in profiles:
        check_profile(manifest, profile)
    flavor = choose_flavor(tensorrt)
    trt = import_flavor(flavor)
    target = _target(trt, flavor, export_dir, compute_capabilities, timing_cache, Precision(manifest.precision))
    if target.folder.exists() and not force:
        raise InputError(f"{target.folder} exists: pass --force to replace it (or remove it)")
    manifest.verify_files(export_dir, names=ONNX_FILES)
    cache_in = None if flavor is RTX else Path(timing_cache) if timing_cache else target.folder / TIMING_CACHE_FILE

    with staged_folder(target.folder) as tmp:  # renamed into place at the end; removed if anything fails
        started = time.perf_counter()
        log(f"building with {flavor.label} {target.version} for {target.describe()} "
            f"(strongly typed, TF32 {'on' if allow_tf32 else 'off'})")
        monitor = _progress_monitor(trt, log)
        # All TensorRT work runs on a worker thread: its Python callbacks (logger, progress) must never
        # run on the main thread, where a Ctrl-C inside one would be swallowed by the bindings.
        plan, cache_bytes = _run_cancellable(lambda: _build_plan(
            trt, flavor, export_dir / MODEL_FILE, profiles, target=target, allow_tf32=allow_tf32,
            workspace_gib=workspace_gib, cache_in=cache_in, monitor=monitor, log=log), monitor)  # fmt: skip
        seconds = time.perf_counter() - started
        write_bytes_atomic(tmp / ENGINE_FILE, plan)
        if cache_bytes is not None:
            write_bytes_atomic(tmp / TIMING_CACHE_FILE, cache_bytes)
            if timing_cache:
                write_bytes_atomic(Path(timing_cache), cache_bytes)
        record = _engine_record(flavor, target, manifest, profiles, from_manifest=from_manifest, allow_tf32=allow_tf32,
                                plan_path=tmp / ENGINE_FILE, timing_cache=cache_bytes is not None, seconds=seconds)
        # engine.json last: its presence marks a finished engine.
        write_text_atomic(tmp / ENGINE_RECORD_FILE, json.dumps(record, indent=2) + "\n")
    log(f"wrote {target.folder / ENGINE_FILE} ({len(plan) / 2**20:.1f} MiB) in {seconds:.1f} s")
    return target.folder


@dataclass(frozen=True)
class _Target:
    folder: Path
    version: str
    targets: tuple[str, ...] | None  # rtx
    default_targets: bool  # rtx: the builder's own targets (none set)
    device: DeviceInfo | None  # enterprise: the GPU it builds on

    def describe(self) -> str:
        if self.device is not None:
            return f"{self.device.gpu_name} (compute capability {self.device.compute_capability})"
        listed = ", ".join(sm_to_dotted(s) for s in self.targets or ())
        return f"compute capabilities {listed}" + (" and later (the builder's default)" if self.default_targets else "")


def _target(trt, flavor, export_dir: Path, compute_capabilities, timing_cache, precision: Precision) -> _Target:
    version = library_version(trt)
    if flavor is RTX:
        if timing_cache is not None:
            raise InputError(
                f"--timing-cache is for --tensorrt enterprise; TensorRT-RTX uses none ({RTX_NO_TIMING_CACHE})"
            )
        targets, default_targets = rtx_targets(trt, compute_capabilities, precision)
        return _Target(rtx_engine_dir(export_dir, version, targets), version, targets, default_targets, None)
    if compute_capabilities:
        raise InputError("--compute-capability is for --tensorrt rtx: TensorRT builds for the GPU it runs on")
    device = current_device()
    check_device_precision(device, precision, flavor.label)
    return _Target(engine_dir(export_dir, device.gpu_name, version), version, None, False, device)


def _engine_record(flavor, target: _Target, manifest: Manifest, profiles: Sequence[Profile], *, from_manifest: bool,
                   allow_tf32: bool, plan_path: Path, timing_cache: bool, seconds: float) -> dict:  # fmt: skip
    """engine.json: what the loader checks (flavour, version, targets or GPU, ONNX hashes) and what was built."""
    return {
        "schema_version": ENGINE_RECORD_VERSION,
        "flavor": flavor.name,
        "version": target.version,
        "targets": list(target.targets) if target.targets else None,
        "targets_default": target.default_targets if flavor is RTX else None,
        "gpu": target.device.gpu_name if target.device else None,
        "compute_capability": target.device.compute_capability if target.device else None,
        "precision": str(manifest.precision),
        "strongly_typed": True,
        "tf32": bool(allow_tf32),
        "profiles": [p.to_record() for p in profiles],
        "profiles_from": "manifest" if from_manifest else "command line",
        "ensemble": _fixed_ensemble(profiles),
        "onnx_sha256": {name: manifest.files[name]["sha256"] for name in ONNX_FILES if name in manifest.files},
        "plan_sha256": sha256_file(plan_path),
        "plan_bytes": plan_path.stat().st_size,
        "timing_cache": TIMING_CACHE_FILE if timing_cache else None,
        "build_seconds": round(seconds, 2),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_name": manifest.model_name,
        "family": manifest.family,
        "notes": [RTX_NO_TIMING_CACHE] if flavor is RTX else [],
    }


def _fixed_ensemble(profiles: Sequence[Profile]) -> int | None:
    """E when every profile fixes the same one (Triton configs then state it), else None."""
    values = {shape[1] for p in profiles for shape in p.shapes.get(NOISE_INPUT, ())}
    return values.pop() if len(values) == 1 else None


def _build_plan(trt, flavor, onnx_path: Path, profiles, *, target: _Target, allow_tf32, workspace_gib,
                cache_in: Path | None, monitor, log) -> tuple[bytes, bytes | None]:  # fmt: skip
    """Parse and build; returns (plan bytes, timing cache bytes or None)."""
    with _collect_outside_tensorrt():
        return _parse_and_build(trt, flavor, onnx_path, profiles, target=target, allow_tf32=allow_tf32,
                                workspace_gib=workspace_gib, cache_in=cache_in, monitor=monitor, log=log)


@contextmanager
def _collect_outside_tensorrt():
    """Python's cyclic GC off while TensorRT calls back into Python (logger, progress monitor): a collection
    that starts inside such a callback may free an earlier build's IBuilder, whose destructor waits for the
    TensorRT lock the callback's caller holds — a deadlock seen in createInferBuilder. Collect before instead."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse_and_build(trt, flavor, onnx_path: Path, profiles, *, target: _Target, allow_tf32, workspace_gib,
                     cache_in: Path | None, monitor, log) -> tuple[bytes, bytes | None]:  # fmt: skip
    logger = collecting_logger(trt)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {onnx_path}")
    # parse_from_file resolves model.onnx.data beside the model, unlike parse(bytes).
    if not parser.parse_from_file(str(onnx_path)):
        raise BackendError(_parser_message(flavor, trt, parser, onnx_path))

    config = builder.create_builder_config()
    if not allow_tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for profile in profiles:
        optimization_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes.items():
            optimization_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimization_profile)
    if target.targets and not target.default_targets:
        config.num_compute_capabilities = len(target.targets)
        for index, sm in enumerate(target.targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, sm.upper()), index)
    cache = None
    if cache_in is not None:
        cache = config.create_timing_cache(cache_in.read_bytes() if cache_in.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if monitor.cancelled.is_set():
        raise KeyboardInterrupt
    if plan is None:
        errors = "\n  ".join(logger.errors) or "(no error message)"
        raise BackendError(f"{flavor.label} could not build the engine for {onnx_path}:\n  {errors}")
    cache_bytes = bytes(config.get_timing_cache().serialize()) if cache is not None else None
    return bytes(plan), cache_bytes


def _parser_message(flavor, trt, parser, onnx_path: Path) -> str:
    """TensorRT's parser errors verbatim, each with the node it names (if any)."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node_name() if error.node() >= 0 else ""
        where = f"node {node!r} ({error.node_operator()})" if node or error.node() >= 0 else "the file itself"
        lines.append(f"  {where}: {error}")
    return (
        f"{flavor.label} {library_version(trt)}'s ONNX parser rejected {onnx_path}:\n" + "\n".join(lines)
        + "\nNothing was written. The graph uses an operator or type this TensorRT cannot build, or the file "
        "is damaged: re-export it."
    )


def _progress_monitor(trt, log):
    """Reports the builder's phases and cancels the build when asked (Ctrl-C)."""

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.cancelled = threading.Event()
            self.started = time.perf_counter()
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            depth = self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1
            if depth <= 1:
                log(f"  {'  ' * depth}{phase_name} ({time.perf_counter() - self.started:.1f} s)")

        def step_complete(self, phase_name, step) -> bool:
            return not self.cancelled.is_set()

        def phase_finish(self, phase_name) -> None:
            pass

    return Progress()


def _run_cancellable(build: Callable[[], object], monitor):
    """Run `build` on a worker thread, so Ctrl-C reaches us at once and cancels it at TensorRT's next step.

    The worker is joined before KeyboardInterrupt propagates. TensorRT's own threads may still call
    the monitor for a moment after the build returns, so a process exiting right after a cancelled
    build should leave with os._exit (as `ditf build-engine` does), not through interpreter shutdown.
    """
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["value"] = build()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=work, name="ditf-engine-build", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        monitor.cancelled.set()
        worker.join()
        raise
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]

"""Engine folders and their engine.json: naming, reading, and the checks made before deserialising.

    EXPORT/engines/rtx<version>-<sm list>/   TensorRT-RTX, e.g. rtx1.7.1-sm80_86_89_120
    EXPORT/engines/<gpu>-trt<version>/        TensorRT, e.g. nvidia-h100-80gb-hbm3-trt10.13.0
        model.plan     the serialized engine
        engine.json    flavour, library version, targets or GPU, profiles, precision, ONNX sha256, ...
        timing.cache   (TensorRT only) reused by the next build on the same GPU

engine.json is written last, and the folder is renamed into place only when complete, so a folder
holding an engine.json is a finished engine. The loader refuses an engine whose flavour, library
version, compute capability / GPU or ONNX files differ from this machine and export, naming which
and how to rebuild, before TensorRT ever sees the plan.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ...errors import BackendError, InputError
from ...manifest import ENGINES_DIR, MODEL_DATA_FILE, MODEL_FILE, NOISE_INPUT, Manifest
from .flavors import BY_NAME, ENTERPRISE, RTX, DeviceInfo, Flavor, short_version

ENGINE_FILE = "model.plan"
ENGINE_RECORD_FILE = "engine.json"
TIMING_CACHE_FILE = "timing.cache"
ENGINE_RECORD_VERSION = 2
ONNX_FILES = (MODEL_FILE, MODEL_DATA_FILE)

# What TensorRT-RTX builds for when no target is named: "8.0, 8.6, 8.9, 12.0 and later" (its docs).
RTX_DEFAULT_TARGETS = ("sm80", "sm86", "sm89", "sm120")


# -- compute capabilities ----------------------------------------------------------------------


def parse_compute_capability(text: str) -> str:
    """'8.6', '86', 'sm86', 'sm_86', 'SM86' -> 'sm86'."""
    cleaned = text.strip().lower().removeprefix("sm").lstrip("_")
    match = re.fullmatch(r"(\d{1,2})\.(\d)|(\d{2,3})", cleaned)
    if not match:
        raise InputError(f"compute capability {text!r}: write it as 8.6 (or 86, sm86)")
    return "sm" + (match.group(1) + match.group(2) if match.group(1) else match.group(3))


def sm_to_dotted(sm: str) -> str:
    """'sm86' -> '8.6', 'sm120' -> '12.0'."""
    digits = sm.removeprefix("sm")
    return f"{digits[:-1]}.{digits[-1]}"


def sort_targets(targets) -> tuple[str, ...]:
    return tuple(sorted(set(targets), key=lambda sm: int(sm.removeprefix("sm"))))


def rtx_accepts(targets: list[str], default_targets: bool, device: DeviceInfo) -> bool:
    """Whether an rtx engine built for `targets` runs on `device` (the builder default also covers 12.0+)."""
    if device.sm in targets:
        return True
    major = int(device.compute_capability.split(".")[0])
    return default_targets and major >= 12


# -- folder names --------------------------------------------------------------------------------


def gpu_slug(gpu_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': a folder name."""
    return re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"


def engine_dir(export_dir: str | os.PathLike, gpu_name: str, trt_version: str) -> Path:
    """TensorRT (enterprise): one folder per GPU model and TensorRT version."""
    return Path(export_dir) / ENGINES_DIR / f"{gpu_slug(gpu_name)}-trt{trt_version}"


def rtx_engine_dir(export_dir: str | os.PathLike, rtx_version: str, targets) -> Path:
    """TensorRT-RTX: one folder per library version and target list, e.g. rtx1.7.1-sm80_86_89_120."""
    numbers = "_".join(sm.removeprefix("sm") for sm in sort_targets(targets))
    return Path(export_dir) / ENGINES_DIR / f"rtx{short_version(rtx_version)}-sm{numbers}"


# -- reading and checking --------------------------------------------------------------------------


def read_engine_record(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / ENGINE_RECORD_FILE
    if not path.is_file() or not (folder / ENGINE_FILE).is_file():
        raise BackendError(f"{folder} holds no finished engine ({ENGINE_FILE} + {ENGINE_RECORD_FILE})")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BackendError(f"{path} is not valid JSON ({exc}); rebuild the engine") from exc
    if not isinstance(record, dict):
        raise BackendError(f"{path} must hold a JSON object; rebuild the engine")
    return record


def record_flavor(record: dict[str, Any]) -> Flavor | None:
    return BY_NAME.get(record.get("flavor"))


def rebuild_hint(export_dir: Path, flavor: Flavor) -> str:
    return f"rebuild it with `ditf build-engine {export_dir} --tensorrt {flavor.option} --force`"


def engine_problems(
    record: dict[str, Any], flavor: Flavor, version: str, device: DeviceInfo | None, manifest: Manifest
) -> list[str]:
    """Why an engine described by `record` cannot run with `flavor` `version` on `device` for `manifest`."""
    if record.get("schema_version") != ENGINE_RECORD_VERSION or record_flavor(record) is None:
        return [f"its {ENGINE_RECORD_FILE} was written by another ditf version (no known flavour)"]
    built = record_flavor(record)
    if built is not flavor:
        return [f"it was built with {built.label}, and this runtime loads engines with {flavor.label}"]
    problems = []
    if record.get("version") != version:
        problems.append(f"built with {flavor.label} {record.get('version')}, this machine has {version}")
    if device is not None and flavor is ENTERPRISE and record.get("gpu") != device.gpu_name:
        problems.append(f"built for GPU {record.get('gpu')!r}, this machine has {device.gpu_name!r}")
    if device is not None and flavor is RTX:
        targets = list(record.get("targets") or [])
        if not rtx_accepts(targets, bool(record.get("targets_default")), device):
            listed = ", ".join(sm_to_dotted(sm) for sm in targets)
            listed += " and later" if record.get("targets_default") else ""
            problems.append(
                f"built for compute capabilities {listed}; this GPU ({device.gpu_name}) is {device.compute_capability}"
            )
    recorded = record.get("onnx_sha256") or {}
    for name in ONNX_FILES:
        want = manifest.files.get(name, {}).get("sha256")
        if want and recorded.get(name) != want:
            problems.append(f"built from a different {name} than this export's manifest records")
    return problems


def check_engine_record(
    record: dict[str, Any],
    flavor: Flavor,
    version: str,
    device: DeviceInfo | None,
    manifest: Manifest,
    folder: Path,
) -> None:
    """Refuse an engine built with another flavour, version, GPU / compute capability or ONNX."""
    problems = engine_problems(record, flavor, version, device, manifest)
    if problems:
        export_dir = folder.parent.parent
        raise BackendError(
            f"engine in {folder} cannot be used: " + "; ".join(problems) + f". {rebuild_hint(export_dir, flavor)}"
        )


def engine_folders(export_dir: str | os.PathLike) -> list[Path]:
    """Finished engine folders (model.plan + engine.json) under EXPORT/engines/, by name."""
    root = Path(export_dir) / ENGINES_DIR
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir()
        if not p.name.startswith(".") and (p / ENGINE_FILE).is_file() and (p / ENGINE_RECORD_FILE).is_file()
    )  # fmt: skip


def available_engines(export_dir: str | os.PathLike) -> list[str]:
    return [p.name for p in engine_folders(export_dir)]


def record_ensemble_range(record: dict[str, Any]) -> tuple[int, int]:
    """(smallest, largest) E over the engine's profiles (noise axis 1); (0, 0) for a graph without noise."""
    if not all(NOISE_INPUT in p for p in record["profiles"]):
        return 0, 0
    lows = [int(p[NOISE_INPUT]["min"][1]) for p in record["profiles"]]
    highs = [int(p[NOISE_INPUT]["max"][1]) for p in record["profiles"]]
    return min(lows), max(highs)


def record_ranges(record: dict[str, Any]) -> list[dict[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Per profile in engine.json: {input: (min shape, max shape)}, what `choose_profile` takes."""
    return [{name: (tuple(p["min"]), tuple(p["max"])) for name, p in profile.items()} for profile in record["profiles"]]
